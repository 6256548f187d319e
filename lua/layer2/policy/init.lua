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

-- The admission bar after a policy chose `ids` among `candidates`: what L2 returns enters L1 only
-- when it has been read about as often as what L1 lets go (the median of the chosen ones' recent
-- reads), within ADMIT_BAR_MIN and ADMIT_BAR_MAX.
policy.ADMIT_BAR_MIN, policy.ADMIT_BAR_MAX = 2, 8

function policy.admit_bar(candidates, ids)
  local by_id, reads = {}, {}
  for _, c in ipairs(candidates) do by_id[c.id] = c end
  for _, id in ipairs(ids) do
    if by_id[id] then reads[#reads + 1] = by_id[id].reads end
  end
  table.sort(reads)
  local median = reads[math.ceil(#reads * 0.5)] or policy.ADMIT_BAR_MIN
  return math.min(policy.ADMIT_BAR_MAX, math.max(policy.ADMIT_BAR_MIN, median))
end

return policy
