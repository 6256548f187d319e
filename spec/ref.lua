-- A plain-Lua reference of the nostr store rules and NIP-01 queries, written from the NIPs, not
-- from the C code: the brute-force oracle the stores are compared with.
local ref = {}
ref.__index = ref

local function replaceable(k) return k == 0 or k == 3 or (k >= 10000 and k < 20000) end
local function ephemeral(k) return k >= 20000 and k < 30000 end
local function addressable(k) return k >= 30000 and k < 40000 end
ref.replaceable, ref.ephemeral, ref.addressable = replaceable, ephemeral, addressable

local function d_of(ev)
  if not addressable(ev.kind) then return "" end
  for _, t in ipairs(ev.tags) do
    if t[1] == "d" and t[2] ~= nil then return t[2] end
  end
  return ""
end

function ref.expiration(ev)
  for _, t in ipairs(ev.tags) do
    if t[1] == "expiration" and t[2] ~= nil then
      local v = t[2]
      if #v >= 1 and #v <= 15 and v:match("^%d+$") then return tonumber(v) end
      return nil
    end
  end
end

function ref.new()
  return setmetatable({ byid = {}, tomb = {}, atomb = {}, heads = {} }, ref)
end

function ref:remove(ev)
  self.byid[ev.id] = nil
  if replaceable(ev.kind) or addressable(ev.kind) then
    local addr = ev.pubkey .. ":" .. ev.kind .. ":" .. d_of(ev)
    if self.heads[addr] == ev then self.heads[addr] = nil end
  end
end

-- returns true, or false and the NIP-01 prefix of the refusal
-- an `a` tag's address: kind, pubkey, d of a replaceable or addressable kind, or nil
local function address(t)
  local k, pk, d = t[2]:match("^(%d+):(%x+):(.*)$")
  k = tonumber(k)
  if not (k and #t[2]:match("^(%d+)") <= 5 and #pk == 64 and pk:match("^[0-9a-f]+$")) then return nil end
  if not (replaceable(k) or addressable(k)) then return nil end
  return k, pk, d
end

-- NIP-09, strictly: a deletion naming another pubkey's address, or whose `e` tags name only
-- stored events of other authors, is refused
local function foreign_deletion(self, ev)
  local named, others = 0, 0
  for _, t in ipairs(ev.tags) do
    if t[1] == "a" and t[2] then
      local k, pk = address(t)
      if k and pk ~= ev.pubkey then return "address" end
    elseif t[1] == "e" and t[2] and #t[2] == 64 and t[2]:match("^[0-9a-f]+$") then
      named = named + 1
      local target = self.byid[t[2]]
      if target and target.pubkey ~= ev.pubkey then others = others + 1 end
    end
  end
  return named > 0 and others == named and "events" or nil
end

-- (future_limit: seconds ahead of now an event may be dated, as the two-level store refuses; nil: any)
function ref:save(ev, now, future_limit)
  if future_limit and ev.created_at > now + future_limit then return false, "invalid" end
  if ephemeral(ev.kind) then return true end
  if ev.kind == 5 and foreign_deletion(self, ev) == "address" then return false, "invalid" end
  local exp = ref.expiration(ev)
  if exp and exp <= now then return false, "invalid" end
  if self.byid[ev.id] then return false, "duplicate" end
  if ev.kind ~= 5 and self.tomb[ev.id .. ev.pubkey] then return false, "blocked" end
  local addr
  if replaceable(ev.kind) or addressable(ev.kind) then
    addr = ev.pubkey .. ":" .. ev.kind .. ":" .. d_of(ev)
    if self.atomb[addr] and ev.created_at <= self.atomb[addr] then return false, "blocked" end
    local head = self.heads[addr]
    if head then
      if head.created_at > ev.created_at or (head.created_at == ev.created_at and head.id < ev.id) then
        return false, "duplicate"
      end
      self:remove(head)
    end
  end
  if ev.kind == 5 and foreign_deletion(self, ev) then return false, "invalid" end
  self.byid[ev.id] = ev
  if addr then self.heads[addr] = ev end
  if ev.kind == 5 then
    for _, t in ipairs(ev.tags) do
      if t[1] == "e" and t[2] and #t[2] == 64 and t[2]:match("^[0-9a-f]+$") then
        local target = self.byid[t[2]]
        if target and target.pubkey == ev.pubkey and target.kind ~= 5 then self:remove(target) end
        self.tomb[t[2] .. ev.pubkey] = true
      elseif t[1] == "a" and t[2] then
        local k, pk, d = address(t)
        if k and pk == ev.pubkey then
          local a = pk .. ":" .. k .. ":" .. (addressable(k) and d or "")
          if not self.atomb[a] or self.atomb[a] < ev.created_at then self.atomb[a] = ev.created_at end
          local head = self.heads[a]
          if head and head.created_at <= ev.created_at then self:remove(head) end
        end
      end
    end
  end
  return true
end

local function set_of(list)
  if not list then return nil end
  local set = {}
  for _, v in ipairs(list) do set[v] = true end
  return set
end

-- a filter as sets, for matching many events against it
function ref.prepare(f)
  local p = { ids = set_of(f.ids), authors = set_of(f.authors), kinds = set_of(f.kinds), since = f.since,
    ["until"] = f["until"], tags = {} }
  for key, values in pairs(f) do
    if type(key) == "string" and key:sub(1, 1) == "#" then p.tags[key:sub(2)] = set_of(values) end
  end
  return p
end

function ref.match(f, ev)
  local p = f.tags and f or ref.prepare(f)
  if p.ids and not p.ids[ev.id] then return false end
  if p.authors and not p.authors[ev.pubkey] then return false end
  if p.kinds and not p.kinds[ev.kind] then return false end
  if p.since and ev.created_at < p.since then return false end
  if p["until"] and ev.created_at > p["until"] then return false end
  for letter, values in pairs(p.tags) do
    local hit = false
    for _, tag in ipairs(ev.tags) do
      if tag[1] == letter and tag[2] ~= nil and values[tag[2]] then
        hit = true
        break
      end
    end
    if not hit then return false end
  end
  return true
end

local function newest_first(a, b)
  if a.created_at ~= b.created_at then return a.created_at > b.created_at end
  return a.id < b.id
end

-- the ids a REQ with these filters returns
function ref:query(filters, now, max_limit)
  max_limit = max_limit or 500
  local seen, out = {}, {}
  for _, f in ipairs(filters) do
    local matches, p = {}, ref.prepare(f)
    for _, ev in pairs(self.byid) do
      if ref.match(p, ev) then
        local exp = ref.expiration(ev)
        if not (exp and exp <= now) then matches[#matches + 1] = ev end
      end
    end
    table.sort(matches, newest_first)
    local limit = math.min(f.limit or max_limit, max_limit)
    for i = 1, math.min(limit, #matches) do
      if not seen[matches[i].id] then
        seen[matches[i].id] = true
        out[#out + 1] = matches[i]
      end
    end
  end
  table.sort(out, newest_first)
  local ids = {}
  for i, ev in ipairs(out) do ids[i] = ev.id end
  return ids
end

function ref:count()
  local n = 0
  for _ in pairs(self.byid) do n = n + 1 end
  return n
end

return ref
