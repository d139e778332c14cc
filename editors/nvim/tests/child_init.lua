-- init.lua of the Neovim under test (started by tests/run.lua with --embed --headless):
-- the plugin from this checkout, the real server, and helpers the runner calls over RPC.
local plugin = vim.fs.dirname(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)))
vim.opt.runtimepath:prepend(plugin)
vim.cmd('filetype plugin on')
vim.cmd('filetype indent off')
vim.o.swapfile = false
vim.o.autoindent = false
vim.o.shada = ''
-- The server's info lines (model loaded, requests) in the LSP log, for failures.
vim.lsp.set_log_level('info')

require('tessera').setup({
  bin = os.getenv('TESSERA_BIN'),
  renderer = os.getenv('TESSERA_TEST_RENDERER') or 'auto',
  debounce_ms = 100,
})

-- Helpers for the runner.
T = { events = {} }

vim.api.nvim_create_autocmd('LspRequest', {
  callback = function(ev)
    local r = ev.data.request
    if r.method == 'textDocument/inlineCompletion' then
      table.insert(T.events, { id = ev.data.request_id, type = r.type })
      if r.type == 'pending' and T.on_pending and vim.api.nvim_get_current_line() == T.on_pending_line then
        local keys = T.on_pending
        T.on_pending = nil
        T.typed_on = ev.data.request_id
        vim.api.nvim_input(keys)
      end
    end
  end,
})

function T.lines()
  return vim.api.nvim_buf_get_lines(0, 0, -1, false)
end

function T.cursor()
  return vim.api.nvim_win_get_cursor(0)
end

function T.ghost()
  return require('tessera').ghost_text(0)
end

--- The number of suggestions the renderer holds for the current buffer.
function T.count()
  local t = require('tessera')
  if t.status().renderer == 'native' then
    local c = require('vim.lsp._capability').all.inline_completion.active[vim.api.nvim_get_current_buf()]
    return c and c:count_items() or 0
  end
  return #require('tessera.ghost').items(vim.api.nvim_get_current_buf())
end

function T.count_events(type, id)
  local n = 0
  for _, e in ipairs(T.events) do
    if e.type == type and (id == nil or e.id == id) then
      n = n + 1
    end
  end
  return n
end

--- Types `keys` the moment an inline completion request is sent (so it is running) with
--- the cursor's line being `line`.
function T.type_when_pending(keys, line)
  T.on_pending = keys
  T.on_pending_line = line
  T.typed_on = nil
end
