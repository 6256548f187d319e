-- The default eviction policy: least recently used first, keeping profiles (0), follow lists (3)
-- and relay lists (10002) longer, since every client asks for them again and again.
local KEEP = { [0] = true, [3] = true, [10002] = true }

return {
  name = "lru",
  order = "access", -- candidates arrive coldest (least recently read) first
  select = function(_, candidates, bytes_needed)
    local picked, freed, kept = {}, 0, {}
    for _, c in ipairs(candidates) do
      if freed >= bytes_needed then break end
      if KEEP[c.kind] then
        kept[#kept + 1] = c
      else
        picked[#picked + 1] = c.id
        freed = freed + c.size
      end
    end
    -- the kept kinds go only when nothing else frees enough
    for _, c in ipairs(kept) do
      if freed >= bytes_needed then break end
      picked[#picked + 1] = c.id
      freed = freed + c.size
    end
    return picked
  end,
}
