--- Pure helpers on completion text: what "a word" and "a line" of a suggestion are, and
--- whether what the user typed since a suggestion arrived still follows it.
local M = {}

--- The next word of `text`, as VS Code's "accept next word": leading blanks and one run
--- of word characters (or of punctuation). At a line break: the break and the next
--- line's indentation.
---@param text string
---@return string
function M.next_word(text)
  local blanks = text:match('^[ \t]*')
  local rest = text:sub(#blanks + 1)
  if rest:sub(1, 1) == '\n' then
    return blanks .. '\n' .. rest:sub(2):match('^[ \t]*')
  end
  local word = rest:match('^[%w_]+') or rest:match('^[^%w_%s]+') or ''
  return blanks .. word
end

--- The next line of `text`: up to its first line break (not included); when `text`
--- starts with a break, the break and the line after it.
---@param text string
---@return string
function M.next_line(text)
  if text:sub(1, 1) == '\n' then
    local after = text:sub(2)
    return '\n' .. (after:match('^[^\n]*') or '')
  end
  return text:match('^[^\n]*') or text
end

--- What is left of a suggestion once the user typed on. `line` is the cursor's line,
--- `start_col` the suggestion's start and `col` the cursor (0-based byte columns, same
--- line). Returns the rest still to insert, or nil when the typing left the suggestion.
---@param line string
---@param start_col integer
---@param col integer
---@param insert_text string
---@return string?
function M.typed_along(line, start_col, col, insert_text)
  if col < start_col then
    return nil
  end
  local typed = line:sub(start_col + 1, col)
  if insert_text:sub(1, #typed) ~= typed then
    return nil
  end
  return insert_text:sub(#typed + 1)
end

--- Splits text into lines for the extmark renderer: the first line (shown after the
--- cursor) and the others (shown below it).
---@param text string
---@return string first, string[] rest
function M.split(text)
  local lines = vim.split(text, '\n', { plain = true })
  local first = table.remove(lines, 1)
  return first, lines
end

return M
