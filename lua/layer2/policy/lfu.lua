-- Least frequently used first (fewest reads), then least recently used.
local take = require("layer2.policy").take

return {
  name = "lfu",
  order = "access",
  select = function(_, candidates, bytes_needed)
    local sorted = {}
    for i, c in ipairs(candidates) do sorted[i] = c end
    table.sort(sorted, function(a, b)
      if a.hits ~= b.hits then return a.hits < b.hits end
      if a.last_access ~= b.last_access then return a.last_access < b.last_access end
      return a.id < b.id
    end)
    return (take(sorted, bytes_needed))
  end,
}
