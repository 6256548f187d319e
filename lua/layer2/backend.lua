-- The two-level store's Lua side. `layer2.open` returns a C userdata (csrc/lua_backend.c over
-- csrc/backend.c): writes, reads, eviction, the outbox and polling are C. What is still Lua
-- completes its class here: options, the policy's call (policies are Lua by design), on_event
-- handlers, remembered answers and the thin maintenance methods. Fields the Lua side keeps
-- (policy, handlers, answers...) live in the handle's state table, where db.x looks first. See
-- docs/DESIGN.md §3.
local core = require("layer2.core")
local answers = require("layer2.answers")

local event = core.event
local private = core.backend_private
local backend = {}
local Backend = private.methods

local STORE_METHODS = { "save_event", "query_events", "count_events", "delete_event", "import", "export", "nuke",
  "sync", "path", "close" }
local PAGE = 4096
-- the admission bar stays within these bounds
local ADMIT_BAR_MIN, ADMIT_BAR_MAX = 2, 8

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

-- what the C core asks of this side, each called with the handle
local hooks_query -- the reads L1 cannot prove alone (below)

local function hooks()
  return {
    query = function(db, filters, opts) return hooks_query(db, filters, opts) end,
    gc = function(db, full) db:gc(full and "full" or true) end,
    choose = function(db, candidates, need) return db:choose(candidates, need) end,
    log = function(db, msg) db.log(msg) end,
  }
end

-- Opens the two stores; returns l1, l2, own_l2 or nil, err.
local function open_stores(path, opts, limit, max_limit)
  local l1, err = core.lmdb.open(path .. "/layer1", { cache = true, map_size = limit, fixed_map = limit ~= nil,
    nosync = opts.nosync, max_limit = max_limit })
  if not l1 then return nil, err end
  local l2
  if opts.l2 == nil then
    l2, err = core.lmdb.open(path .. "/layer2", { nosync = opts.nosync, max_limit = max_limit })
  elseif type(opts.l2) == "string" then
    -- a conninfo or postgres:// URI: the shared L2 of a cluster
    l2, err = core.postgres.open(opts.l2, { max_limit = max_limit })
  else
    return l1, opts.l2 ~= false and check_store(opts.l2) or nil, false
  end
  if not l2 then
    l1:close()
    return nil, err
  end
  return l1, l2, true
end

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
  limit = limit and math.floor(limit / PAGE) * PAGE
  local st = {
    limit = limit,
    high_water = high,
    low_water = low,
    policy = load_policy(opts.policy),
    default_policy = require("layer2.policy.lru"),
    handlers = {},
    hooks = hooks(),
    log = opts.log or function(msg) io.stderr:write("layer2: ", msg, "\n") end,
    max_limit = opts.max_limit or 500,
  }
  local l1, l2, own_l2 = open_stores(path, opts, limit, st.max_limit)
  if not l1 then return nil, l2 end
  local self, err = private.new(path, l1, l2, { size_limit = limit, high_water = high, max_limit = st.max_limit,
    low_water = low, history = l1opts.history, own_l2 = own_l2, admit_always = l1opts.admit == "always",
    missing_ttl = l1opts.missing_ttl, evict_delete = l1opts.evict == "delete", stub_share = l1opts.stub_share,
    changes_kept = l1opts.changes_kept, by_created = st.policy.order == "created_at",
    poll_frequency = opts.poll_frequency, poll_overlap = opts.poll_overlap }, st.hooks, st)
  if not self then
    l1:close()
    if own_l2 then l2:close() end
    return nil, err
  end
  st.own_l2 = own_l2
  if l2 and l1opts.answers ~= false then
    st.answers = answers.new(l1, { ttl = l1opts.answers_ttl, max_ids = l1opts.answers_max_ids })
  end
  st.poll_frequency = opts.poll_frequency or 0
  st.poll_overlap = opts.poll_overlap or 4
  if opts.notify and l2 and type(l2.listen) == "function" then
    local ok, lerr = call_l2(self, "listen")
    if not ok then st.log("cannot listen for L2's change signal: " .. tostring(lerr)) end
    st.notify = ok
  end
  if opts.on_event then self:on_event(opts.on_event) end
  -- the horizon: L1 holds an entry for every event at or after it that this backend has seen
  local h = l1:meta("horizon")
  if h then
    st.horizon = tonumber(h)
  else
    -- a new L1 in front of an L2 that already has events knows none of them
    st.horizon = 0
    if l2 then
      local ok, newest = call_l2(self, "query_events", { limit = 1 }, { max_limit = 1 })
      if ok and newest and newest[1] then self:raise_horizon(newest[1].created_at + 1) end
    end
    st.horizon = l1:meta_raise("horizon", st.horizon)
  end
  -- polling starts from what L2 holds now: L1 does not replay L2's history
  if l2 and type(l2.changes_since) == "function" and not l1:meta("poll_cursor") then
    local ok, stats = call_l2(self, "stats")
    if ok and stats and stats.last_seq then l1:meta("poll_cursor", tostring(stats.last_seq)) end
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

function Backend:on_event(fn)
  if type(fn) ~= "function" then error("layer2: on_event takes a function", 2) end
  self.handlers[#self.handlers + 1] = fn
  -- the C core makes an event table for accepted events only when a handler wants them
  self.hooks.accepted = function(db, ev, origin) db:signal(ev, origin) end
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

function Backend:signal(ev, origin)
  local id = id_of(ev)
  if id then private.forget_missing(self, id) end -- it exists now: L2's "none" no longer stands
  if #self.handlers == 0 then return end
  if type(ev) == "string" then ev = event.parse(ev) end
  for _, h in ipairs(self.handlers) do
    local ok, err = pcall(h, ev, origin)
    if not ok then self.log("an on_event handler failed: " .. tostring(err)) end
  end
end

-- ---- eviction ----

-- The policy's pick among the candidates (coldest first, each with its recent reads, shared by
-- every process on L1); called by the C core's eviction. A failing policy is reported and lru
-- picks instead.
function Backend:choose(candidates, need)
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
    private.admit_bar(self, math.min(ADMIT_BAR_MAX, math.max(ADMIT_BAR_MIN, f[math.ceil(#f * 0.5)] or ADMIT_BAR_MIN)))
    return ids
  end
  self.log(("the eviction policy '%s' failed (%s); using lru"):format(tostring(self.policy.name),
    ok and "it returned no list" or tostring(ids)))
  return self.default_policy:select(candidates, need)
end

-- ---- reads (the C core; remembered answers are still this side's) ----

-- The single filter of a query that may have a remembered answer, with its key, or nil.
local function rememberable(self, filters, opts)
  if not self.answers or opts.l1_only or type(filters) ~= "table" then return nil end
  local single = filters
  if filters[1] ~= nil then
    if #filters ~= 1 or type(filters[1]) ~= "table" then return nil end
    single = filters[1]
  end
  local max_limit = opts.max_limit or self.max_limit
  local key = answers.key(single, math.min(tonumber(single.limit) or max_limit, max_limit), opts.now)
  return key and single, key
end

-- Answers from a remembered L2 answer (layer2/answers.lua): its events by id, from L1 or, for
-- those L1 let go of, from L2; a query of those ids returns them in the answer's own order
-- (newest first, ties by id). nil when an event of it is gone (expired, deleted): the answer no
-- longer stands.
function Backend:serve_answer(entry, json, now)
  local res, levels = private.query(self, { ids = entry.ids }, { json = json, max_limit = #entry.ids, now = now })
  if not res or levels.l2_error or #res ~= #entry.ids then return nil end
  return res, { l1 = levels.l1, stubs = levels.stubs + levels.l2, l2 = 0 }
end

-- What L1 could not prove alone (the C query_events asked it first): a remembered answer, else
-- the C core's whole read (L1 with stubs' bodies and known-missing ids, else L2).
local function query_rest(self, filters, opts)
  opts = opts or {}
  self:sync_horizon()
  -- a single filter L2 answered before, its answer untouched since: from L1 and by id
  local single, key = rememberable(self, filters, opts)
  local cursor
  if key then
    self.answers:catch_up()
    local entry = self.answers:get(key)
    if entry then
      local out, from = self:serve_answer(entry, opts.json, opts.now)
      if out then
        private.hit(self, "answers", 1)
        return out, from
      end
      self.answers:drop(key)
    end
    cursor = self.answers.cursor
  end
  local res, levels, asked_l2 = private.query(self, filters, opts)
  if key and res and asked_l2 and not levels.l2_error then
    local list = {}
    for i, v in ipairs(res) do list[i] = id_of(v) end
    self.answers:put(key, single, list, cursor)
  end
  return res, levels
end
hooks_query = query_rest

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
  private.forget_all(self) -- read counts and known-missing ids were about events that are gone
  return true
end

function Backend:sync()
  private.drain(self)
  if self.l2 then
    local ok, err = call_l2(self, "sync")
    if not ok then return nil, err end
  end
  return self.l1:sync()
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
    horizon = tonumber(self.l1:meta("horizon")) or 0, -- L1's, whoever raised it
    size_limit = self.limit,
    high_water = self.high_water,
    low_water = self.low_water,
    hits = private.hits(self),
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


return backend
