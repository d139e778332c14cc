--- Ghost text with extmarks, for Neovim 0.10/0.11 (no `vim.lsp.inline_completion`), or
--- when `renderer = 'extmark'`. Asks `textDocument/inlineCompletion` after a pause in
--- typing, shows the first line as inline virtual text and the others as virtual lines,
--- cancels the running request as soon as the user types on, and drops answers that
--- arrive for an older state of the buffer.
local accept = require('tessera.accept')
local text = require('tessera.text')

local api = vim.api
local M = {}

M.ns = api.nvim_create_namespace('tessera.ghost')

local has_011 = vim.fn.has('nvim-0.11') == 1

---@class tessera.GhostBuffer
---@field client_id integer
---@field debounce_ms integer
---@field enabled boolean
---@field items tessera.Item[]
---@field index integer
---@field request_id integer?
---@field timer uv.uv_timer_t?
---@field last string? the state last handled (changedtick and cursor)
---@field stats { requests: integer, cancelled: integer, stale: integer, shown: integer }

---@type table<integer, tessera.GhostBuffer>
local buffers = {}

local function client_request(client, method, params, handler, bufnr)
  if has_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

local function client_cancel(client, id)
  if has_011 then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

--- Byte column of an LSP `character` on `line`.
local function byte_col(line, character, encoding)
  if encoding == 'utf-8' then
    return math.min(character, #line)
  end
  local ok, col
  if has_011 then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == 'utf-16')
  end
  return ok and col or #line
end

--- LSP items to `tessera.Item`s (plain-text items with a range; snippets are skipped).
---@return tessera.Item[]
local function to_items(bufnr, result, encoding, cursor_row, cursor_col)
  local out = {}
  for _, it in ipairs(result.items or result) do
    if type(it.insertText) == 'string' and it.insertText ~= '' then
      local r = it.range
      local item
      if r then
        local sline = api.nvim_buf_get_lines(bufnr, r.start.line, r.start.line + 1, false)[1] or ''
        local eline = api.nvim_buf_get_lines(bufnr, r['end'].line, r['end'].line + 1, false)[1] or ''
        item = {
          text = it.insertText,
          row = r.start.line,
          col = byte_col(sline, r.start.character, encoding),
          end_row = r['end'].line,
          end_col = byte_col(eline, r['end'].character, encoding),
        }
      else
        item = { text = it.insertText, row = cursor_row, col = cursor_col, end_row = cursor_row, end_col = cursor_col }
      end
      out[#out + 1] = item
    end
  end
  return out
end

local function stop_timer(b)
  if b.timer then
    b.timer:stop()
    if not b.timer:is_closing() then
      b.timer:close()
    end
    b.timer = nil
  end
end

local function cancel(b)
  stop_timer(b)
  if b.request_id then
    local client = vim.lsp.get_client_by_id(b.client_id)
    if client then
      client_cancel(client, b.request_id)
    end
    b.request_id = nil
    b.stats.cancelled = b.stats.cancelled + 1
  end
end

local function hide(bufnr)
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
end

--- Draws the current item's rest at the cursor; false when there is none to draw.
local function render(bufnr, hint)
  hide(bufnr)
  local b = buffers[bufnr]
  local win = vim.fn.bufwinid(bufnr)
  local item = b and b.items[b.index]
  if not item or win == -1 or not b.enabled then
    return false
  end
  local rest = accept.rest(bufnr, win, item)
  if not rest then
    return false
  end
  local first, more = text.split(rest)
  local cursor = api.nvim_win_get_cursor(win)
  local virt_lines = {}
  for _, l in ipairs(more) do
    virt_lines[#virt_lines + 1] = { { l, 'TesseraGhost' } }
  end
  local virt_text = { { first, 'TesseraGhost' } }
  if hint then
    local target = #virt_lines > 0 and virt_lines[#virt_lines] or virt_text
    target[#target + 1] = { hint, 'TesseraGhostHint' }
  end
  api.nvim_buf_set_extmark(bufnr, M.ns, cursor[1] - 1, cursor[2], {
    virt_text = virt_text,
    virt_text_pos = 'inline',
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = 'combine',
  })
  b.stats.shown = b.stats.shown + 1
  return true
end

local function state_key(bufnr, win)
  local c = api.nvim_win_get_cursor(win)
  return ('%d:%d:%d'):format(api.nvim_buf_get_changedtick(bufnr), c[1], c[2])
end

local function request(bufnr)
  local b = buffers[bufnr]
  local client = b and vim.lsp.get_client_by_id(b.client_id)
  local win = vim.fn.bufwinid(bufnr)
  if not client or win == -1 or not b.enabled or not api.nvim_get_mode().mode:match('^i') then
    return
  end
  local key = state_key(bufnr, win)
  local encoding = client.offset_encoding or 'utf-16'
  local params = {
    textDocument = vim.lsp.util.make_text_document_params(bufnr),
    position = vim.lsp.util.make_position_params(win, encoding).position,
    context = { triggerKind = 2 }, -- Automatic
  }
  local id
  local ok, req_id = client_request(client, 'textDocument/inlineCompletion', params, function(err, result)
    if b.request_id ~= id then
      return -- cancelled or superseded
    end
    b.request_id = nil
    if err or type(result) ~= 'table' then
      return
    end
    if not api.nvim_buf_is_valid(bufnr) or vim.fn.bufwinid(bufnr) == -1 or state_key(bufnr, win) ~= key then
      b.stats.stale = b.stats.stale + 1
      return
    end
    local cursor = api.nvim_win_get_cursor(win)
    b.items = to_items(bufnr, result, encoding, cursor[1] - 1, cursor[2])
    b.index = 1
    render(bufnr)
  end, bufnr)
  if ok then
    id = req_id
    b.request_id = req_id
    b.stats.requests = b.stats.requests + 1
  end
end

--- A keystroke or cursor move: keep the suggestion if the user typed along it, else drop
--- it; cancel the running request and ask again after the pause.
local function changed(bufnr)
  local b = buffers[bufnr]
  local win = vim.fn.bufwinid(bufnr)
  if not b or win == -1 then
    return
  end
  local key = state_key(bufnr, win)
  if key == b.last then
    return -- TextChangedI and CursorMovedI of one keystroke
  end
  b.last = key
  cancel(b)
  if not b.enabled then
    hide(bufnr)
    return
  end
  if not render(bufnr) then
    b.items = {}
  end
  stop_timer(b)
  b.timer = vim.uv.new_timer()
  b.timer:start(
    b.debounce_ms,
    0,
    vim.schedule_wrap(function()
      stop_timer(b)
      if buffers[bufnr] == b then
        request(bufnr)
      end
    end)
  )
end

function M.dismiss(bufnr)
  local b = buffers[bufnr]
  if b then
    cancel(b)
    b.items = {}
  end
  hide(bufnr)
end

--- Starts ghost text in `bufnr` for the client `client_id`.
function M.attach(bufnr, client_id, opts)
  if buffers[bufnr] then
    buffers[bufnr].client_id = client_id
    return
  end
  buffers[bufnr] = {
    client_id = client_id,
    debounce_ms = opts.debounce_ms,
    enabled = opts.enabled,
    items = {},
    index = 1,
    stats = { requests = 0, cancelled = 0, stale = 0, shown = 0 },
  }
  local group = api.nvim_create_augroup('tessera.ghost.' .. bufnr, { clear = true })
  api.nvim_create_autocmd({ 'InsertEnter', 'TextChangedI', 'TextChangedP', 'CursorMovedI' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      changed(bufnr)
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      local b = buffers[bufnr]
      if b then
        b.last = nil
      end
      M.dismiss(bufnr)
    end,
  })
  api.nvim_create_autocmd('LspDetach', {
    group = group,
    buffer = bufnr,
    callback = function(ev)
      if ev.data and ev.data.client_id == client_id then
        M.detach(bufnr)
      end
    end,
  })
  if api.nvim_get_mode().mode:match('^i') and vim.fn.bufwinid(bufnr) ~= -1 then
    changed(bufnr)
  end
end

function M.detach(bufnr)
  M.dismiss(bufnr)
  buffers[bufnr] = nil
  pcall(api.nvim_del_augroup_by_name, 'tessera.ghost.' .. bufnr)
end

function M.set_enabled(bufnr, enabled)
  local b = buffers[bufnr]
  if b then
    b.enabled = enabled
    if not enabled then
      M.dismiss(bufnr)
    end
  end
end

--- The suggestion shown in `bufnr`, if the buffer still follows it.
---@return tessera.Item?
function M.current(bufnr)
  local b = buffers[bufnr]
  local item = b and b.enabled and b.items[b.index]
  local win = vim.fn.bufwinid(bufnr)
  if not item or win == -1 or not accept.rest(bufnr, win, item) then
    return nil
  end
  return item
end

function M.accept(bufnr, how)
  local item = M.current(bufnr)
  if not item then
    return false
  end
  local b = buffers[bufnr]
  if how == 'all' then
    cancel(b)
    b.items = {}
    hide(bufnr)
  end
  return accept.apply(bufnr, item, how)
end

function M.cycle(bufnr, step)
  local b = buffers[bufnr]
  if not b or #b.items == 0 or not M.current(bufnr) then
    return false
  end
  b.index = (b.index - 1 + step) % #b.items + 1
  return render(bufnr, #b.items > 1 and (' (%d/%d)'):format(b.index, #b.items) or nil)
end

function M.items(bufnr)
  local b = buffers[bufnr]
  return b and b.items or {}
end

function M.stats(bufnr)
  local b = buffers[bufnr]
  return b and vim.deepcopy(b.stats) or nil
end

function M.attached(bufnr)
  return buffers[bufnr] ~= nil
end

return M
