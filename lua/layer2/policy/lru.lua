-- The default eviction policy: least recently used first, keeping profiles (0), follow lists (3)
-- and relay lists (10002) longer while they are read (recent reads as the backend counts them,
-- else L1's hits), since every client asks for them again and again; unread ones go like the rest.
local take = require("layer2.policy").take

local KEEP = { [0] = true, [3] = true, [10002] = true }
local function kept(c) return KEEP[c.kind] and (c.reads or c.hits or 0) > 0 end
local function not_kept(c) return not kept(c) end

return {
  name = "lru",
  order = "access",
  select = function(_, candidates, bytes_needed)
    local picked, freed = take(candidates, bytes_needed, kept)
    -- the kept kinds go only when nothing else frees enough
    return (take(candidates, bytes_needed, not_kept, picked, freed))
  end,
}
