-- Least frequently used first (fewest reads: those L1 counted, and the fetches from L2 the backend
-- remembers), then least recently used.
local take = require("layer2.policy").take

return {
  name = "lfu",
  order = "access",
  select = function(_, candidates, bytes_needed)
    local sorted = {}
    for i, c in ipairs(candidates) do sorted[i] = c end
    table.sort(sorted, function(a, b)
      local fa, fb = a.hits + (a.fetches or 0), b.hits + (b.fetches or 0)
      if fa ~= fb then return fa < fb end
      if a.last_access ~= b.last_access then return a.last_access < b.last_access end
      return a.id < b.id
    end)
    return (take(sorted, bytes_needed))
  end,
}
