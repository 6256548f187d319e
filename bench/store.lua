-- bench/store: the LMDB store on a deterministic data set (bench/dataset.lua).
--   lua5.4 bench/store.lua [events]      (default 100000)
local layer2 = require("layer2")
local util = require("bench.util")
local dataset = require("bench.dataset")

local N = tonumber(arg and arg[1]) or 100000
local path = dataset.ensure(N)
local queries = require("bench.queries")
local jsonl_bytes, sample = queries.sample(path)

local function fresh_dir(name)
  local dir = "bench/data/store-" .. name
  os.execute("rm -rf " .. dir)
  return dir
end

local function du(dir)
  local p = io.popen("du -sb " .. dir)
  local n = tonumber(p:read("a"):match("^(%d+)"))
  p:close()
  return n
end

local rows = {}
local function row(name, value, note) rows[#rows + 1] = { name, value, note or "" } end

-- import, with and without verification (2 threads verify)
local w0 = util.wall()
local trusted_dir = fresh_dir("trusted")
local db = assert(layer2.lmdb.open(trusted_dir))
assert(db:import(path, { verify = false }))
local t_trusted = util.wall() - w0
db:close()
-- the verified import against the bound verification sets: the same file read and checked by
-- layer2.event.check_lines (the import's own reading, batches and two threads, nothing stored).
-- This machine's speed drifts by a third within a minute, so checks and imports alternate (check,
-- import, check, ...) and each import is set against the mean of the two checks beside it; the
-- median of those ratios is reported, with the median import rate
local ROUNDS = N <= 200000 and 5 or 3
local function check_rate()
  local w1 = util.wall()
  local counts = assert(layer2.event.check_lines(path))
  assert(counts.valid == N, "the data set has invalid lines")
  return N / (util.wall() - w1)
end
local dir = fresh_dir("verified")
local rates, ratios, bounds = {}, {}, { check_rate() }
local c
for r = 1, ROUNDS do
  os.execute("rm -rf " .. dir)
  w0 = util.wall()
  db = assert(layer2.lmdb.open(dir))
  c = assert(db:import(path))
  rates[r] = N / (util.wall() - w0)
  if r < ROUNDS then db:close() end
  bounds[r + 1] = check_rate()
  ratios[r] = rates[r] / ((bounds[r] + bounds[r + 1]) / 2)
end
local each = {}
for i, v in ipairs(ratios) do each[i] = ("%.2f"):format(v) end
local verified_rate, verify_bound = queries.percentile(rates, 0.5), queries.percentile(bounds, 0.5)
local verified_ratio = queries.percentile(ratios, 0.5)
row("import, verified (2 threads)", util.fmt_rate(verified_rate) .. " events/s",
  ("%d saved, %d replaced; median of %d"):format(c.saved, c.replaced, ROUNDS))
row("import, trusted (`verify = false`)", util.fmt_rate(N / t_trusted) .. " events/s")
row("verify bound (`event.check_lines`: the import's reading and 2 threads, nothing stored)",
  util.fmt_rate(verify_bound) .. " events/s", ("verified import is %.2f of it (median; each import against the "
  .. "checks beside it: %s)"):format(verified_ratio, table.concat(each, ", ")))
os.execute("rm -rf " .. trusted_dir)
-- the raw LMDB bound beside it (bench/probe.c): the same number of records, a body of 0.7 x the mean
-- JSON size and 7 index keys of 17 bytes each, sorted within each batch of 4,096, one commit a batch
assert(os.execute("mkdir -p build && cc -O2 -o build/probe bench/probe.c -llmdb"), "cannot build bench/probe.c")
local probe_dir = fresh_dir("probe")
local body = math.floor(0.7 * jsonl_bytes / N)
local p = io.popen(("build/probe %s %d %d"):format(probe_dir, N, body))
local probe_s = tonumber(p:read("a"):match("^(%S+)"))
p:close()
os.execute("rm -rf " .. probe_dir)
row("raw LMDB probe (bench/probe.c)", util.fmt_rate(N / probe_s) .. " records/s",
  ("%d-byte bodies + 7 keys of 17 bytes; trusted import is %.2f of it"):format(body, probe_s / t_trusted))

-- export
local sink = "bench/data/export.jsonl"
w0 = util.wall()
local exported = assert(db:export(sink))
local t_export = util.wall() - w0
os.remove(sink)
row("export", util.fmt_rate(exported / t_export) .. " events/s")
local disk = du(dir)
row("disk", ("%.1f MB"):format(disk / 1e6), ("%.0f bytes/event, %.2f x the JSONL (%.1f MB)"):format(
  disk / N, disk / jsonl_bytes, jsonl_bytes / 1e6))

local classes = queries.classes(sample)
local percentile = queries.percentile

local qrows = {}
local clock = os.clock
local ITER = 200
for _, cl in ipairs(classes) do
  local r = { cl[1] }
  local returned = 0
  for _, limit in ipairs({ 50, 500 }) do
    for _, json in ipairs({ false, true }) do
      local times = {}
      local opts = { json = json }
      for i = 1, ITER do
        local f = queries.limit(cl[2](i), limit)
        local t0 = clock()
        local res = db:query_events(f, opts)
        times[i] = (clock() - t0) * 1e6
        if limit == 500 and json then returned = returned + #res end
      end
      r[#r + 1] = ("%.0f / %.0f"):format(percentile(times, 0.5), percentile(times, 0.99))
    end
  end
  r[#r + 1] = ("%.0f"):format(returned / ITER)
  qrows[#qrows + 1] = r
end
db:close()

print(("## bench/store (%s)\n"):format(_VERSION .. (jit and (" / " .. jit.version) or "")))
print("machine: " .. util.machine())
print(("data: %s, %d events made by layer2.gen (2,000 Zipf authors; kinds 68%% 1, 12%% 7, 5%% 6, "
  .. "5%% 30023, 4%% 10002, 3%% 0, 3%% 3), %.1f MB JSONL\n"):format(path, N, jsonl_bytes / 1e6))
print(util.table({ "what", "figure", "note" }, rows))
print("\nquery µs p50 / p99 (" .. ITER .. " queries each, from Lua, CPU time):\n")
print(util.table({ "class", "limit 50 table", "limit 50 JSON", "limit 500 table", "limit 500 JSON",
  "events at 500" }, qrows))
print(("\npeak RSS: %.1f MB"):format(util.peak_rss_kb() / 1024))
os.execute("rm -rf " .. dir)
local data = ("%dk generated events"):format(math.floor(N / 1000))
util.summary("import, verified", util.fmt_rate(verified_rate) .. " events/s", data .. ", 2 threads")
util.summary("import, trusted", util.fmt_rate(N / t_trusted) .. " events/s", data)
util.summary("import, verified, vs the 2-thread verify bound", ("%.2f"):format(verified_ratio),
  ("bound %s events/s (`event.check_lines` of the same file, alternated; median of %d)"):format(
    util.fmt_rate(verify_bound), ROUNDS))
util.summary("import, trusted, vs the raw LMDB probe", ("%.2f"):format(probe_s / t_trusted),
  ("probe %s records/s (bench/probe.c)"):format(util.fmt_rate(N / probe_s)))
util.summary("export", util.fmt_rate(exported / t_export) .. " events/s", data)
util.summary("disk", ("%.2f x the JSONL"):format(disk / jsonl_bytes), ("%.0f bytes/event"):format(disk / N))
for _, r in ipairs(qrows) do
  util.summary("query " .. r[1] .. ", limit 500 JSON", r[5] .. " µs p50/p99", data)
end
-- query latency by class against store size: one row per run (bench/run.lua draws it)
os.execute("mkdir -p bench/results")
local scaling = assert(io.open("bench/results/query-scaling.dat", "a"))
for i, r in ipairs(qrows) do
  scaling:write(("%d %d %s %s\n"):format(N, i, r[5]:match("^(%d+)"), r[1]:gsub(" ", "_")))
end
scaling:close()
util.summary("peak RSS, bench/store", ("%.0f MB"):format(util.peak_rss_kb() / 1024), data)
