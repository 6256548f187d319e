-- bench/cache: the two-level backend under Zipf(0.9) read traces over a data set 10x the L1
-- limit, one by id and one by filter: hit ratio per policy next to Belady's optimum and the best
-- fixed set on the same trace, L1 hit vs L2 fetch latency, eviction throughput, L1's size over time.
--   lua5.4 bench/cache.lua [events] [reads by id] [reads by filter]
local layer2 = require("layer2")
local util = require("bench.util")
local dataset = require("bench.dataset")
local gen = require("layer2.gen")

local N = tonumber(arg and arg[1]) or 100000
local READS = tonumber(arg and arg[2]) or 200000 -- long enough to leave the warm-up behind
local FREADS = tonumber(arg and arg[3]) or 50000
local path = dataset.ensure(N)
local function quiet() end

local ids, sizes, authors, seen_author, bytes = {}, {}, {}, {}, 0
for line in io.lines(path) do
  ids[#ids + 1] = line:match('"id":"(%x+)"')
  sizes[#ids] = #line
  local pk = line:match('"pubkey":"(%x+)"')
  if not seen_author[pk] then
    seen_author[pk] = true
    authors[#authors + 1] = pk
  end
  bytes = bytes + #line + 1
end
local LIMIT = math.floor(bytes / 10 / 4096) * 4096

local g = gen.new({ seed = 99, authors = 1, count = 1 })
-- a Zipf(0.9) trace of `reads` draws over 1..n, popularity by a random permutation
local function zipf_trace(n, reads)
  local weights = gen.zipf(n, 0.9)
  local perm = {}
  for i = 1, n do perm[i] = i end
  for i = #perm, 2, -1 do
    local j = g:uniform(i)
    perm[i], perm[j] = perm[j], perm[i]
  end
  local trace = {}
  for i = 1, reads do trace[i] = perm[g:draw(weights)] end
  return trace
end

local base = "bench/data/cache"
os.execute("rm -rf " .. base .. " && mkdir -p " .. base)
-- layer2.open's marks (percents of the limit), as an L1 of this size reports them
local HIGH_WATER, LOW_WATER
do
  local dir = base .. "/marks"
  local db = assert(layer2.open(dir, { l1 = { size_limit = LIMIT }, nosync = true }))
  local st = db:stats()
  HIGH_WATER, LOW_WATER = st.high_water, st.low_water
  db:close()
  os.execute("rm -rf " .. dir)
end
-- what a cache of L1's size could hold at best: the limit's high-water bytes of event JSON
local JSON_BYTES = LIMIT * HIGH_WATER / 100
-- L2 once, shared by the id runs (read-only during them)
local l2 = assert(layer2.lmdb.open(base .. "/l2", { nosync = true }))
assert(l2:import(path, { verify = false }))
-- the data set holds replaced versions and deleted events L2 does not keep: reads of those can
-- never be L1 hits, so the hit ratios count the reads of events L2 holds
local held, nheld = {}, 0
for i = 1, #ids, 500 do
  local batch = {}
  for k = i, math.min(i + 499, #ids) do batch[#batch + 1] = ids[k] end
  for _, ev in ipairs(assert(l2:query_events({ ids = batch }, { max_limit = 500 }))) do
    held[ev.id], nheld = true, nheld + 1
  end
end

local function percentile(v, p)
  table.sort(v)
  return v[math.max(1, math.ceil(#v * p))] or 0
end

-- Belady's optimum over a stream of keys for a cache of `capacity`: on a miss, evict the keys used
-- farthest ahead until the new one fits. Sizes are size_of(key), 1 when not given (with sizes this
-- is the usual stand-in for the optimum, which is NP-hard). Returns hits / #stream.
local function belady(stream, capacity, size_of)
  size_of = size_of or function() return 1 end
  local next_use, last = {}, {}
  for i = #stream, 1, -1 do
    next_use[i] = last[stream[i]] or math.huge
    last[stream[i]] = i
  end
  -- a max-heap of (next use, key) with lazy deletion
  local heap, pos_next, cached, size, hits = {}, {}, {}, 0, 0
  local function push(nu, k)
    heap[#heap + 1] = { nu, k }
    local i = #heap
    while i > 1 do
      local p = math.floor(i / 2)
      if heap[p][1] >= heap[i][1] then break end
      heap[p], heap[i] = heap[i], heap[p]
      i = p
    end
  end
  local function pop()
    local top = heap[1]
    heap[1] = heap[#heap]
    heap[#heap] = nil
    local i = 1
    while true do
      local l, r, m = 2 * i, 2 * i + 1, i
      if heap[l] and heap[l][1] > heap[m][1] then m = l end
      if heap[r] and heap[r][1] > heap[m][1] then m = r end
      if m == i then break end
      heap[m], heap[i] = heap[i], heap[m]
      i = m
    end
    return top
  end
  for i, k in ipairs(stream) do
    local need = size_of(k)
    if cached[k] then
      hits = hits + 1
    elseif need <= capacity then
      while size + need > capacity do
        local top = pop()
        if cached[top[2]] and pos_next[top[2]] == top[1] then
          cached[top[2]] = nil
          size = size - size_of(top[2])
        end
      end
      cached[k] = true
      size = size + need
    end
    if cached[k] then
      pos_next[k] = next_use[i]
      push(next_use[i], k)
    end
  end
  return hits / #stream
end

-- The best fixed set: the `capacity` keys read most often over the whole stream, known in
-- advance. No policy that learns popularity as it goes does better on an independent Zipf
-- trace; Belady, who knows the order of the reads too, does.
local function best_fixed(stream, capacity)
  local count, keys = {}, {}
  for _, k in ipairs(stream) do
    if not count[k] then keys[#keys + 1] = k end
    count[k] = (count[k] or 0) + 1
  end
  table.sort(keys, function(a, b) return count[a] > count[b] end)
  local hits = 0
  for i = 1, math.min(capacity, #keys) do hits = hits + count[keys[i]] end
  return hits / #stream
end

-- Samples L1 during a run: mean events with a body (what a hit needs) once L1 is full (`full`
-- from the start, else from its first eviction on: what it holds, not how fast it fills), used MiB
-- every 5 %.
local function sampler(db, reads, gct, full)
  local s = { bodies = 0, n = 0, sizes = {}, rows = {} }
  function s.at(i, hits)
    if i % math.max(1, math.floor(reads / 100)) == 0 then
      local st = db.l1:stats()
      if full or gct.evicted > 0 then s.bodies, s.n = s.bodies + st.events - st.stubs, s.n + 1 end
      if i % math.max(1, math.floor(reads / 20)) == 0 then s.sizes[#s.sizes + 1] = ("%.1f"):format(st.used_bytes / 1048576) end
      s.rows[#s.rows + 1] = ("%d %.3f %.4f"):format(i, st.used_bytes / 1048576, hits / i)
    end
  end
  function s.capacity() return math.floor(s.bodies / math.max(1, s.n)) end
  return s
end

-- times the gc passes the core starts as L1 fills: eviction throughput
local function timed_gc(db)
  local t = { time = 0, freed = 0, evicted = 0 }
  db.observe_gc = function(r)
    t.time = t.time + r.seconds
    t.freed, t.evicted = t.freed + (r.freed or 0), t.evicted + r.evicted
  end
  return t
end

-- ---- by id ----
local trace = zipf_trace(#ids, READS)
local held_stream, absent_reads = {}, 0
for _, k in ipairs(trace) do
  if held[ids[k]] then held_stream[#held_stream + 1] = k else absent_reads = absent_reads + 1 end
end

local function run_ids(policy, mode)
  local dir = base .. "/" .. policy .. (mode or "")
  local db = assert(layer2.open(dir, { l1 = { size_limit = LIMIT, evict = mode }, l2 = l2, policy = policy,
    nosync = true, log = quiet }))
  local gct = timed_gc(db)
  local s = sampler(db, READS, gct)
  local hits, missing, hit_us, miss_us = 0, 0, {}, {}
  for i, k in ipairs(trace) do
    local t0 = os.clock()
    local res, levels = db:query_events({ ids = { ids[k] } }, { json = true })
    local us = (os.clock() - t0) * 1e6
    assert(#res == 1 or levels.l2 == 0)
    if levels.l1 == 1 then
      hits = hits + 1
      hit_us[#hit_us + 1] = us
    elseif levels.missing then
      missing = missing + 1
    else
      miss_us[#miss_us + 1] = us
    end
    s.at(i, hits)
  end
  db:close()
  return {
    policy = policy .. (mode and (", evict = " .. mode) or ""), ratio = hits / #held_stream, missing = missing,
    hit_p50 = percentile(hit_us, 0.5), miss_p50 = percentile(miss_us, 0.5),
    hit_p99 = percentile(hit_us, 0.99), miss_p99 = percentile(miss_us, 0.99),
    evict_mbs = gct.time > 0 and gct.freed / 1048576 / gct.time or 0, sizes = s.sizes,
    capacity = s.capacity(), trace_rows = s.rows,
  }
end

local results = {}
for _, p in ipairs({ "lru", "lfu", "oldest" }) do results[#results + 1] = run_ids(p) end
for _, p in ipairs({ "lru", "lfu" }) do results[#results + 1] = run_ids(p, "delete") end
-- Belady at equal bytes: a cache holding JSON_BYTES of the events' JSON, and how many events of the
-- trace's mean size that is (what L1 would hold if each cached event cost its JSON and no more)
local function json_size(k) return sizes[k] end
local belady_bytes = belady(held_stream, JSON_BYTES, json_size)
local trace_bytes = 0
for _, k in ipairs(held_stream) do trace_bytes = trace_bytes + sizes[k] end
local fits = math.floor(JSON_BYTES / (trace_bytes / #held_stream))
for _, r in ipairs(results) do
  r.belady = belady(held_stream, r.capacity)
  r.fixed = best_fixed(held_stream, r.capacity)
end
l2:close()

-- ---- by filter ----
-- The data arrives live, through the backend (a relay's saves), then readers ask for author feeds
-- ({authors = {pk}, kinds = {1}, limit = 20}), Zipf(0.9) over the authors. L1 answers a feed when
-- it can prove it complete (the horizon rule); a stub in it is fetched by id.
local ftrace = zipf_trace(#authors, FREADS)
local function feed(k) return { authors = { authors[k] }, kinds = { 1 }, limit = 20 } end

local function run_filters(policy)
  local dir = base .. "/f-" .. policy
  local db = assert(layer2.open(dir, { l1 = { size_limit = LIMIT }, policy = policy, nosync = true, log = quiet }))
  local t0 = util.wall()
  for line in io.lines(path) do db:save_event(line) end
  local load_s = util.wall() - t0
  local answers = {}
  -- counts the filter queries L2 gets (by-id fetches of stubs are not filter queries)
  local real, asked = db.l2, 0
  db.l2 = setmetatable({}, { __index = function(_, m)
    return function(_, a, ...)
      if m == "query_events" and not (type(a) == "table" and a.ids) then asked = asked + 1 end
      return real[m](real, a, ...)
    end
  end })
  local gct = timed_gc(db)
  local s = sampler(db, FREADS, gct, true)
  local whole, served, from_l1, hit_us, miss_us = 0, 0, 0, {}, {}
  for i, k in ipairs(ftrace) do
    local c0, before = os.clock(), asked
    local res, levels = db:query_events(feed(k), { json = true })
    local us = (os.clock() - c0) * 1e6
    served, from_l1 = served + #res, from_l1 + levels.l1
    if asked == before and levels.stubs == 0 then
      whole = whole + 1
      hit_us[#hit_us + 1] = us
    else
      miss_us[#miss_us + 1] = us
    end
    s.at(i, whole)
  end
  -- the events each feed needs, from L2 (nothing is written during the reads)
  for _, k in ipairs(ftrace) do
    if not answers[k] then
      local list = {}
      for j, ev in ipairs(assert(real:query_events(feed(k)))) do list[j] = ev.id end
      answers[k] = list
    end
  end
  local st = db:stats()
  db:close()
  return {
    policy = policy, whole = whole / FREADS, events = from_l1 / math.max(1, served), served = served,
    hit_p50 = percentile(hit_us, 0.5), miss_p50 = percentile(miss_us, 0.5), capacity = s.capacity(),
    evict_mbs = gct.time > 0 and gct.freed / 1048576 / gct.time or 0, answers = answers, load_s = load_s,
    horizon = st.horizon, stubs = st.l1.stubs,
  }
end

local fresults = {}
for _, p in ipairs({ "lru", "lfu", "oldest" }) do fresults[#fresults + 1] = run_filters(p) end
-- every event the feeds returned, in the order they were read: the stream Belady sees
local stream = {}
for _, k in ipairs(ftrace) do
  for _, id in ipairs(fresults[1].answers[k]) do stream[#stream + 1] = id end
end
for _, r in ipairs(fresults) do
  r.belady = belady(stream, r.capacity)
  r.fixed = best_fixed(stream, r.capacity)
end

print(("## bench/cache (%s)\n"):format(_VERSION .. (jit and (" / " .. jit.version) or "")))
print("machine: " .. util.machine())
print(("data: %s, %d events (%d held by L2: the rest are replaced versions and deleted events), %.1f MB JSONL;"
  .. " L1 limit %.1f MiB (1/10 of the data), high/low water %d/%d %%"):format(path, N, nheld, bytes / 1e6,
  LIMIT / 1048576, HIGH_WATER, LOW_WATER))
print(("\n### By id: %d reads, Zipf(0.9) over all %d events; L1 starts empty (the data imported into L2)\n"):format(
  READS, N))
print(("%d reads (%.1f %%) ask for events L2 does not hold; hit ratios are over the other %d. Belady and the best"
  .. " fixed set are computed on those same reads for each row's own mean count of events with a body in L1"
  .. " once full (sampled every 1 %% of the reads from its first eviction on;"
  .. " unit sizes).\n"):format(absent_reads, 100 * absent_reads / READS, #held_stream))
local rows = {}
for _, r in ipairs(results) do
  rows[#rows + 1] = { r.policy, ("%.1f %%"):format(100 * r.ratio), ("%.1f %%"):format(100 * r.belady),
    ("%.0f %%"):format(100 * r.ratio / r.belady), ("%.1f %%"):format(100 * r.fixed),
    ("%.0f %%"):format(100 * r.ratio / r.fixed), tostring(r.capacity),
    ("%.0f / %.0f"):format(r.hit_p50, r.hit_p99), ("%.0f / %.0f"):format(r.miss_p50, r.miss_p99),
    ("%.1f"):format(r.evict_mbs), ("%.0f %%"):format(100 * r.missing / math.max(1, absent_reads)) }
end
print(util.table({ "policy", "hit ratio", "Belady", "of Belady", "best fixed set", "of best fixed", "events in L1",
  "L1 hit µs p50/p99", "L2 fetch µs p50/p99", "eviction MB/s", "absent ids answered from memory" }, rows))
print(("\nAt equal bytes: Belady for a cache holding %.1f MiB of event JSON (the limit's %d %% high water), "
  .. "sizes as read: %.1f %%; that many bytes hold %d events of the trace's mean JSON size.\n"):format(
  JSON_BYTES / 1048576, HIGH_WATER, 100 * belady_bytes, fits))
rows = {}
for _, r in ipairs(results) do
  rows[#rows + 1] = { r.policy, ("%.1f %%"):format(100 * r.ratio), ("%.0f %%"):format(100 * r.ratio / belady_bytes),
    tostring(r.capacity), ("%.2f"):format(r.capacity / fits) }
end
print(util.table({ "policy", "hit ratio", "of Belady at equal bytes", "events in L1 (with a body)",
  "of the events the bytes would hold" }, rows))
print("\nL1 used MiB over the trace (every 5 %), lru: " .. table.concat(results[1].sizes, " "))

print(("\n### By filter: %d author feeds ({authors = {pk}, kinds = {1}, limit = 20}), Zipf(0.9) over %d authors;"
  .. " the data saved live through the backend first\n"):format(FREADS, #authors))
print(("Belady and the best fixed set see the %d events the feeds return, in order, as single reads (they ignore"
  .. " that L1 must prove a feed complete); \"events from L1\" is the share of those L1 gave.\n"):format(#stream))
rows = {}
for _, r in ipairs(fresults) do
  rows[#rows + 1] = { r.policy, ("%.1f %%"):format(100 * r.whole), ("%.1f %%"):format(100 * r.events),
    ("%.1f %%"):format(100 * r.belady), ("%.1f %%"):format(100 * r.fixed), tostring(r.capacity),
    ("%.0f / %.0f"):format(r.hit_p50, r.miss_p50), ("%.1f"):format(r.evict_mbs), ("%.1f k/s"):format(N / r.load_s / 1e3) }
end
print(util.table({ "policy", "feeds L1 answered whole", "events from L1", "Belady (events)", "best fixed set",
  "events in L1", "µs p50 L1 / L2", "eviction MB/s", "live saves" }, rows))
print(("\npeak RSS: %.1f MB"):format(util.peak_rss_kb() / 1024))
os.execute("rm -rf " .. base)
-- the data behind bench/results/cache-trace.svg (drawn by bench/run.lua)
os.execute("mkdir -p bench/results")
local dat = assert(io.open("bench/results/cache-trace.dat", "w"))
dat:write(("# reads  L1-used-MiB  hit-ratio   (lru, by id; L1 limit %.1f MiB)\n"):format(LIMIT / 1048576))
dat:write(table.concat(results[1].trace_rows, "\n"), "\n")
dat:close()
util.summary("L1 capacity", ("%.2f of the events its bytes would hold"):format(results[1].capacity / fits),
  ("lru: %d events with a body; %d events' JSON fill %.1f MiB (high water of %.1f MiB)"):format(results[1].capacity,
    fits, JSON_BYTES / 1048576, LIMIT / 1048576))
util.summary("cache hit ratio by id at equal bytes, lru", ("%.0f %% of Belady"):format(100 * results[1].ratio
  / belady_bytes), ("Belady for %.1f MiB of event JSON: %.1f %%"):format(JSON_BYTES / 1048576, 100 * belady_bytes))
for _, r in ipairs(results) do
  util.summary("cache hit ratio by id, " .. r.policy, ("%.1f %%"):format(100 * r.ratio),
    ("%.0f %% of Belady's %.1f %%, %.0f %% of the best fixed set's %.1f %%"):format(100 * r.ratio / r.belady,
      100 * r.belady, 100 * r.ratio / r.fixed, 100 * r.fixed))
end
for _, r in ipairs(fresults) do
  util.summary("cache by filter (author feeds), " .. r.policy, ("%.1f %% of events from L1"):format(100 * r.events),
    ("%.1f %% of feeds whole from L1; Belady on the events %.1f %%"):format(100 * r.whole, 100 * r.belady))
end
util.summary("L1 hit vs L2 fetch", ("%.0f vs %.0f µs p50"):format(results[1].hit_p50, results[1].miss_p50),
  "by id, JSON")
util.summary("eviction", ("%.1f MB/s"):format(results[1].evict_mbs), "lru, stubs")
