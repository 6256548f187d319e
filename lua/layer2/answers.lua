-- Remembered filter answers: what L2 answered for a filter L1 could not prove complete, kept as
-- the list of ids, so that the next ask of the same filter is answered from L1 (the bodies L1
-- holds, the others fetched from L2 by id) instead of a filter query on L2.
--
-- An answer stays true until an event that may match the filter enters L1 or one of its events
-- leaves: L1 sees every save, replacement and deletion, local or polled from L2, in its change
-- feed, and `catch_up` reads that feed (from a cursor, once for all answers) and drops the
-- answers a change may touch. The feed is shared by every process on L1, so an nginx worker's
-- answers see the other workers' saves. When the feed was pruned past the cursor, everything
-- goes. A TTL bounds what a writer L1 never hears of (an L2 without polling) could leave stale.
local answers = {}
local Answers = {}
Answers.__index = Answers

local FEED_PAGE = 1000

function answers.new(l1, opts)
  local st = l1:stats()
  return setmetatable({
    l1 = l1,
    cursor = st.last_seq,
    ttl = opts.ttl or 60,
    max_ids = opts.max_ids or 100000, -- ids kept over all answers (per backend: per nginx worker)
    entries = {}, -- key -> {ids =, filter =, until_t =}
    by_author = {}, -- pubkey -> {key = true}: answers of filters naming authors
    by_kind = {}, -- kind -> {key = true}: of filters naming kinds, not authors
    unbound = {}, -- key -> true: the others
    nids = 0,
  }, Answers)
end

local function sorted_list(t)
  local out = {}
  for i, v in ipairs(t) do out[i] = type(v) == "string" and ("%q"):format(v) or tostring(v) end
  table.sort(out)
  return table.concat(out, ",")
end

-- the index an answer is found under: a save may touch the answers of its author, of its kind,
-- and those of filters naming neither
local function index_of(self, filter)
  if filter.authors then return self.by_author, filter.authors end
  if filter.kinds then return self.by_kind, filter.kinds end
  return nil
end

-- A canonical key for a single filter with its effective limit and `now`, or nil when it is not
-- one to remember (an id lookup, a search, JSON, anything but the plain fields).
function answers.key(filter, limit, now)
  if type(filter) ~= "table" or filter.ids ~= nil or filter.search ~= nil then return nil end
  local parts = {}
  for k, v in pairs(filter) do
    if k == "kinds" or k == "authors" or (type(k) == "string" and #k == 2 and k:sub(1, 1) == "#") then
      if type(v) ~= "table" or #v == 0 then return nil end
      for _, x in ipairs(v) do
        if type(x) ~= "string" and type(x) ~= "number" then return nil end
      end
      parts[#parts + 1] = k .. "=" .. sorted_list(v)
    elseif k == "since" or k == "until" then
      if type(v) ~= "number" then return nil end
      parts[#parts + 1] = k .. "=" .. tostring(v)
    elseif k ~= "limit" then
      return nil
    end
  end
  table.sort(parts)
  return table.concat(parts, ";") .. ";limit=" .. tostring(limit) .. ";now=" .. tostring(now or "")
end

local function has(list, x)
  for _, v in ipairs(list) do
    if v == x then return true end
  end
  return false
end

-- May `ev` belong to the answer of `f`? (false only when it surely does not)
local function may_match(f, ev)
  if f.kinds and not has(f.kinds, ev.kind) then return false end
  if f.authors and not has(f.authors, ev.pubkey) then return false end
  if f.since and ev.created_at < f.since then return false end
  if f["until"] and ev.created_at > f["until"] then return false end
  for k, vals in pairs(f) do
    if type(k) == "string" and #k == 2 and k:sub(1, 1) == "#" then
      local found = false
      for _, t in ipairs(ev.tags or {}) do
        if t[1] == k:sub(2) and has(vals, t[2]) then found = true end
      end
      if not found then return false end
    end
  end
  return true
end

function Answers:drop(key)
  local e = self.entries[key]
  if not e then return end
  self.entries[key] = nil
  self.unbound[key] = nil
  local index, values = index_of(self, e.filter)
  for _, v in ipairs(values or {}) do
    local set = index[v]
    if set then
      set[key] = nil
      if next(set) == nil then index[v] = nil end
    end
  end
  self.nids = self.nids - #e.ids
end

function Answers:clear()
  self.entries, self.by_author, self.by_kind, self.unbound, self.nids = {}, {}, {}, {}, 0
end

-- Drops the answers a change in L1's feed may touch: a save of an event that may match. (An
-- event that leaves, deleted or replaced, is seen when the answer is served: it is gone from L1
-- and L2 then, and the answer with it.)
function Answers:apply(ch)
  local ev = ch.event
  if ch.op ~= "saved" then return end
  if type(ev) ~= "table" then
    self:clear() -- a save whose event is gone already: which answers it touched is unknown
    return
  end
  for _, set in ipairs({ self.by_author[ev.pubkey] or {}, self.by_kind[ev.kind] or {}, self.unbound }) do
    local keys = {}
    for key in pairs(set) do keys[#keys + 1] = key end
    for _, key in ipairs(keys) do
      local e = self.entries[key]
      if e and may_match(e.filter, ev) then self:drop(key) end
    end
  end
end

-- Reads L1's change feed since the last call and drops what it touches.
function Answers:catch_up()
  while true do
    local changes, cursor = self.l1:changes_since(self.cursor, FEED_PAGE)
    if not changes then
      self:clear()
      return
    end
    if changes[1] and changes[1].seq > self.cursor + 1 then
      self:clear() -- pruned past the cursor: changes were missed
    end
    for _, ch in ipairs(changes) do self:apply(ch) end
    self.cursor = cursor or self.cursor
    if #changes < FEED_PAGE then return end
  end
end

function Answers:get(key)
  local e = self.entries[key]
  if e and e.until_t < os.time() then
    self:drop(key)
    return nil
  end
  return e
end

local function copy_filter(f)
  local out = {}
  for k, v in pairs(f) do
    if type(v) == "table" then
      local list = {}
      for i, x in ipairs(v) do list[i] = x end
      v = list
    end
    out[k] = v
  end
  return out
end

-- Remembers L2's answer (ids, newest first) for `filter` under `key`; `cursor` is where
-- catch_up stood before L2 was asked: if it moved since (another coroutine of this worker read
-- the feed while L2 answered), changes this answer never saw went by, so it is not kept.
function Answers:put(key, filter, ids, cursor)
  if cursor ~= self.cursor or #ids > self.max_ids then return end
  self:drop(key)
  if self.nids + #ids > self.max_ids then self:clear() end
  filter = copy_filter(filter)
  local e = { ids = ids, filter = filter, until_t = os.time() + self.ttl }
  self.entries[key] = e
  local index, values = index_of(self, filter)
  if index then
    for _, v in ipairs(values) do
      index[v] = index[v] or {}
      index[v][key] = true
    end
  else
    self.unbound[key] = true
  end
  self.nids = self.nids + #ids
end

return answers
