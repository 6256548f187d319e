-- What the shipped eviction policies share. A policy is a table with
-- select(self, candidates, bytes_needed) returning the ids to evict; `order` says how the
-- candidates arrive ("access": least recently read first; "created_at": oldest first).
local policy = {}

-- The ids of candidates, in the order given, until bytes_needed is freed; `skip(c)` keeps one.
function policy.take(candidates, bytes_needed, skip, picked, freed)
  picked, freed = picked or {}, freed or 0
  for _, c in ipairs(candidates) do
    if freed >= bytes_needed then break end
    if not (skip and skip(c)) then
      picked[#picked + 1] = c.id
      freed = freed + c.size
    end
  end
  return picked, freed
end

return policy
