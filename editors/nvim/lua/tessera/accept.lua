--- Putting a suggestion (or its next word or line) into the buffer. Shared by both
--- renderers, so typing along a suggestion and then accepting it inserts only the rest and
--- still replaces what the server's range covers after the cursor (auto-closed brackets).
local text = require('tessera.text')

local api = vim.api
local M = {}

---@class tessera.Item
---@field text string the completion (insertText)
---@field row integer 0-based start row of the range it replaces
---@field col integer 0-based start byte column
---@field end_row integer
---@field end_col integer

--- The rest of `item` still to insert at the cursor of `win`, or nil when the buffer left it.
---@param bufnr integer
---@param win integer
---@param item tessera.Item
---@return string?
function M.rest(bufnr, win, item)
  local cursor = api.nvim_win_get_cursor(win)
  local row, col = cursor[1] - 1, cursor[2]
  if row ~= item.row then
    return nil
  end
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
  local rest = text.typed_along(line, item.col, col, item.text)
  if rest == nil or rest == '' then
    return nil
  end
  return rest
end

--- Inserts the rest of `item` (`how`: 'all', 'word' or 'line') at the cursor and moves the
--- cursor after it. Returns false when there is nothing to insert.
---@param bufnr integer
---@param item tessera.Item
---@param how 'all'|'word'|'line'
---@return boolean
function M.apply(bufnr, item, how)
  local win = vim.fn.bufwinid(bufnr)
  if win == -1 then
    return false
  end
  local rest = M.rest(bufnr, win, item)
  if not rest then
    return false
  end
  local piece = how == 'word' and text.next_word(rest) or how == 'line' and text.next_line(rest) or rest
  if piece == '' then
    piece = rest
  end
  local cursor = api.nvim_win_get_cursor(win)
  local row, col = cursor[1] - 1, cursor[2]
  local end_row, end_col = row, col
  if piece == rest then
    -- The whole suggestion: it also replaces the range's part after the cursor, shifted by
    -- what the user typed since.
    if item.end_row == item.row then
      end_col = math.max(col, item.end_col + (col - item.col))
    elseif item.end_row > row then
      end_row, end_col = item.end_row, item.end_col
    end
    local last = api.nvim_buf_get_lines(bufnr, end_row, end_row + 1, false)[1] or ''
    end_col = math.min(end_col, #last)
  end
  local lines = vim.split(piece, '\n', { plain = true })
  api.nvim_buf_set_text(bufnr, row, col, end_row, end_col, lines)
  local last_row = row + #lines - 1
  local last_col = (#lines == 1 and col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(win, { last_row + 1, last_col })
  return true
end

return M
