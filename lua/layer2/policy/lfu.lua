-- Least frequently used first (fewest recent reads, as the backend counts them; L1's own hit
-- count where a caller gives no `reads`), then least recently used.
local take = require("layer2.policy").take

return {
  name = "lfu",
  order = "access",
  select = function(_, candidates, bytes_needed)
    local sorted = {}
    for i, c in ipairs(candidates) do sorted[i] = c end
    table.sort(sorted, function(a, b)
      local fa, fb = a.reads or a.hits, b.reads or b.hits
      if fa ~= fb then return fa < fb end
      if a.last_access ~= b.last_access then return a.last_access < b.last_access end
      return a.id < b.id
    end)
    return (take(sorted, bytes_needed))
  end,
}
