-- bench/cache: the two-level backend under a Zipf(0.9) read trace by id, over a data set 10x the
-- L1 limit: hit ratio per policy next to Belady's optimum on the same trace, L1 hit vs L2 fetch
-- latency, eviction throughput, L1's size over time.
--   lua5.4 bench/cache.lua [events] [reads]
local layer2 = require("layer2")
local util = require("bench.util")
local dataset = require("bench.dataset")
local gen = require("layer2.gen")

local N = tonumber(arg and arg[1]) or 100000
local READS = tonumber(arg and arg[2]) or 200000 -- long enough to leave the warm-up behind
local path = dataset.ensure(N)

local ids, bytes = {}, 0
for line in io.lines(path) do
  ids[#ids + 1] = line:match('"id":"(%x+)"')
  bytes = bytes + #line + 1
end
local LIMIT = math.floor(bytes / 10 / 4096) * 4096

-- the trace: Zipf(0.9) popularity over a random permutation of the events
local g = gen.new({ seed = 99, authors = 1, count = 1 })
local weights = gen.zipf(#ids, 0.9)
local perm = {}
for i = 1, #ids do perm[i] = i end
for i = #perm, 2, -1 do
  local j = g:uniform(i)
  perm[i], perm[j] = perm[j], perm[i]
end
local trace = {}
for i = 1, READS do trace[i] = perm[g:draw(weights)] end

-- L2 once, shared by every run (read-only during the runs)
local base = "bench/data/cache"
os.execute("rm -rf " .. base .. " && mkdir -p " .. base)
local l2 = assert(layer2.lmdb.open(base .. "/l2", { nosync = true }))
assert(l2:import(path, { verify = false }))

local function percentile(v, p)
  table.sort(v)
  return v[math.max(1, math.ceil(#v * p))] or 0
end

local function run(policy, mode)
  local dir = base .. "/" .. policy .. (mode or "")
  local db = assert(layer2.open(dir, { l1 = { size_limit = LIMIT, evict = mode }, l2 = l2, policy = policy,
    nosync = true, log = function() end }))
  local gc_time, freed = 0, 0
  local gc = db.gc
  db.gc = function(self, force)
    local t0 = os.clock()
    local r = gc(self, force)
    gc_time = gc_time + os.clock() - t0
    freed = freed + (r.freed or 0)
    return r
  end
  local hits, hit_us, miss_us, sizes, counts, trace_rows = 0, {}, {}, {}, {}, {}
  for i, k in ipairs(trace) do
    local t0 = os.clock()
    local res, levels = db:query_events({ ids = { ids[k] } }, { json = true })
    local us = (os.clock() - t0) * 1e6
    assert(#res == 1 or levels.l2 == 0)
    if levels.l1 == 1 then
      hits = hits + 1
      hit_us[#hit_us + 1] = us
    else
      miss_us[#miss_us + 1] = us
    end
    if i % math.floor(READS / 20) == 0 then
      local st = db.l1:stats()
      sizes[#sizes + 1] = ("%.1f"):format(st.used_bytes / 1048576)
      counts[#counts + 1] = st.events
    end
    if i % math.floor(READS / 200) == 0 then
      trace_rows[#trace_rows + 1] = ("%d %.3f %.4f"):format(i, db.l1:stats().used_bytes / 1048576, hits / i)
    end
  end
  local used = db.l1:stats()
  db:close()
  local mean_events = 0
  for _, c in ipairs(counts) do mean_events = mean_events + c end
  return {
    policy = policy .. (mode and (", evict = " .. mode) or ""), ratio = hits / READS,
    hit_p50 = percentile(hit_us, 0.5), miss_p50 = percentile(miss_us, 0.5),
    hit_p99 = percentile(hit_us, 0.99), miss_p99 = percentile(miss_us, 0.99),
    evict_mbs = gc_time > 0 and freed / 1048576 / gc_time or 0, sizes = sizes,
    capacity = math.floor(mean_events / #counts), final = used, trace_rows = trace_rows,
  }
end

-- Belady's optimum for a cache of `capacity` events (unit sizes): evict the one used farthest ahead
local function belady(capacity)
  local next_use, last = {}, {}
  for i = #trace, 1, -1 do
    next_use[i] = last[trace[i]] or math.huge
    last[trace[i]] = i
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
  for i, k in ipairs(trace) do
    if cached[k] then
      hits = hits + 1
    else
      if size >= capacity then
        while true do
          local top = pop()
          if cached[top[2]] and pos_next[top[2]] == top[1] then
            cached[top[2]] = nil
            size = size - 1
            break
          end
        end
      end
      cached[k] = true
      size = size + 1
    end
    pos_next[k] = next_use[i]
    push(next_use[i], k)
  end
  return hits / #trace
end

local results = {}
for _, p in ipairs({ "lru", "lfu", "oldest" }) do results[#results + 1] = run(p) end
for _, p in ipairs({ "lru", "lfu" }) do results[#results + 1] = run(p, "delete") end
local capacity = results[1].capacity
local opt = belady(capacity)

print(("## bench/cache (%s)\n"):format(_VERSION .. (jit and (" / " .. jit.version) or "")))
print("machine: " .. util.machine())
print(("data: %s, %d events, %.1f MB JSONL; L1 limit %.1f MiB (1/10 of the data), high/low water 66/50 %%"):format(
  path, N, bytes / 1e6, LIMIT / 1048576))
print(("trace: %d reads by id, Zipf(0.9) over all events; L1 starts empty (the data imported into L2)\n"):format(READS))
local rows = {}
for _, r in ipairs(results) do
  rows[#rows + 1] = { r.policy, ("%.1f %%"):format(100 * r.ratio), ("%.0f %%"):format(100 * r.ratio / opt),
    ("%.0f / %.0f"):format(r.hit_p50, r.hit_p99), ("%.0f / %.0f"):format(r.miss_p50, r.miss_p99),
    ("%.1f"):format(r.evict_mbs), tostring(r.capacity) }
end
rows[#rows + 1] = { "Belady (offline optimum, same trace)", ("%.1f %%"):format(100 * opt), "100 %", "", "", "",
  tostring(capacity) }
print(util.table({ "policy", "hit ratio", "of Belady", "L1 hit µs p50/p99", "L2 fetch µs p50/p99",
  "eviction MB/s", "events in L1" }, rows))
print("\nL1 used MiB over the trace (every 5 %), lru: " .. table.concat(results[1].sizes, " "))
print(("\nBelady is computed for a cache of %d events (lru's mean occupancy), unit sizes."):format(capacity))
print(("peak RSS: %.1f MB"):format(util.peak_rss_kb() / 1024))
l2:close()
os.execute("rm -rf " .. base)
-- the data behind bench/results/cache-trace.svg (drawn by bench/run.lua)
os.execute("mkdir -p bench/results")
local dat = assert(io.open("bench/results/cache-trace.dat", "w"))
dat:write(("# reads  L1-used-MiB  hit-ratio   (lru; L1 limit %.1f MiB)\n"):format(LIMIT / 1048576))
dat:write(table.concat(results[1].trace_rows, "\n"), "\n")
dat:close()
for _, r in ipairs(results) do
  util.summary("cache hit ratio, " .. r.policy, ("%.1f %%"):format(100 * r.ratio),
    ("%.0f %% of Belady's %.1f %%"):format(100 * r.ratio / opt, 100 * opt))
end
util.summary("L1 hit vs L2 fetch", ("%.0f vs %.0f µs p50"):format(results[1].hit_p50, results[1].miss_p50),
  "by id, JSON")
util.summary("eviction", ("%.1f MB/s"):format(results[1].evict_mbs), "lru, stubs")
