--- Tessera for Neovim: starts `tessera lsp` for chosen filetypes and shows its inline
--- completions as ghost text, with `vim.lsp.inline_completion` on Neovim 0.12 and with
--- extmarks (`tessera.ghost`) on 0.10/0.11. No other plugin needed.
local accept = require('tessera.accept')
local ghost = require('tessera.ghost')

local api = vim.api
local M = {}

M.defaults = {
  --- Path of the `tessera` binary. nil: `tessera` on PATH, then `target/release/tessera`
  --- in the buffer's directory or above.
  bin = nil,
  --- The whole server command (overrides `bin`).
  cmd = nil,
  --- Extra environment of the server (e.g. `{ TESSERA_LOG = 'debug' }`).
  cmd_env = nil,
  filetypes = { 'c', 'cpp', 'go', 'java', 'javascript', 'javascriptreact', 'python', 'rust', 'typescript', 'typescriptreact' },
  root_markers = { '.git', 'Cargo.toml', 'pyproject.toml', 'setup.py', 'package.json', 'go.mod', 'pom.xml' },
  --- Server settings (camelCase, as in the README): model, device, maxTokens, beams, ...
  settings = {},
  --- 'auto' (native on 0.12, extmarks before), 'native' or 'extmark'.
  renderer = 'auto',
  --- Pause in typing before a request (extmark renderer; the native one waits 200 ms).
  debounce_ms = 150,
  enabled = true,
  --- Insert-mode keys; false leaves one unmapped.
  keys = {
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-C-Right>',
    next = '<M-]>',
    prev = '<M-[>',
    dismiss = '<C-]>',
  },
}

local state = {
  config = vim.deepcopy(M.defaults),
  enabled = true,
  renderer = 'extmark',
  ---@type table<integer, { phase: string, detail: string }>
  status = {},
  error = nil, ---@type string?
  setup = false,
}

local function native_available()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.get ~= nil
end

--- The native completor of `bufnr` (private to Neovim: read defensively).
local function native_completor(bufnr)
  local ok, cap = pcall(require, 'vim.lsp._capability')
  local cls = ok and cap.all and cap.all.inline_completion
  return cls and cls.active and cls.active[bufnr] or nil
end

--- The native suggestion of `bufnr` as a `tessera.Item`, if any.
---@return tessera.Item?
local function native_item(bufnr)
  local c = native_completor(bufnr)
  local cur = c and c.current
  if not cur or type(cur.insert_text) ~= 'string' then
    return nil
  end
  if cur.range then
    return {
      text = cur.insert_text,
      row = cur.range.start.row,
      col = cur.range.start.col,
      end_row = cur.range.end_.row,
      end_col = cur.range.end_.col,
    }
  end
  local win = vim.fn.bufwinid(bufnr)
  if win == -1 then
    return nil
  end
  local cursor = api.nvim_win_get_cursor(win)
  return { text = cur.insert_text, row = cursor[1] - 1, col = cursor[2], end_row = cursor[1] - 1, end_col = cursor[2] }
end

local function executable(path)
  return path and vim.fn.executable(path) == 1
end

--- `tessera` for `bufnr`: the option, PATH, then target/release/tessera above the file.
---@return string?
local function find_bin(bufnr)
  local cfg = state.config
  if cfg.bin then
    local p = vim.fn.expand(cfg.bin)
    return executable(p) and p or nil
  end
  local on_path = vim.fn.exepath('tessera')
  if on_path ~= '' then
    return on_path
  end
  local name = api.nvim_buf_get_name(bufnr)
  local start = name ~= '' and vim.fs.dirname(name) or vim.fn.getcwd()
  for dir in vim.fs.parents(start .. '/x') do
    local p = dir .. '/target/release/tessera'
    if executable(p) then
      return p
    end
  end
  return nil
end

local function set_status(client_id, phase, detail)
  state.status[client_id] = { phase = phase, detail = detail or '' }
  pcall(vim.cmd, 'redrawstatus') -- may run in a fast callback (on_exit)
end

local function on_attach(client, bufnr)
  local keys = state.config.keys
  local function map(key, fn, desc)
    if key then
      vim.keymap.set('i', key, fn, { buffer = bufnr, expr = true, silent = true, desc = desc })
    end
  end
  -- Expression maps (the buffer cannot change while one runs): act on the next tick,
  -- or give the key back when there is no suggestion.
  local function acting(fn_can, fn_do, key)
    return function()
      if fn_can() then
        vim.schedule(fn_do)
        return ''
      end
      return key
    end
  end
  map(keys.accept, acting(function()
    return M.suggestion(bufnr) ~= nil
  end, function()
    M.accept('all', bufnr)
  end, keys.accept), 'Tessera: accept the suggestion')
  map(keys.accept_word, acting(function()
    return M.suggestion(bufnr) ~= nil
  end, function()
    M.accept('word', bufnr)
  end, keys.accept_word), 'Tessera: accept the next word')
  map(keys.accept_line, acting(function()
    return M.suggestion(bufnr) ~= nil
  end, function()
    M.accept('line', bufnr)
  end, keys.accept_line), 'Tessera: accept the next line')
  map(keys.next, acting(function()
    return M.suggestion(bufnr) ~= nil
  end, function()
    M.cycle(1, bufnr)
  end, keys.next), 'Tessera: next suggestion')
  map(keys.prev, acting(function()
    return M.suggestion(bufnr) ~= nil
  end, function()
    M.cycle(-1, bufnr)
  end, keys.prev), 'Tessera: previous suggestion')
  map(keys.dismiss, acting(function()
    return M.suggestion(bufnr) ~= nil
  end, function()
    M.dismiss(bufnr)
  end, keys.dismiss), 'Tessera: dismiss the suggestion')

  if state.renderer == 'native' then
    vim.lsp.inline_completion.enable(state.enabled, { bufnr = bufnr })
    -- Typing on cancels: a pending request answers for a text that is gone, and a shown
    -- suggestion the typing left would be drawn (and accepted) at its old place.
    api.nvim_create_autocmd('TextChangedI', {
      group = api.nvim_create_augroup('tessera.native.' .. bufnr, { clear = true }),
      buffer = bufnr,
      callback = function()
        vim.schedule(function()
          local c = native_completor(bufnr)
          if c and not M.suggestion(bufnr) then
            c:abort()
          end
        end)
      end,
    })
  else
    ghost.attach(bufnr, client.id, { debounce_ms = state.config.debounce_ms, enabled = state.enabled })
  end
end

--- Starts (or reuses) the server for `bufnr`.
function M.start(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  local cfg = state.config
  local cmd = cfg.cmd
  if not cmd then
    local bin = find_bin(bufnr)
    if not bin then
      state.error = 'cannot find the tessera binary: set bin in setup(), put tessera on PATH, or run `cargo build --release`'
      vim.notify('tessera: ' .. state.error, vim.log.levels.ERROR, { title = 'tessera' })
      return nil
    end
    cmd = { bin, 'lsp' }
  end
  state.error = nil
  local name = api.nvim_buf_get_name(bufnr)
  local root = vim.fs.root(bufnr, cfg.root_markers)
    or (name ~= '' and vim.fs.dirname(name))
    or vim.fn.getcwd()
  return vim.lsp.start({
    name = 'tessera',
    cmd = cmd,
    cmd_env = cfg.cmd_env,
    root_dir = root,
    init_options = { tessera = cfg.settings },
    on_init = function(client)
      set_status(client.id, 'loading', 'starting')
    end,
    on_attach = on_attach,
    on_exit = function(code, _, client_id)
      if code ~= 0 then
        set_status(client_id, 'error', ('the server exited with code %d'):format(code))
      else
        set_status(client_id, 'stopped', 'the server stopped')
      end
    end,
  }, { bufnr = bufnr })
end

local function clients()
  return vim.lsp.get_clients({ name = 'tessera' })
end

--- The suggestion shown in `bufnr` that the buffer still follows.
---@return tessera.Item?
function M.suggestion(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if not state.enabled then
    return nil
  end
  if state.renderer == 'native' then
    local item = native_item(bufnr)
    local win = vim.fn.bufwinid(bufnr)
    if item and win ~= -1 and accept.rest(bufnr, win, item) then
      return item
    end
    return nil
  end
  return ghost.current(bufnr)
end

--- Accepts the suggestion, its next word or its next line.
---@param how? 'all'|'word'|'line'
function M.accept(how, bufnr)
  how = how or 'all'
  bufnr = bufnr or api.nvim_get_current_buf()
  if state.renderer == 'native' then
    local item = M.suggestion(bufnr)
    if not item then
      return false
    end
    local c = native_completor(bufnr)
    if c then
      c:abort()
    end
    return accept.apply(bufnr, item, how)
  end
  return ghost.accept(bufnr, how)
end

function M.cycle(step, bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if state.renderer == 'native' then
    vim.lsp.inline_completion.select({ bufnr = bufnr, count = step })
    return true
  end
  return ghost.cycle(bufnr, step)
end

function M.dismiss(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if state.renderer == 'native' then
    local c = native_completor(bufnr)
    if c then
      c:abort()
    end
  else
    ghost.dismiss(bufnr)
  end
end

--- The ghost text drawn in `bufnr` (lines joined with "\n"), or nil.
function M.ghost_text(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  local ns = state.renderer == 'native' and api.nvim_create_namespace('nvim.lsp.inline_completion') or ghost.ns
  local marks = api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })
  local m = marks[1]
  if not m then
    return nil
  end
  local d = m[4]
  local parts = {}
  for _, chunk in ipairs(d.virt_text or {}) do
    parts[#parts + 1] = chunk[1]
  end
  local lines = { table.concat(parts) }
  for _, vl in ipairs(d.virt_lines or {}) do
    local l = {}
    for _, chunk in ipairs(vl) do
      l[#l + 1] = chunk[1]
    end
    lines[#lines + 1] = table.concat(l)
  end
  return table.concat(lines, '\n')
end

function M.set_enabled(enabled)
  state.enabled = enabled
  for _, client in ipairs(clients()) do
    for _, bufnr in ipairs(vim.lsp.get_buffers_by_client_id(client.id)) do
      if state.renderer == 'native' then
        vim.lsp.inline_completion.enable(enabled, { bufnr = bufnr })
      else
        ghost.set_enabled(bufnr, enabled)
      end
    end
  end
end

function M.toggle()
  M.set_enabled(not state.enabled)
  vim.notify(('tessera: completions %s'):format(state.enabled and 'on' or 'off'), vim.log.levels.INFO)
end

--- Changes server settings at run time (workspace/didChangeConfiguration); `nil` values
--- are not expressible in Lua tables, so pass `vim.NIL` to reset a key to its default.
function M.configure(settings)
  state.config.settings = vim.tbl_extend('force', state.config.settings, settings)
  for _, client in ipairs(clients()) do
    local params = { settings = { tessera = settings } }
    if vim.fn.has('nvim-0.11') == 1 then
      client:notify('workspace/didChangeConfiguration', params)
    else
      client.notify('workspace/didChangeConfiguration', params)
    end
  end
end

---@return { enabled: boolean, renderer: string, phase: string, detail: string, log: string, client_id: integer? }
function M.status()
  local id, s
  for _, client in ipairs(vim.lsp.get_clients({ name = 'tessera', bufnr = api.nvim_get_current_buf() })) do
    id, s = client.id, state.status[client.id]
  end
  if not id then
    for _, client in ipairs(clients()) do
      id, s = client.id, state.status[client.id]
    end
  end
  if not s and id and state.status[id] == nil then
    s = { phase = 'loading', detail = 'starting' }
  end
  s = s or (state.error and { phase = 'error', detail = state.error }) or { phase = 'stopped', detail = 'not running' }
  return {
    enabled = state.enabled,
    renderer = state.renderer,
    phase = s.phase,
    detail = s.detail,
    log = vim.lsp.get_log_path(),
    client_id = id,
  }
end

local function status_line()
  local s = M.status()
  return ('tessera: %s%s (%s, %s) · log: %s'):format(
    s.phase,
    s.detail ~= '' and (': ' .. s.detail) or '',
    s.enabled and 'enabled' or 'disabled',
    s.renderer,
    s.log
  )
end

function M.setup(opts)
  local cfg = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  if opts and opts.filetypes then
    cfg.filetypes = opts.filetypes -- a list replaces, not merges
  end
  state.config = cfg
  state.enabled = cfg.enabled ~= false
  if cfg.renderer == 'native' and not native_available() then
    vim.notify('tessera: renderer "native" needs Neovim 0.12 (vim.lsp.inline_completion); using extmarks', vim.log.levels.WARN)
    state.renderer = 'extmark'
  elseif cfg.renderer == 'auto' then
    state.renderer = native_available() and 'native' or 'extmark'
  else
    state.renderer = cfg.renderer == 'native' and 'native' or 'extmark'
  end

  api.nvim_set_hl(0, 'TesseraGhost', { link = 'Comment', default = true })
  api.nvim_set_hl(0, 'TesseraGhostHint', { link = 'NonText', default = true })

  local group = api.nvim_create_augroup('tessera', { clear = true })
  api.nvim_create_autocmd('FileType', {
    group = group,
    pattern = cfg.filetypes,
    callback = function(ev)
      if vim.bo[ev.buf].buftype == '' then
        M.start(ev.buf)
      end
    end,
  })
  -- Model loading arrives as $/progress: begin/report while loading, end with
  -- "ready: ..." or "cannot load ...".
  api.nvim_create_autocmd('LspProgress', {
    group = group,
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      local value = ev.data.params and ev.data.params.value
      if not client or client.name ~= 'tessera' or type(value) ~= 'table' then
        return
      end
      if value.kind == 'end' then
        local msg = value.message or ''
        set_status(client.id, msg:match('^cannot') and 'error' or 'ready', msg)
        if msg:match('^cannot') then
          vim.notify('tessera: ' .. msg, vim.log.levels.ERROR)
        end
      else
        set_status(client.id, 'loading', value.message or value.title or 'loading')
      end
    end,
  })

  api.nvim_create_user_command('TesseraToggle', M.toggle, { desc = 'Tessera: completions on/off' })
  api.nvim_create_user_command('TesseraStatus', function()
    vim.notify(status_line(), vim.log.levels.INFO)
  end, { desc = 'Tessera: server state, renderer and log path' })
  api.nvim_create_user_command('TesseraModel', function(a)
    M.configure({ model = a.args })
  end, { nargs = 1, desc = 'Tessera: load another model' })

  state.setup = true
  -- Buffers already open when setup() runs.
  for _, bufnr in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(bufnr) and vim.tbl_contains(cfg.filetypes, vim.bo[bufnr].filetype) then
      M.start(bufnr)
    end
  end
end

--- A short text for a statusline: `tessera: ready`, `tessera: loading`, ...
function M.statusline()
  local s = M.status()
  return s.enabled and ('tessera: ' .. s.phase) or 'tessera: off'
end

return M
