-- The two-level backend: a size-limited LMDB cache (L1) in front of an authoritative store (L2).
-- The C core does storage and rules; this file decides what goes where, when to evict, and
-- what to signal. See docs/DESIGN.md §3 and the README.
local core = require("layer2.core")
local poll = require("layer2.poll")
local answers = require("layer2.answers")

local event = core.event
local backend = {}
local Backend = {}
Backend.__index = Backend

local STORE_METHODS = { "save_event", "query_events", "count_events", "delete_event", "import", "export", "nuke",
  "sync", "path", "close" }
local PAGE = 4096
-- read counts halve every this many counted reads (l1.history), so what was hot and is not any
-- more loses its weight; the admission bar stays within these bounds
local ADMIT_BAR_MIN, ADMIT_BAR_MAX = 2, 8
-- at most this many events in one L1 transaction of save_events
local L1_CHUNK_MAX = 500

local function is_ephemeral(kind) return kind >= 20000 and kind < 30000 end

-- at most this many known-missing ids are kept (per backend: per nginx worker); past it they start over
local MISSING_MAX = 20000

local function load_policy(p)
  if p == nil then p = "lru" end
  if type(p) == "string" then
    local ok, mod = pcall(require, "layer2.policy." .. p)
    if not ok then error("layer2: unknown eviction policy '" .. p .. "'", 3) end
    return mod
  end
  if type(p) ~= "table" or type(p.select) ~= "function" then
    error("layer2: a policy is a table with a select(self, candidates, bytes_needed) function", 3)
  end
  return p
end

-- An L2 is any object with the store methods (called with `:`).
local function check_store(l2)
  for _, m in ipairs(STORE_METHODS) do
    local ok, f = pcall(function() return l2[m] end)
    if not ok or type(f) ~= "function" then error("layer2: opts.l2 has no " .. m .. " method", 3) end
  end
  return l2
end

-- Calls an L2 method. A raised error, or an answer whose message starts with `error:`, is an L2
-- failure: nil and the message. Anything else is L2's answer, refusals included: true, results.
local function call_l2(self, method, ...)
  local ok, a, b, c = pcall(self.l2[method], self.l2, ...)
  if not ok then return nil, "error: L2 failed: " .. tostring(a) end
  if (a == nil or a == false) and (b == nil or (type(b) == "string" and b:match("^error:"))) then
    return nil, b or "error: L2 failed"
  end
  return true, a, b, c
end
Backend.call_l2 = call_l2

function backend.open(path, opts)
  if type(path) ~= "string" then error("layer2.open: a directory path expected", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("layer2.open: opts must be a table", 2) end
  local l1opts = opts.l1 or {}
  local limit = l1opts.size_limit
  local high, low = l1opts.high_water or 66, l1opts.low_water or 50
  if limit ~= nil and (type(limit) ~= "number" or limit < 256 * 1024) then
    error("layer2.open: l1.size_limit must be a number of bytes, at least 256 KiB", 2)
  end
  if not (type(high) == "number" and type(low) == "number" and low > 0 and low < high and high <= 100) then
    error("layer2.open: l1.low_water and l1.high_water are percents with 0 < low < high <= 100", 2)
  end
  local self = setmetatable({
    dir = path,
    limit = limit and math.floor(limit / PAGE) * PAGE,
    high_water = high,
    low_water = low,
    policy = load_policy(opts.policy),
    default_policy = require("layer2.policy.lru"),
    handlers = {},
    log = opts.log or function(msg) io.stderr:write("layer2: ", msg, "\n") end,
    max_limit = opts.max_limit or 500,
    changes_kept = l1opts.changes_kept or 1000,
    -- "stub" (the default): evicted events leave stubs that keep filter answers complete;
    -- "delete": they go at once and the horizon moves past them (better for id lookups)
    evict_mode = l1opts.evict or "stub",
    -- stubs keep filter answers complete but hold room that bodies could use: at most this share
    -- of L1's entries are stubs, the oldest going first
    stub_share = l1opts.stub_share or 0.25,
    hits = { l1 = 0, stubs = 0, l2 = 0, missing = 0, answers = 0 },
    admit_mode = l1opts.admit or "second",
    reads = { count = {}, n = 0 }, -- id -> recent reads (aged), see Backend:count_read
    reads_period = l1opts.history or 100000,
    -- ids L2 said it does not have: id -> until when (os.time) that answer stands
    missing = {},
    missing_n = 0,
    missing_ttl = l1opts.missing_ttl or 10,
    used = 0, -- L1's used bytes as last measured, plus what was written since
    l1_chunk = L1_CHUNK_MAX, -- events per L1 transaction of save_events (smaller when L1 filled)
  }, Backend)
  local err
  self.l1, err = core.lmdb.open(path .. "/layer1", { cache = true, map_size = self.limit, fixed_map = limit ~= nil,
    nosync = opts.nosync, max_limit = self.max_limit })
  if not self.l1 then return nil, err end
  if opts.l2 == nil then
    self.l2, err = core.lmdb.open(path .. "/layer2", { nosync = opts.nosync, max_limit = self.max_limit })
    if not self.l2 then
      self.l1:close()
      return nil, err
    end
    self.own_l2 = true
  elseif type(opts.l2) == "string" then
    -- a conninfo or postgres:// URI: the shared L2 of a cluster
    self.l2, err = core.postgres.open(opts.l2, { max_limit = self.max_limit })
    if not self.l2 then
      self.l1:close()
      return nil, err
    end
    self.own_l2 = true
  elseif opts.l2 ~= false then
    self.l2 = check_store(opts.l2)
  end
  if self.l2 and l1opts.answers ~= false then
    self.answers = answers.new(self.l1, { ttl = l1opts.answers_ttl, max_ids = l1opts.answers_max_ids })
  end
  self.poll_frequency = opts.poll_frequency or 0
  self.poll_overlap = opts.poll_overlap or 4
  if opts.notify and self.l2 and type(self.l2.listen) == "function" then
    local ok, lerr = call_l2(self, "listen")
    if not ok then self.log("cannot listen for L2's change signal: " .. tostring(lerr)) end
    self.notify = ok
  end
  if opts.on_event then self:on_event(opts.on_event) end
  -- the horizon: L1 holds an entry for every event at or after it that this backend has seen
  local h = self.l1:meta("horizon")
  if h then
    self.horizon = tonumber(h)
  else
    -- a new L1 in front of an L2 that already has events knows none of them
    self.horizon = 0
    if self.l2 then
      local ok, newest = call_l2(self, "query_events", { limit = 1 }, { max_limit = 1 })
      if ok and newest and newest[1] then self:raise_horizon(newest[1].created_at + 1) end
    end
    self.horizon = self.l1:meta_raise("horizon", self.horizon)
  end
  -- polling starts from what L2 holds now: L1 does not replay L2's history
  if self.l2 and type(self.l2.changes_since) == "function" and not self.l1:meta("poll_cursor") then
    local ok, st = call_l2(self, "stats")
    if ok and st and st.last_seq then self.l1:meta("poll_cursor", tostring(st.last_seq)) end
  end
  return self
end

-- The horizon lives in L1, shared by every process on it (each nginx worker has a backend): it is
-- raised there atomically and read back before L1 is asked to prove an answer. A raise means L1
-- lost events it held or never got some L2 has (not in L1's change feed), so remembered answers
-- go too.
function Backend:raise_horizon(h)
  if h > self.horizon then
    self.horizon = self.l1:meta_raise("horizon", h) or h
    if self.answers then self.answers:clear() end
  end
end

function Backend:sync_horizon()
  local h = tonumber(self.l1:meta("horizon"))
  if h and h ~= self.horizon then
    self.horizon = h
    if self.answers then self.answers:clear() end
  end
end

-- After L1 was emptied: the only time the horizon goes down.
function Backend:reset_horizon(h)
  self.horizon = h
  self.l1:meta("horizon", tostring(h))
  if self.answers then self.answers:clear() end
end

function Backend:path() return self.dir end

function Backend:on_event(fn)
  if type(fn) ~= "function" then error("layer2: on_event takes a function", 2) end
  self.handlers[#self.handlers + 1] = fn
end

function Backend:signal(ev, origin)
  if type(ev) == "string" and (self.missing_n > 0 or #self.handlers > 0) then ev = event.parse(ev) end
  if self.missing_n > 0 and type(ev) == "table" then self:forget_missing(ev.id) end
  if #self.handlers == 0 then return end
  for _, h in ipairs(self.handlers) do
    local ok, err = pcall(h, ev, origin)
    if not ok then self.log("an on_event handler failed: " .. tostring(err)) end
  end
end

-- ---- writes ----

-- Room for a write of about `bytes`: evicts before the map could fill. LMDB needs free pages
-- even to delete, so L1 must never be allowed to fill up: work below the high water mark.
-- Returns false when the write could not fit in L1 at all.
-- An event's size in L1, roughly for a table (encoding it only to measure would cost a hot path).
local function size_of(ev)
  if type(ev) == "string" then return #ev end
  local n = 400 + (type(ev.content) == "string" and #ev.content or 0)
  if type(ev.tags) == "table" then n = n + 80 * #ev.tags end
  return n
end

-- What a write of `bytes` in `n` events may take in L1: the bodies, their index keys and the
-- pages copied on write (each event of a transaction touches pages of several indexes).
local function room_needed(bytes, n)
  return bytes * 3 + 16384 + ((n or 1) - 1) * 6 * PAGE
end

function Backend:make_room_fits(bytes, n)
  return not self.limit or room_needed(bytes, n) <= self.limit * (100 - self.high_water) / 100
end

function Backend:make_room(bytes, n)
  if not self.limit then return true end
  if not self:make_room_fits(bytes, n) then return false end
  local need = room_needed(bytes, n)
  local high = self.limit * self.high_water / 100
  if self.used + need > high then
    self.used = self.l1:stats().used_bytes
    if self.used + need > high then self:gc(true) end
  end
  self.used = self.used + need
  return true
end

-- Saves into L1 (trusted: already verified), making room first.
function Backend:save_l1(ev, opts, bytes)
  if not self:make_room(bytes or size_of(ev)) then
    return false, "error: the event is too large for L1"
  end
  return self.l1:save_event(ev, opts)
end

function Backend:save_event(ev, opts)
  local kind
  if type(ev) == "table" then kind = ev.kind elseif type(ev) ~= "string" then
    error("bad argument #1 to 'save_event' (table or string expected, got " .. type(ev) .. ")", 2)
  end
  local ok, err = event.verify(ev)
  if not ok then return false, err end
  local parsed = type(ev) == "string" and (type(kind) ~= "number" or self.missing_n > 0) and event.parse(ev)
  if parsed then kind = parsed.kind end
  -- an event with this id exists now: L2's earlier "none" no longer stands
  if self.missing_n > 0 then self:forget_missing((parsed or ev).id) end
  if is_ephemeral(kind) then
    self:signal(parsed or ev, "local")
    return true
  end
  local trusted = { verify = false, now = opts and opts.now }
  if self.l2 then
    local l2ok, stored, msg = call_l2(self, "save_event", ev, trusted)
    if l2ok and not stored then return false, msg end -- L2's verdict: duplicate, blocked...
    if not l2ok then
      -- L2 is down: L1 decides, and keeps the event in its outbox until L2 has it
      self.log("L2 save failed, queued in the outbox: " .. tostring(stored))
      trusted.outbox = true
    end
  end
  local saved, msg = self:save_l1(ev, trusted)
  if not saved and msg and msg:match("^error:") then
    if trusted.outbox then return false, msg end -- neither level has it
    -- L2 has it; L1 cannot hold it: stop claiming completeness up to it
    self.log("L1 could not take an event: " .. msg)
    self:raise_horizon((type(ev) == "table" and ev or event.parse(ev)).created_at + 1)
    return true
  end
  if saved then
    self:signal(parsed or ev, "local")
  elseif self.l2 and not trusted.outbox then
    return true -- L2 stored it; L1 already had it or an entry that refuses it
  end
  return saved, msg
end

-- Saves a batch into L1 in as few transactions as L1's size limit allows; calls
-- done(k, verdict, err) for each event in order (verdict nil and err on a store failure). A
-- transaction copies every page it touches, and in a small L1 that can fill the map however
-- few bytes the events have: a chunk that finds L1 full is split after an eviction.
function Backend:save_l1_batch(evs, opts, done)
  local from = 1
  while from <= #evs do
    local part, bytes = {}, 0
    for i = from, math.min(#evs, from + self.l1_chunk - 1) do
      local b = size_of(evs[i])
      if #part > 0 and not self:make_room_fits(bytes + b, #part + 1) then break end
      part[#part + 1], bytes = evs[i], bytes + b
    end
    local res, err
    if self:make_room(bytes, #part) then
      res, err = self.l1:save_events(part, opts)
    else
      err = "error: the event is too large for L1"
    end
    if not res and #part > 1 and self.limit and err:find("full", 1, true) then
      self.l1_chunk = math.max(1, math.floor(#part / 2))
      self:gc(true)
    else
      if res and self.l1_chunk < L1_CHUNK_MAX then self.l1_chunk = self.l1_chunk + 1 end
      for k = 1, #part do done(from + k - 1, res and res[k], err) end
      from = from + #part
    end
  end
end

-- Saves a list of events (tables or wire JSON): each gets the verdict save_event would give it,
-- in order (true or the refusal's message), with one write transaction per level for the batch:
-- L2 verifies and decides, L1 takes what L2 accepted; when L2 fails, L1 decides and queues the
-- batch in its outbox.
function Backend:save_events(list, opts)
  if type(list) ~= "table" then
    error("bad argument #1 to 'save_events' (table expected, got " .. type(list) .. ")", 2)
  end
  local now = opts and opts.now
  local verdicts, pending, at, parsed = {}, {}, {}, {}
  for i, ev in ipairs(list) do
    local p, perr = ev, nil
    if type(ev) == "string" then p, perr = event.parse(ev)
    elseif type(ev) ~= "table" then p, perr = nil, "invalid: an event is a table or a JSON string, not a " .. type(ev) end
    if not p then
      verdicts[i] = perr
    elseif type(p.kind) == "number" and is_ephemeral(p.kind) then
      local ok, err = event.verify(ev)
      verdicts[i] = ok or err
      if ok then
        if self.missing_n > 0 then self:forget_missing(p.id) end
        self:signal(p, "local")
      end
    else
      pending[#pending + 1], at[#pending + 1], parsed[#pending + 1] = ev, i, p
    end
  end
  -- L2 first: its verdicts stand; `outbox` holds the positions (in pending) L1 must decide
  local accepted, outbox = {}, {}
  if self.l2 and #pending > 0 then
    if type(self.l2.save_events) == "function" then
      local ok, res = call_l2(self, "save_events", pending, { now = now })
      for k = 1, #pending do
        if not ok then outbox[#outbox + 1] = k
        elseif res[k] == true then accepted[#accepted + 1] = k
        else verdicts[at[k]] = res[k] end
      end
      if not ok then self.log("L2 save failed, queued in the outbox: " .. tostring(res)) end
    else
      local down
      for k, ev in ipairs(pending) do
        local vok, verr = event.verify(ev)
        if not vok then verdicts[at[k]] = verr
        elseif down then outbox[#outbox + 1] = k
        else
          local ok, stored, msg = call_l2(self, "save_event", ev, { verify = false, now = now })
          if not ok then
            down = true
            outbox[#outbox + 1] = k
            self.log("L2 save failed, queued in the outbox: " .. tostring(stored))
          elseif stored then accepted[#accepted + 1] = k
          else verdicts[at[k]] = msg end
        end
      end
    end
  elseif #pending > 0 then
    for k = 1, #pending do outbox[k] = k end -- L1 is the only level: it decides
  end
  for _, k in ipairs(accepted) do verdicts[at[k]] = true end
  if self.missing_n > 0 then
    for _, k in ipairs(accepted) do self:forget_missing(parsed[k].id) end
    for _, k in ipairs(outbox) do self:forget_missing(parsed[k].id) end
  end
  -- L1: trusted for what L2 accepted (L2 has it whatever L1 says)
  local group = {}
  for j, k in ipairs(accepted) do group[j] = pending[k] end
  local lost, lost_err, newest_lost = 0, nil, -1
  self:save_l1_batch(group, { verify = false, now = now }, function(j, verdict, err)
    local k = accepted[j]
    if verdict == true then
      self:signal(parsed[k], "local")
    elseif not verdict then
      lost, lost_err, newest_lost = lost + 1, err, math.max(newest_lost, parsed[k].created_at)
    end
  end)
  if lost > 0 then
    -- L2 has them, L1 cannot hold them: stop claiming completeness up to them
    self.log(("L1 could not take %d event(s): %s"):format(lost, tostring(lost_err)))
    self:raise_horizon(newest_lost + 1)
  end
  -- ...and deciding, with the outbox, when L2 failed or there is no L2
  group = {}
  for j, k in ipairs(outbox) do group[j] = pending[k] end
  local l1opts = { verify = true, now = now, outbox = self.l2 ~= nil and self.l2 ~= false }
  self:save_l1_batch(group, l1opts, function(j, verdict, err)
    local k = outbox[j]
    verdicts[at[k]] = verdict or err
    if verdict == true then self:signal(parsed[k], "local") end
  end)
  return verdicts
end

function Backend:delete_event(id, no_tombstone)
  if self.l2 then
    local ok, found, msg = call_l2(self, "delete_event", id, no_tombstone)
    if not ok then
      self.log("L2 delete failed, queued in the outbox: " .. tostring(found))
      return self.l1:delete_event(id, no_tombstone, { outbox = true })
    end
    self.l1:delete_event(id, no_tombstone)
    return found, msg
  end
  return self.l1:delete_event(id, no_tombstone)
end

-- Sends what the outbox holds to L2, in order; stops at the first L2 failure.
function Backend:drain()
  if not self.l2 then return 0 end
  local sent = 0
  while true do
    local items = self.l1:outbox(256)
    if not items or #items == 0 then return sent end
    for _, item in ipairs(items) do
      local ok, err
      if item.op == "save" then
        ok, err = call_l2(self, "save_event", item.event, { verify = false })
      elseif item.op == "delete" then
        ok, err = call_l2(self, "delete_event", item.id, not item.tombstone)
      else
        ok = true -- unreadable: nothing can be done with it
        self.log("dropping an unreadable outbox record " .. item.seq)
      end
      if not ok then
        self.log("the outbox waits for L2: " .. tostring(err))
        return sent
      end
      -- a duplicate means L2 already has it: done either way, exactly once
      self.l1:outbox_ack(item.seq)
      sent = sent + 1
    end
  end
end

-- ---- eviction ----

function Backend:choose(candidates, need)
  -- each candidate's recent reads (Backend:count_read), for the policy and the admission bar
  local count = self.reads.count
  for _, c in ipairs(candidates) do c.reads = count[c.id] or 0 end
  local ok, ids = pcall(self.policy.select, self.policy, candidates, need)
  if ok and type(ids) == "table" then
    -- the admission bar: what L2 returns must have been read about as often as what L1 lets go
    -- (the median of the victims' recent reads)
    local by_id, f = {}, {}
    for _, c in ipairs(candidates) do by_id[c.id] = c end
    for _, id in ipairs(ids) do
      if by_id[id] then f[#f + 1] = by_id[id].reads end
    end
    table.sort(f)
    self.admit_bar = math.min(ADMIT_BAR_MAX, math.max(ADMIT_BAR_MIN, f[math.ceil(#f * 0.5)] or ADMIT_BAR_MIN))
    return ids
  end
  self.log(("the eviction policy '%s' failed (%s); using lru"):format(tostring(self.policy.name),
    ok and "it returned no list" or tostring(ids)))
  return self.default_policy:select(candidates, need)
end

-- Runs `step(size)` until it reports done, in small transactions: copy-on-write needs free pages,
-- and a full cache has few. A step that fails is retried smaller; `step` returns the count it
-- handled (0: nothing left) or nil and a message.
local function in_small_steps(self, what, step)
  local size = 32
  while true do
    local n, err = step(size)
    if n == 0 then return end
    if not n then
      if size == 1 then
        self.log(what .. " failed: " .. tostring(err))
        return
      end
      size = math.max(1, math.floor(size / 4))
    end
  end
end

function Backend:evict(ids, mode)
  local evicted, freed, i = 0, 0, 1
  in_small_steps(self, "eviction", function(size)
    if i > #ids then return 0 end
    local chunk = {}
    for k = i, math.min(i + size - 1, #ids) do chunk[#chunk + 1] = ids[k] end
    local n, bytes = self.l1:evict(chunk, mode)
    if not n then return nil, bytes end
    evicted, freed, i = evicted + n, freed + bytes, i + #chunk
    return #chunk
  end)
  return evicted, freed
end

-- Removes up to `max` stubs, oldest first; moves the horizon past them.
function Backend:drop_stubs(max)
  local dropped = 0
  in_small_steps(self, "dropping stubs", function(size)
    if dropped >= max then return 0 end
    local n, horizon = self.l1:drop_stubs(math.min(size, max - dropped))
    if not n then return nil, horizon end
    dropped = dropped + n
    if n > 0 then self:raise_horizon(horizon) end
    return n
  end)
  return dropped
end

-- One eviction step: when L1 is past its high water mark (or `force`), evict what the policy
-- picks until it is under the low water mark (or has let go of its share, see `enough`); with an
-- L2 events become stubs, then stubs go, oldest first, and the horizon moves past them. Also
-- drains the outbox.
function Backend:gc(force)
  local report = { evicted = 0, dropped = 0, freed = 0 }
  if not force then report.sent = self:drain() end
  if not self.limit then return report end
  local used = self.l1:stats().used_bytes
  if used <= self.limit * self.high_water / 100 and not force then return report end
  local target = self.limit * self.low_water / 100
  local mode = self.l2 and self.evict_mode or "delete"
  -- L1's change feed serves live tailing, not history
  report.pruned = self.l1:prune_changes(self.changes_kept)
  local st = self.l1:stats()
  used = st.used_bytes
  -- LMDB frees a B-tree page only when it falls under a quarter full: the room evicted entries
  -- leave inside pages is reused by the next writes but does not show in used bytes. Chasing
  -- low water in pages alone would throw out half of L1 at once, so a pass also ends when it has
  -- evicted the share (high - low) / high of L1's events and used bytes are under the middle
  -- of the two marks.
  local enough = (st.events - st.stubs) * (self.high_water - self.low_water) / self.high_water
  local middle = self.limit * (self.high_water + self.low_water) / 200
  local function settled() return used <= target or (report.evicted >= enough and used <= middle) end
  for _ = 1, 64 do
    if settled() then break end
    local candidates = self.l1:candidates(4096, self.policy.order or "access")
    if not candidates or #candidates == 0 then break end
    -- what this round asks of the policy: the events still short of `enough` (at their mean
    -- size), then what still stands above the middle mark
    local sizes = 0
    for _, c in ipairs(candidates) do sizes = sizes + c.size end
    local need = report.evicted < enough and (enough - report.evicted) * sizes / #candidates or used - middle
    local chosen = self:choose(candidates, math.max(1, math.min(used - target, need)))
    local evicted, freed = self:evict(chosen, mode)
    report.evicted, report.freed = report.evicted + evicted, report.freed + freed
    if mode == "delete" and self.l2 then
      -- L1 no longer holds these: it is complete only past the newest of them
      local by_id, newest = {}, -1
      for _, c in ipairs(candidates) do by_id[c.id] = c.created_at end
      for _, id in ipairs(chosen) do newest = math.max(newest, by_id[id] or -1) end
      if newest >= 0 then self:raise_horizon(newest + 1) end
    end
    -- stubs beyond their share of L1's entries go, oldest first
    st = self.l1:stats()
    local excess = math.floor(st.stubs - self.stub_share * st.events)
    if excess > 0 and self.l2 then
      report.dropped = report.dropped + self:drop_stubs(excess)
      st = self.l1:stats()
    end
    used = st.used_bytes
    if evicted == 0 then break end
  end
  for _ = 1, 64 do
    if settled() or not self.l2 then break end
    local dropped = self:drop_stubs(256)
    if dropped == 0 then break end
    report.dropped = report.dropped + dropped
    used = self.l1:stats().used_bytes
  end
  if used > self.limit * self.high_water / 100 and self.l2 then
    -- nothing more can go and L1 is still full (a write could not even evict): L1 is a cache,
    -- L2 has everything; start it again past the newest event L2 holds
    self.log("L1 could not be brought under its high water mark; emptying it")
    self:reset_l1()
    used = self.l1:stats().used_bytes
  end
  self.used = used
  report.used = used
  return report
end

function Backend:reset_l1()
  local outbox = self.l1:outbox(100000) or {}
  if #outbox > 0 then
    self.log("L1 keeps its outbox of " .. #outbox .. " records: it cannot be emptied now")
    return
  end
  self.l1:nuke()
  local ok, newest = call_l2(self, "query_events", { limit = 1 }, { max_limit = 1 })
  self:reset_horizon(ok and newest and newest[1] and newest[1].created_at + 1 or 0)
end

-- ---- reads ----

-- a result of an L1 query: an event table, a JSON string, or a stub's id (64 hex characters)
local function as_event(v)
  if type(v) == "table" then return v end
  if #v == 64 and not v:find("[^0-9a-f]") then return nil end
  return event.parse(v)
end

local function newest_first(a, b)
  if a.created_at ~= b.created_at then return a.created_at > b.created_at end
  return a.id < b.id
end

-- Recent reads per id, the one frequency count both admission and eviction use: id lookups L1
-- answered, and every event fetched from L2. Every `reads_period` counted reads all counts halve
-- (TinyLFU's reset), so the counts follow what is hot now.
function Backend:count_read(id)
  local r = self.reads
  local n = (r.count[id] or 0) + 1
  r.count[id] = n
  r.n = r.n + 1
  if r.n >= self.reads_period then
    local halved = {}
    for k, v in pairs(r.count) do
      if v >= 2 then halved[k] = math.floor(v / 2) end
    end
    r.count, r.n = halved, r.n / 2
  end
  return n
end

-- Admission: an event fetched from L2 enters L1 (or a stub gets its body back) only when it has
-- been read about as often as what eviction lets go (at least twice), so one-off reads do not
-- push out what is read again and again. l1.admit = "always" turns it off.
function Backend:admit(id)
  local n = self:count_read(id)
  return self.admit_mode == "always" or n >= (self.admit_bar or ADMIT_BAR_MIN)
end

-- ---- known-missing ids (docs/DESIGN.md §3) ----
-- A lookup of ids L1 does not know goes to L2; when L2 has none of some of them, that answer
-- stands for l1.missing_ttl seconds (0: never kept), so a client asking again and again for an
-- event nobody has (a reply to a deleted note, an event on another relay) does not reach L2
-- each time. An id leaves the set when an event with it enters L1 through this backend (a save,
-- a poll, a fill); in a cluster another node's save is seen by the next poll.

-- The filters of a query as a list (nil for JSON, which is not looked into).
local function filter_list(filters)
  if type(filters) ~= "table" then return nil end
  if filters[1] == nil then return { filters } end
  for _, f in ipairs(filters) do
    if type(f) ~= "table" then return nil end
  end
  return filters
end

-- ids-only filters (ids, limit) are the lookups whose absent ids say the events do not exist
local function ids_only(f)
  if type(f.ids) ~= "table" then return false end
  for k in pairs(f) do
    if k ~= "ids" and k ~= "limit" then return false end
  end
  return not f.limit or (type(f.limit) == "number" and f.limit >= #f.ids)
end

-- the id of a result (an event, a JSON string or a stub's id); the stores' JSON starts with the
-- id, any other (a Lua L2's) is parsed, since its content may quote an id first
local function id_of(v)
  if type(v) == "table" then return v.id end
  if #v == 64 then return v end
  local id = v:match('^{"id":"(%x+)"')
  if id then return id end
  local ev = event.parse(v)
  return ev and ev.id
end

-- the ids in a result list, as a set
local function result_ids(res)
  local out = {}
  for _, v in ipairs(res) do
    local id = id_of(v)
    if id then out[id] = true end
  end
  return out
end

function Backend:forget_missing(id)
  if self.missing[id] then
    self.missing[id] = nil
    self.missing_n = self.missing_n - 1
  end
end

-- Are the incomplete filters of an L1 answer all lookups of ids L1 holds or L2 lately did not
-- have? Returns the number of known-missing ids then, else nil.
function Backend:answered_missing(list, incomplete, res)
  if not list or self.missing_n == 0 then return nil end
  local found, now, n = result_ids(res), os.time(), 0
  for _, i in ipairs(incomplete) do
    local f = list[i]
    if not (f and ids_only(f)) then return nil end
    for _, id in ipairs(f.ids) do
      if not found[id] then
        local until_t = self.missing[id]
        if not until_t or until_t < now then return nil end
        n = n + 1
      end
    end
  end
  return n
end

-- Remembers the ids L2 did not return for the incomplete ids-only filters.
function Backend:remember_missing(list, incomplete, res)
  if not list or self.missing_ttl <= 0 then return end
  local found, until_t = result_ids(res), os.time() + self.missing_ttl
  for _, i in ipairs(incomplete) do
    local f = list[i]
    if f and ids_only(f) then
      for _, id in ipairs(f.ids) do
        if not found[id] and type(id) == "string" then
          if self.missing_n >= MISSING_MAX then self.missing, self.missing_n = {}, 0 end
          if not self.missing[id] then self.missing_n = self.missing_n + 1 end
          self.missing[id] = until_t
        end
      end
    end
  end
end

-- Answers from a remembered L2 answer (layer2/answers.lua): the bodies L1 holds, stubs and the
-- events L1 let go of fetched from L2 by id (and offered back to L1). nil when an event of it is
-- gone (expired, deleted): the answer no longer stands.
function Backend:serve_answer(entry, json, now)
  local res, info = self.l1:query_events({ ids = entry.ids }, { json = json, max_limit = #entry.ids, now = now,
    info = true, horizon = 0 })
  if not res then return nil end
  local bodies = #res - #info.stubs
  local fetched = #info.stubs
  -- reads of the bodies L1 gave (stubs and the rest are counted when L2's copies are admitted)
  local at = 1
  for i, v in ipairs(res) do
    if info.stubs[at] == i then at = at + 1 else self:count_read(id_of(v)) end
  end
  if fetched > 0 then res = self:fill_stubs(res, info.stubs, json) end
  local value = {}
  for _, v in ipairs(res) do value[id_of(v)] = v end
  local gone = {}
  for _, id in ipairs(entry.ids) do
    if not value[id] then gone[#gone + 1] = id end
  end
  if #gone > 0 then
    local ok, got = call_l2(self, "query_events", { ids = gone }, { json = json, max_limit = #gone, now = now })
    if not ok or not got then return nil end
    for _, v in ipairs(got) do value[id_of(v)] = v end
    fetched = fetched + #got
    self:fill(got)
  end
  local out = {}
  for i, id in ipairs(entry.ids) do
    out[i] = value[id]
    if not out[i] then return nil end
  end
  return out, { l1 = bodies, stubs = fetched, l2 = 0 }
end

-- Fetches the bodies of stubs from L2 and puts them in place (and back into L1).
function Backend:fill_stubs(res, stubs, json)
  local ids = {}
  for i, pos in ipairs(stubs) do ids[i] = res[pos] end
  local ok, bodies = call_l2(self, "query_events", { ids = ids }, { max_limit = #ids })
  local by_id = {}
  if ok and bodies then
    local admitted = {}
    for _, ev in ipairs(bodies) do
      by_id[ev.id] = ev
      if self:admit(ev.id) then admitted[#admitted + 1] = ev end
    end
    self.l1:revive(admitted)
  end
  local out, filled = {}, 0
  local at = 1
  for i = 1, #res do
    if stubs[at] == i then
      at = at + 1
      local ev = by_id[res[i]]
      if ev then
        out[#out + 1] = json and event.encode(ev) or ev
        filled = filled + 1
      end
    else
      out[#out + 1] = res[i]
    end
  end
  return out, filled
end

-- Saves events L2 returned into L1 in one transaction, so the next read hits.
function Backend:fill(events)
  local lines, bytes = {}, 0
  for _, ev in ipairs(events) do
    local line = type(ev) == "string" and ev or event.encode(ev)
    local id = id_of(ev)
    if self.missing_n > 0 then self:forget_missing(id) end
    if self:admit(id) then
      lines[#lines + 1] = line
      bytes = bytes + #line
    end
  end
  if #lines == 0 or not self:make_room(bytes, #lines) then return end
  local i = 0
  local ok, err = self.l1:import(function()
    i = i + 1
    return lines[i]
  end, { verify = false, threads = 1, fill = true })
  if not ok then self.log("L1 could not keep what L2 returned: " .. tostring(err)) end
end

function Backend:query_events(filters, opts)
  opts = opts or {}
  if self.l2 then self:sync_horizon() end
  local json = opts.json
  local l1opts = { json = json, max_limit = opts.max_limit or self.max_limit, now = opts.now, info = true,
    horizon = self.l2 and self.horizon or 0 }
  local res, info = self.l1:query_events(filters, l1opts)
  if not res then return nil, info end
  local levels = { l1 = #res - #info.stubs, stubs = 0, l2 = 0 }
  if #info.incomplete == 0 and type(filters) == "table" and filters.ids then
    -- lookups L1 answers with a body (a stub's read is counted when its body comes: admit)
    local stub = {}
    for _, pos in ipairs(info.stubs) do stub[res[pos]] = true end
    for _, id in ipairs(filters.ids) do
      if not stub[id] then self:count_read(id) end
    end
  end
  if not self.l2 or opts.l1_only then
    if #info.stubs > 0 then
      local kept = {}
      local at = 1
      for i = 1, #res do
        if info.stubs[at] == i then at = at + 1 else kept[#kept + 1] = res[i] end
      end
      res = kept
    end
    self.hits.l1 = self.hits.l1 + levels.l1
    return res, levels
  end
  local flist = #info.incomplete > 0 and filter_list(filters)
  local missing = self:answered_missing(flist, info.incomplete, res)
  if #info.incomplete == 0 or missing then
    if #info.stubs > 0 then res, levels.stubs = self:fill_stubs(res, info.stubs, json) end
    self.hits.l1, self.hits.stubs = self.hits.l1 + levels.l1, self.hits.stubs + levels.stubs
    if missing then
      levels.missing = missing
      self.hits.missing = self.hits.missing + missing
    end
    return res, levels
  end
  -- a single filter L2 answered before, its answer untouched since: from L1 and by id
  local akey, acursor, single
  if self.answers and flist and #flist == 1 then
    single = flist[1]
    local limit = math.min(tonumber(single.limit) or l1opts.max_limit, l1opts.max_limit)
    akey = answers.key(single, limit, opts.now)
    if akey then self.answers:catch_up() end
    local entry = akey and self.answers:get(akey)
    if entry then
      local out, from = self:serve_answer(entry, json, opts.now)
      if out then
        self.hits.l1, self.hits.stubs = self.hits.l1 + from.l1, self.hits.stubs + from.stubs
        self.hits.answers = self.hits.answers + 1
        return out, from
      end
      self.answers:drop(akey)
    end
    acursor = self.answers.cursor
  end
  -- L1 cannot prove the answer: L2, the authority, answers
  local ok, res2, refusal = call_l2(self, "query_events", filters,
    { json = json, max_limit = l1opts.max_limit, now = opts.now })
  if ok and not res2 then return nil, refusal end
  if not ok then
    self.log("L2 query failed, answering from L1: " .. tostring(res2))
    if #info.stubs > 0 then res = self:fill_stubs(res, info.stubs, json) end
    levels.l2_error = res2
    return res, levels
  end
  local waiting = self.l1:outbox(1)
  if waiting and #waiting > 0 then
    -- events waiting for L2 are only in L1: merge them in (stubs are in L2's answer already)
    local seen, merged = {}, {}
    for _, list in ipairs({ res2, res }) do
      for _, v in ipairs(list) do
        local t = as_event(v)
        if t and not seen[t.id] then
          seen[t.id] = true
          merged[#merged + 1] = { t = t, v = v }
        end
      end
    end
    table.sort(merged, function(a, b) return newest_first(a.t, b.t) end)
    res2 = {}
    for i, m in ipairs(merged) do res2[i] = (json and type(m.v) ~= "string") and event.encode(m.t) or m.v end
  end
  self:remember_missing(flist, info.incomplete, res2)
  if akey then
    local list = {}
    for i, v in ipairs(res2) do list[i] = id_of(v) end
    self.answers:put(akey, single, list, acursor)
  end
  self:fill(res2)
  levels.l1, levels.l2 = 0, #res2
  self.hits.l2 = self.hits.l2 + #res2
  return res2, levels
end

function Backend:count_events(filters, opts)
  if self.l2 then
    local ok, n, refusal = call_l2(self, "count_events", filters, opts)
    if ok then return n, refusal end
    self.log("L2 count failed, counting L1: " .. tostring(n))
  end
  return self.l1:count_events(filters, opts)
end

-- ---- bulk, maintenance ----

-- Import goes to L2 (the original's choice); L1 fills on demand. The horizon moves past the
-- newest imported event, which L1 does not hold.
function Backend:import(source, opts)
  if not self.l2 then return self.l1:import(source, opts) end
  local lines, close
  if type(source) == "string" then
    local f, err = io.open(source, "r")
    if not f then return nil, "error: cannot open '" .. source .. "': " .. tostring(err) end
    lines, close = f:lines(), function() f:close() end
  elseif type(source) == "function" then
    lines = source
  else
    lines = source:lines()
  end
  local newest = -1
  local function tracked()
    local line = lines()
    if line then
      local t = tonumber(line:match('"created_at"%s*:%s*(%d+)'))
      if t and t > newest then newest = t end
    end
    return line
  end
  -- called directly: an error raised by the caller's own callbacks (Ctrl-C in a progress
  -- function) is theirs to see, not an L2 failure
  local ok, counts, err = pcall(self.l2.import, self.l2, tracked, opts)
  if close then close() end
  -- L1's change feed does not see an import: no remembered answer can be trusted after one
  if self.answers then self.answers:clear() end
  if newest >= 0 then self:raise_horizon(newest + 1) end
  if not ok then error(counts, 0) end
  return counts, err
end

function Backend:export(sink, pubkeys, opts)
  return (self.l2 or self.l1):export(sink, pubkeys, opts)
end

function Backend:nuke()
  if self.l2 then
    local ok, err = call_l2(self, "nuke")
    if not ok then return nil, err end
  end
  local ok, err = self.l1:nuke()
  if not ok then return nil, err end
  self:reset_horizon(0)
  return true
end

function Backend:sync()
  self:drain()
  if self.l2 then
    local ok, err = call_l2(self, "sync")
    if not ok then return nil, err end
  end
  return self.l1:sync()
end

-- One poll step: drains the outbox, then takes what other writers added to L2 into L1 (see
-- layer2/poll.lua), signalling each new event with origin "l2".
function Backend:poll(now)
  local report = { sent = self:drain(), received = 0, deleted = 0 }
  if self.l2 then poll.step(self, report, now) end
  return report
end

-- Waits up to `seconds` (poll_frequency, else 1) for L2's change signal when opts.notify asked
-- for it (LISTEN/NOTIFY on PostgreSQL), or just that long, then polls.
function Backend:poll_wait(seconds)
  seconds = seconds or (self.poll_frequency > 0 and self.poll_frequency or 1)
  if not (self.notify and call_l2(self, "wait", seconds)) then core.sleep(seconds) end
  return self:poll()
end

function Backend:stats()
  local l1 = self.l1:stats()
  local out = {
    l1 = l1,
    horizon = self.horizon,
    size_limit = self.limit,
    high_water = self.high_water,
    low_water = self.low_water,
    hits = { l1 = self.hits.l1, stubs = self.hits.stubs, l2 = self.hits.l2, missing = self.hits.missing,
      answers = self.hits.answers },
    outbox = l1.outbox,
    policy = self.policy.name,
  }
  local polled = tonumber(self.l1:meta("poll_at") or "")
  if polled then out.poll_lag = os.time() - polled end -- seconds since the last poll that reached L2
  if self.l2 and type(self.l2.stats) == "function" then
    local ok, st = call_l2(self, "stats")
    if ok and st then out.l2 = st end
  end
  return out
end

function Backend:check()
  local ok, problems = self.l1:check()
  if self.l2 and type(self.l2.check) == "function" then
    local ok2, p2 = self.l2:check()
    for _, p in ipairs(p2 or {}) do problems[#problems + 1] = "L2: " .. p end
    ok = ok and ok2
  end
  return ok, problems
end

function Backend:changes_since(cursor, max, opts)
  return self.l1:changes_since(cursor, max, opts)
end

function Backend:close()
  if self.closed then return end
  self.closed = true
  self.l1:close()
  if self.own_l2 then self.l2:close() end
end

return backend
