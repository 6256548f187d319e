-- The two-level store's Lua side. `layer2.open` returns a C userdata (csrc/lua_backend.c over
-- csrc/backend*.c), one class whose store methods are C. This file opens it, with its options, and
-- completes the class with what the design keeps in Lua: the eviction policy's call (policies are
-- Lua), which the C core makes through the hooks table, the polling wait, and the reads of a
-- delegating handle. Fields the Lua side keeps (policy, log, l1, l2) live in the handle's state
-- table, where db.x looks after the methods. See docs/DESIGN.md §3.
local core = require("layer2.core")
local policies = require("layer2.policy")

local private = core.backend_private
-- the options' defaults, from the C core (the one place they are written)
local DEFAULTS = private.defaults
local backend = {}
local Backend = private.methods
local Delegating = private.delegating

-- the options layer2.open knows (any other name raises: a misspelling is never silently a default)
backend.OPTIONS = { "l1", "l2", "policy", "log", "nosync", "future_limit", "max_limit", "poll_frequency",
  "poll_overlap", "notify", "on_event", "on_removed", "delegate" }
local L1_OPTIONS = { "size_limit", "high_water", "low_water", "stub_share", "history", "admit", "missing_ttl",
  "answers", "answers_ttl", "answers_max_ids", "evict", "changes_kept", "sync" }

local STORE_METHODS = { "save_event", "query_events", "count_events", "delete_event", "import", "export", "nuke",
  "sync", "path", "close" }
local PAGE = 4096

-- A policy: a table, the name of one of layer2's (lru, lfu, oldest), or the path of a Lua file
-- that returns one (a string with a "/" or ending in ".lua"): a path crosses where a table cannot
-- (into nginx's thread pool, whose Lua VMs load the same file), so every VM runs the same policy.
local function load_policy(p)
  if p == nil then p = "lru" end
  if policies.is_file(p) then
    local mod = policies.load_file(p, 3)
    if type(mod.select) ~= "function" then
      error(("layer2: the policy file '%s' returns no policy (a table with a select function)"):format(p), 3)
    end
    return mod
  end
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

-- what the C core asks of this side, each called with the handle (the eviction passes themselves
-- the core starts on its own; db.observe_gc(report, full), when set, hears of each)
local function hooks()
  return {
    choose = function(db, candidates, need) return db:choose(candidates, need) end,
    log = function(db, msg) db.log(msg) end,
  }
end

-- Opens the two stores; returns l1, l2, own_l2 or nil, err.
local function open_stores(path, opts, limit, max_limit)
  -- a bad L2 object is the caller's mistake: said before anything is opened
  local given = type(opts.l2) ~= "string" and opts.l2 ~= nil and opts.l2 ~= false and check_store(opts.l2)
  -- L1 at its place in a feed L2 keeps is rebuilt from that feed after any loss (docs/DESIGN.md
  -- §3): it needs no durability of its own then, only integrity (l1.sync)
  local sync = (opts.l1 or {}).sync or ((opts.l2 == nil or type(opts.l2) == "string") and "data" or "full")
  if sync ~= "full" and sync ~= "data" and sync ~= "none" then
    error('layer2.open: l1.sync is "full", "data" or "none"', 3)
  end
  local l1, err = core.lmdb.open(path .. "/layer1", { cache = true, map_size = limit, fixed_map = limit ~= nil,
    nosync = opts.nosync or sync == "none", nometasync = sync == "data", max_limit = max_limit })
  if not l1 then return nil, err end
  local l2
  if opts.l2 == nil then
    l2, err = core.lmdb.open(path .. "/layer2", { nosync = opts.nosync, max_limit = max_limit })
  elseif type(opts.l2) == "string" then
    -- a conninfo or postgres:// URI: the shared L2 of a cluster
    l2, err = core.postgres.open(opts.l2, { max_limit = max_limit })
  else
    return l1, given or nil, false
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
  if opts.l1 ~= nil and type(opts.l1) ~= "table" then error("layer2.open: l1 must be a table of options", 2) end
  local unknown = core.unknown_option(opts, "layer2.open", backend.OPTIONS)
    or core.unknown_option(opts.l1, "layer2.open: l1", L1_OPTIONS)
  if unknown then error(unknown, 2) end
  if opts.delegate ~= nil and type(opts.delegate) ~= "function" then
    error("layer2.open: delegate must be a function(method, ...)", 2)
  end
  local limit = l1opts.size_limit
  local high, low = l1opts.high_water or DEFAULTS.high_water, l1opts.low_water or DEFAULTS.low_water
  if limit ~= nil and (type(limit) ~= "number" or limit < 256 * 1024) then
    error("layer2.open: l1.size_limit must be a number of bytes, at least 256 KiB", 2)
  end
  if not (type(high) == "number" and type(low) == "number" and low > 0 and low < high and high <= 100) then
    error("layer2.open: l1.low_water and l1.high_water are percents with 0 < low < high <= 100", 2)
  end
  if l1opts.admit ~= nil and l1opts.admit ~= "second" and l1opts.admit ~= "always" and l1opts.admit ~= "never" then
    error('layer2.open: l1.admit is "second", "always" or "never"', 2)
  end
  local share = l1opts.stub_share
  if share ~= nil and not (type(share) == "number" and share >= 0 and share <= 1) then
    error("layer2.open: l1.stub_share is a share of L1's events, from 0 to 1", 2)
  end
  local future = opts.future_limit
  if future == nil then future = DEFAULTS.future_limit elseif future == false then future = 0 end
  if not (type(future) == "number" and future >= 0 and future == math.floor(future)) then
    error("layer2.open: future_limit must be a whole number of seconds, or false for no limit", 2)
  end
  limit = limit and math.floor(limit / PAGE) * PAGE
  -- an L1 without a size limit in front of the embedded LMDB L2 (the same directory, the same disk,
  -- the same page cache) copies nothing L2 returns unless told: it would be a second copy of L2
  -- that reads no faster, and each fill a write transaction on a read (docs/DESIGN.md §2)
  local admit = l1opts.admit
  if admit == nil and limit == nil and opts.l2 == nil then admit = "never" end
  local st = {
    policy = load_policy(opts.policy),
    default_policy = require("layer2.policy.lru"),
    hooks = hooks(),
    log = opts.log or function(msg) io.stderr:write("layer2: ", msg, "\n") end,
    delegate = opts.delegate,
  }
  local max_limit = opts.max_limit or DEFAULTS.max_limit
  local l1, l2, own_l2 = open_stores(path, opts, limit, max_limit)
  if not l1 then return nil, l2 end
  local self, err = private.new(path, l1, l2, { size_limit = limit, high_water = high, max_limit = max_limit,
    low_water = low, history = l1opts.history, own_l2 = own_l2, admit = admit,
    missing_ttl = l1opts.missing_ttl, answers_ttl = l1opts.answers == false and 0 or l1opts.answers_ttl,
    answers_max_ids = l1opts.answers_max_ids, evict_delete = l1opts.evict == "delete", stub_share = l1opts.stub_share,
    changes_kept = l1opts.changes_kept, by_created = st.policy.order == "created_at",
    poll_frequency = opts.poll_frequency, poll_overlap = opts.poll_overlap, future_limit = future,
    delegating = opts.delegate ~= nil }, st.hooks, st)
  if not self then
    l1:close()
    if own_l2 then l2:close() end
    return nil, err
  end
  st.own_l2 = own_l2
  st.poll_frequency = opts.poll_frequency or DEFAULTS.poll_frequency
  if opts.notify and l2 and type(l2.listen) == "function" then
    local ok, listening, why = pcall(l2.listen, l2)
    st.notify = ok and listening
    if not st.notify then st.log("cannot listen for L2's change signal: " .. tostring(ok and why or listening)) end
  end
  if opts.on_event then self:on_event(opts.on_event) end
  if opts.on_removed then self:on_removed(opts.on_removed) end
  return self
end

-- ---- polling ----

-- db:poll_wait([seconds]) -> what poll gives: waits up to `seconds` (opts.poll_frequency, else 1)
-- for L2's change signal when opts.notify asked for it (LISTEN/NOTIFY on PostgreSQL), or just
-- that long, then polls. Blocks: the schedule of a plain-Lua host's loop, never in nginx (where
-- layer2.resty's timer is the schedule).
function Backend:poll_wait(seconds)
  if self:is_closed() then error("layer2: attempt to use a closed store", 2) end
  if seconds == nil then seconds = self.poll_frequency > 0 and self.poll_frequency or 1 end
  if type(seconds) ~= "number" or seconds < 0 then error("layer2: poll_wait takes a number of seconds", 2) end
  local l2 = self.l2
  local waited = self.notify and l2 and type(l2.wait) == "function" and pcall(l2.wait, l2, seconds)
  if not waited then core.sleep(seconds) end
  return self:poll()
end

-- ---- a delegating handle's reads ----
-- opts.delegate(method, ...) runs a method of this backend elsewhere and returns its results: in
-- OpenResty, a backend of the thread pool's own over the same L1 (layer2.resty). A host gives it
-- when its L2 is reached by calls that yield, which no C function can wait for under LuaJIT: the
-- core's methods then never call L2 from a read, and these take their place in the class.

local query_l1, stats_here = private.query_l1, Backend.stats

-- what L1 proves alone is answered here, the rest where L2 can be waited for
function Delegating:query_events(filters, qopts)
  local res, levels = query_l1(self, filters, qopts)
  if res ~= false then return res, levels end
  return self.delegate("query_events", filters, qopts)
end

-- the same, as websocket frames (Backend:query_frames)
function Delegating:query_frames(filters, prefix, qopts)
  local frames, n, levels = query_l1(self, filters, qopts, prefix)
  if frames ~= false then return frames, n, levels end
  return self.delegate("query_frames", filters, prefix, qopts)
end

function Delegating:count_events(filters, copts)
  if self:is_closed() then error("layer2: attempt to use a closed store", 2) end
  local unknown = type(copts) == "table" and core.unknown_option(copts, "layer2: count_events", { "now" })
  if unknown then error(unknown, 2) end
  return self.delegate("count_events", filters, copts)
end

-- this handle's figures, and L2's asked from Lua (a call that may yield)
function Delegating:stats()
  local st = stats_here(self)
  local ok, l2 = pcall(self.l2.stats, self.l2)
  st.l2 = ok and l2 or nil
  return st
end

-- ---- eviction ----

-- A policy's trouble is logged at most once a minute (a policy that fails, fails on every round).
local COMPLAIN_EVERY = 60

local function complain(self, msg)
  local now, c = os.time(), self.complaints
  if c and now - c.at < COMPLAIN_EVERY then
    c.quiet = c.quiet + 1
    return
  end
  local quiet = c and c.quiet or 0
  self.complaints = { at = now, quiet = 0 }
  self.log(quiet > 0 and ("%s (and %d times more since the last report)"):format(msg, quiet) or msg)
end

-- The policy's answer checked: the ids it chose among the candidates (each once), and a note on
-- what it returned that is not a candidate; or nil and why nothing of it can be used.
local function candidates_chosen(candidates, ids)
  if type(ids) ~= "table" then return nil, ("it returned a %s, not a list of ids"):format(type(ids)) end
  local open = {}
  for _, c in ipairs(candidates) do open[c.id] = true end
  local chosen, foreign = {}, 0
  for _, id in ipairs(ids) do
    if open[id] then
      chosen[#chosen + 1] = id
      open[id] = false
    elseif open[id] == nil then
      foreign = foreign + 1
    end
  end
  local note = foreign > 0 and ("%d of the ids it returned are not candidates"):format(foreign) or nil
  if #chosen == 0 then return nil, note or "it chose nothing" end
  return chosen, note
end

-- candidates[i].tags, for a policy that asks for them (policy.tags = true): read from L1
local function add_tags(self, candidates)
  local ids = {}
  for i, c in ipairs(candidates) do ids[i] = c.id end
  local events = self.l1:query_events({ ids = ids }, { max_limit = #ids })
  local tags = {}
  for _, ev in ipairs(events or {}) do tags[ev.id] = ev.tags end
  for _, c in ipairs(candidates) do c.tags = tags[c.id] or {} end
end

-- The policy's pick among the candidates (coldest first, each with its recent reads, shared by
-- every process on L1); called by the C core's eviction. Only candidates are evicted: ids that
-- are not are left out (and said, once a minute); a policy that fails, or whose answer holds no
-- candidate, is reported (once a minute) and lru picks instead.
function Backend:choose(candidates, need)
  local policy = self.policy
  if policy.tags then add_tags(self, candidates) end
  local ok, ids = pcall(policy.select, policy, candidates, need)
  local chosen, why = nil, ids
  if ok then chosen, why = candidates_chosen(candidates, ids) end
  if chosen then
    if why then complain(self, ("the eviction policy '%s': %s (left out)"):format(tostring(policy.name), why)) end
    private.admit_bar(self, policies.admit_bar(candidates, chosen))
    return chosen
  end
  complain(self, ("the eviction policy '%s' failed (%s); using lru"):format(tostring(policy.name), tostring(why)))
  return self.default_policy:select(candidates, need)
end

return backend
