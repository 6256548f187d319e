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

-- A policy file: the path of a Lua file that returns a table (an eviction policy's select, a
-- relay's hooks: each part is optional to the file, required by what uses it). Raises, naming
-- the file, when it cannot be loaded or returns no table; level is error's.
function policy.load_file(path, level)
  local chunk, err = loadfile(path)
  local ok, t = chunk ~= nil, err
  if chunk then ok, t = pcall(chunk) end
  if not ok then error(("layer2: the policy file '%s' cannot be loaded: %s"):format(path, tostring(t)), level + 1) end
  if type(t) ~= "table" then error(("layer2: the policy file '%s' returns no table"):format(path), level + 1) end
  return t
end

-- Whether a string names a policy file (it has a "/" or ends in ".lua"), not a shipped policy.
function policy.is_file(p)
  return type(p) == "string" and (p:find("/", 1, true) ~= nil or p:match("%.lua$") ~= nil)
end

return policy
