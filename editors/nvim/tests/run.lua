-- Tests of the Neovim plugin against the real `tessera lsp` and the fetched default model.
-- Run: nvim --headless -u NONE -i NONE -l editors/nvim/tests/run.lua
-- Each renderer gets its own headless Neovim (--embed, driven over RPC like a user's
-- keystrokes: nvim_input), editing a Python file in a temporary workspace.
-- Env: TESSERA_BIN (default target/release/tessera), TESSERA_HOME (fetched models).
local uv = vim.uv or vim.loop
local here = vim.fs.dirname(vim.fs.normalize(debug.getinfo(1, 'S').source:sub(2)))
if not here:match('^/') then
  here = vim.fs.normalize(vim.fn.getcwd() .. '/' .. here)
end
local repo = vim.fs.dirname(vim.fs.dirname(vim.fs.dirname(here)))
local bin = os.getenv('TESSERA_BIN') or (repo .. '/target/release/tessera')
local home = os.getenv('TESSERA_HOME') or (os.getenv('HOME') .. '/.cache/tessera')
-- Loading the model and decoding on a busy two-core machine: a guard against hangs only.
local TIMEOUT_MS = tonumber(os.getenv('TESSERA_TEST_TIMEOUT_MS')) or 300000

local passed, failed = 0, 0
local function out(s)
  io.stdout:write(s .. '\n')
  io.stdout:flush()
end

local function test(name, fn)
  local ok, err = xpcall(fn, debug.traceback)
  if ok then
    passed = passed + 1
    out('ok - ' .. name)
  else
    failed = failed + 1
    out('not ok - ' .. name .. '\n' .. tostring(err))
  end
end

local function fail_setup(msg)
  out('not ok - setup: ' .. msg)
  out('0 passed, 1 failed')
  os.exit(1)
end

if vim.fn.executable(bin) ~= 1 then
  fail_setup(bin .. ' is missing: build it with `cargo build --release` (or set TESSERA_BIN)')
end
if vim.fn.filereadable(home .. '/models/qwen2.5-coder-0.5b/model.gguf') ~= 1 then
  fail_setup('the default model is not fetched under ' .. home .. ': run scripts/fetch-models')
end

vim.opt.runtimepath:prepend(vim.fs.dirname(here))

test('text: the next word and line of a suggestion, typing along it', function()
  local text = require('tessera.text')
  assert(text.next_word('n % 2 == 0') == 'n')
  assert(text.next_word(' % 2 == 0') == ' %')
  assert(text.next_word('  foo_bar(x)') == '  foo_bar')
  assert(text.next_word('\n    return x') == '\n    ')
  assert(text.next_line('a = 1\nb = 2') == 'a = 1')
  assert(text.next_line('\n    b = 2\n') == '\n    b = 2')
  assert(text.next_line('x') == 'x')
  assert(text.typed_along('    return n', 11, 12, 'n % 2 == 0') == ' % 2 == 0')
  assert(text.typed_along('    return x', 11, 12, 'n % 2 == 0') == nil)
  assert(text.typed_along('    return ', 11, 11, 'n') == 'n')
  assert(text.typed_along('    return ', 11, 10, 'n') == nil)
  local first, rest = text.split('a\nb\nc')
  assert(first == 'a' and #rest == 2 and rest[2] == 'c')
end)

---@class Child
local Child = {}
Child.__index = Child

function Child.new(renderer)
  local ws = vim.fn.tempname()
  vim.fn.mkdir(ws .. '/.git', 'p')
  vim.fn.mkdir(ws .. '/state', 'p')
  vim.fn.writefile({ 'def is_even(n):' }, ws .. '/even.py')
  local chan = vim.fn.jobstart({
    vim.v.progpath,
    '--embed',
    '--headless',
    '-n',
    '-i',
    'NONE',
    '-u',
    here .. '/child_init.lua',
  }, {
    rpc = true,
    cwd = ws,
    env = {
      TESSERA_BIN = bin,
      TESSERA_TEST_RENDERER = renderer,
      XDG_STATE_HOME = ws .. '/state',
      XDG_CONFIG_HOME = ws .. '/config',
      XDG_DATA_HOME = ws .. '/data',
    },
  })
  assert(chan > 0, 'cannot start ' .. vim.v.progpath)
  return setmetatable({ chan = chan, ws = ws, renderer = renderer }, Child)
end

function Child:lua(code, ...)
  return vim.rpcrequest(self.chan, 'nvim_exec_lua', code, { ... })
end

function Child:input(keys)
  vim.rpcrequest(self.chan, 'nvim_input', keys)
end

function Child:cmd(c)
  return vim.rpcrequest(self.chan, 'nvim_exec2', c, { output = true }).output
end

function Child:line(n)
  return self:lua('return T.lines()[...]', n)
end

function Child:ghost()
  local g = self:lua('return T.ghost()')
  return g ~= vim.NIL and g or nil
end

--- What the child shows, for failure messages.
function Child:describe()
  local ok, s = pcall(function()
    return vim.inspect({
      lines = self:lua('return T.lines()'),
      cursor = self:lua('return T.cursor()'),
      mode = vim.rpcrequest(self.chan, 'nvim_get_mode').mode,
      ghost = self:ghost(),
      status = self:lua("return require('tessera').status()"),
      events = self:lua('return T.events'),
    })
  end)
  local log = self.ws .. '/state/nvim/lsp.log'
  local tail = vim.fn.filereadable(log) == 1 and table.concat(vim.list_slice(vim.fn.readfile(log), -15), '\n') or ''
  return (ok and s or ('(child not answering: ' .. tostring(s) .. ')')) .. '\nlsp.log:\n' .. tail
end

--- Polls `cond` until it returns a value; fails (with the child's state) after the guard.
function Child:wait(what, cond)
  local deadline = uv.now() + TIMEOUT_MS
  while true do
    local v = cond()
    if v ~= nil and v ~= false then
      return v
    end
    if uv.now() > deadline then
      error('waited too long for ' .. what .. '\n' .. self:describe(), 2)
    end
    vim.wait(30)
  end
end

--- Waits until the child processed everything sent so far (scheduled callbacks included).
function Child:settle()
  self:lua('local done = false; vim.schedule(function() done = true end); vim.wait(1000, function() return done end)')
end

function Child:close()
  pcall(vim.rpcrequest, self.chan, 'nvim_command', 'qall!')
  vim.fn.jobwait({ self.chan }, 10000)
  vim.fn.delete(self.ws, 'rf')
end

local function starts(s, prefix)
  return type(s) == 'string' and s:sub(1, #prefix) == prefix
end

local function strip_hint(s)
  return (s:gsub(' %(%d+/%d+%)$', ''))
end

local function check(cond, msg, c)
  if not cond then
    error(msg .. (c and ('\n' .. c:describe()) or ''), 2)
  end
end

for _, renderer in ipairs({ 'native', 'extmark' }) do
  local c = Child.new(renderer)
  local first

  test(renderer .. ': the server starts for a Python buffer and loads the model', function()
    c:cmd('edit even.py')
    c:wait('the model to load', function()
      local s = c:lua("return require('tessera').status()")
      return (s.phase == 'ready' or s.phase == 'error') and s
    end)
    local s = c:lua("return require('tessera').status()")
    check(s.phase == 'ready', 'status: ' .. vim.inspect(s), c)
    check(s.renderer == renderer, 'renderer ' .. s.renderer)
    check(s.detail:match('qwen2%.5%-coder%-0%.5b') ~= nil, 'detail: ' .. s.detail)
    local shown = c:cmd('TesseraStatus')
    check(shown:match('tessera: ready') and shown:match('log: .*lsp%.log'), 'TesseraStatus: ' .. shown)
  end)

  test(renderer .. ': typing shows the completion as ghost text', function()
    c:input('Go    return ')
    c:wait('the typing', function()
      return c:line(2) == '    return '
    end)
    first = c:wait('ghost text', function()
      return c:ghost()
    end)
    check(starts(first, 'n % 2 == 0'), 'ghost text: ' .. vim.inspect(first), c)
  end)

  test(renderer .. ': a key cycles the alternatives', function()
    local n = c:lua('return T.count()')
    check(n >= 2, ('%d suggestions, expected alternatives'):format(n), c)
    c:input('<M-]>')
    local second = c:wait('the next alternative', function()
      local g = c:ghost()
      return g and strip_hint(g) ~= first and g
    end)
    check(second ~= first, 'the alternative differs')
    c:input('<M-[>')
    c:wait('the first suggestion again', function()
      local g = c:ghost()
      return g and strip_hint(g) == first
    end)
  end)

  test(renderer .. ': accept a word, then the rest with <Tab>', function()
    c:input('<M-Right>')
    c:wait('the word', function()
      return c:line(2) == '    return n'
    end)
    local rest = c:wait('the rest as ghost text', function()
      local g = c:ghost()
      return g and starts(g, ' % 2 == 0') and g
    end)
    check(starts(rest, ' % 2 == 0'), 'rest: ' .. rest)
    c:input('<Tab>')
    c:wait('the accepted completion', function()
      return c:line(2) == '    return n % 2 == 0'
    end)
    local cursor = c:lua('return T.cursor()')
    check(cursor[1] == 2 and cursor[2] == #'    return n % 2 == 0', 'cursor ' .. vim.inspect(cursor), c)
    check(#c:lua('return T.lines()') == 2, 'no other line changed', c)
    check(vim.rpcrequest(c.chan, 'nvim_get_mode').mode == 'i', 'still in insert mode')
  end)

  test(renderer .. ': typing on cancels the running request and drops its suggestion', function()
    c:lua("T.type_when_pending('not ', '    return ')")
    c:input('<Esc>o<CR>def is_odd(n):<CR>    return ')
    local typed_on = c:wait('a request to be running when typing on', function()
      local id = c:lua('return T.typed_on')
      return id ~= vim.NIL and id
    end)
    c:wait('the line typed on', function()
      return c:line(5) == '    return not '
    end)
    c:wait('the running request to be cancelled', function()
      return c:lua('return T.count_events(...)', 'cancel', typed_on) > 0
    end)
    local g = c:wait('ghost text for the new text', function()
      return c:ghost()
    end)
    check(c:line(5) == '    return not ', 'line 5: ' .. vim.inspect(c:line(5)), c)
    check(not starts(g, 'n % 2'), 'the old suggestion is not shown: ' .. g, c)
    -- A suggestion the typing leaves disappears at once.
    c:input('@')
    c:wait('the line typed on', function()
      return c:line(5) == '    return not @'
    end)
    c:settle()
    check(c:ghost() == nil, 'stale ghost text: ' .. vim.inspect(c:ghost()), c)
  end)

  test(renderer .. ': :TesseraToggle turns completions off and on', function()
    c:input('<BS>')
    c:settle()
    c:cmd('TesseraToggle')
    check(c:lua("return require('tessera').status().enabled") == false, 'disabled')
    check(c:ghost() == nil, 'no ghost text once disabled', c)
    local before = c:lua('return T.count_events(...)', 'pending')
    c:input('x')
    c:wait('the typing', function()
      return c:line(5) == '    return not x'
    end)
    -- Well past the debounce: nothing was asked.
    vim.wait(1000)
    c:settle()
    check(c:lua('return T.count_events(...)', 'pending') == before, 'no request while disabled', c)
    check(c:ghost() == nil, 'no ghost text while disabled', c)
    c:cmd('TesseraToggle')
    check(c:lua("return require('tessera').status().enabled") == true, 'enabled again')
    c:input('<BS>')
    c:wait('ghost text again', function()
      return c:ghost()
    end)
  end)

  if renderer == 'extmark' then
    test(renderer .. ': :TesseraModel loads another model in the running server', function()
      local id = c:lua("return require('tessera').status().client_id")
      c:cmd('TesseraModel smollm2-135m')
      c:wait('the new model', function()
        local s = c:lua("return require('tessera').status()")
        return s.phase == 'ready' and s.detail:match('smollm2%-135m')
      end)
      check(c:lua("return require('tessera').status().client_id") == id, 'the same server', c)
    end)
  end

  c:close()
end

out(('%d passed, %d failed'):format(passed, failed))
os.exit(failed == 0 and 0 or 1)
