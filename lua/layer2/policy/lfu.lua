-- Least frequently used first (fewest reads), then least recently used.
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
    local picked, freed = {}, 0
    for _, c in ipairs(sorted) do
      if freed >= bytes_needed then break end
      picked[#picked + 1] = c.id
      freed = freed + c.size
    end
    return picked
  end,
}
