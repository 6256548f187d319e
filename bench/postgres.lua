-- bench/postgres: the PostgreSQL L2 next to the LMDB L1 on the same data set, and how fast a save
-- on one node reaches another node's on_event. Needs a server: `make bench-postgres` starts a
-- throwaway one (tools/pg run, fsync on) and passes its conninfo in LAYER2_PG.
--   lua5.4 bench/postgres.lua [events]   (default 100000)
local layer2 = require("layer2")
local util = require("bench.util")
local dataset = require("bench.dataset")
local queries = require("bench.queries")

local conninfo = assert(os.getenv("LAYER2_PG"), "LAYER2_PG is not set: run make bench-postgres")
local N = tonumber(arg and arg[1]) or 100000
local path = dataset.ensure(N)
local jsonl_bytes, sample = queries.sample(path)
local now = layer2.monotonic

local function psql(sql)
  local p = assert(io.popen(("psql -qAtX -h '%s' -U postgres -d postgres -c %q"):format(os.getenv("LAYER2_PG_DIR"), sql)))
  local out = p:read("a")
  p:close()
  return out
end

local function fresh_db(name)
  psql("DROP DATABASE IF EXISTS " .. name)
  psql("CREATE DATABASE " .. name)
  return (conninfo:gsub("dbname=%S+", "dbname=" .. name))
end

local rows = {}
local function row(what, figure, note) rows[#rows + 1] = { what, figure, note or "" } end

-- import: COPY in batches into PostgreSQL; the same file into an LMDB store (the L1's kind)
local pg = assert(layer2.postgres.open(fresh_db("layer2_bench")))
local t0 = now()
local counts = assert(pg:import(path, { threads = 2 }))
local t_pg = now() - t0
local st = pg:stats()
row("import into PostgreSQL (COPY, 4,096 per batch, verified on 2 threads)", util.fmt_rate(N / t_pg) .. " events/s",
  ("%d saved, %d replaced"):format(counts.saved, counts.replaced))
row("PostgreSQL on disk (tables and indexes)", ("%.1f MB"):format(st.disk_bytes / 1e6),
  ("%.2f x the JSONL"):format(st.disk_bytes / jsonl_bytes))
local l1dir = "bench/data/pg-l1"
os.execute("rm -rf " .. l1dir)
local l1 = assert(layer2.lmdb.open(l1dir))
t0 = now()
assert(l1:import(path, { threads = 2 }))
row("import into LMDB, for comparison", util.fmt_rate(N / (now() - t0)) .. " events/s")

-- queries: the same classes, limit 50, JSON out, wall-clock (PostgreSQL works in its own process)
local ITER = 100
local qrows, ratios = {}, {}
for _, cl in ipairs(queries.classes(sample)) do
  local times = { {}, {} }
  for i = 1, ITER do
    local f = queries.limit(cl[2](i), 50)
    for k, store in ipairs({ pg, l1 }) do
      local s0 = now()
      assert(store:query_events(f, { json = true }))
      times[k][i] = (now() - s0) * 1e6
    end
  end
  local p50 = { queries.percentile(times[1], 0.5), queries.percentile(times[2], 0.5) }
  local p99 = { queries.percentile(times[1], 0.99), queries.percentile(times[2], 0.99) }
  ratios[#ratios + 1] = p50[1] / p50[2]
  qrows[#qrows + 1] = { cl[1], ("%.0f / %.0f"):format(p50[1], p99[1]), ("%.0f / %.0f"):format(p50[2], p99[2]),
    ("%.0f x"):format(p50[1] / p50[2]) }
end
table.sort(ratios)
l1:close()
os.execute("rm -rf " .. l1dir)
pg:close()

-- cross-node delay: node A saves, node B (another process) polls; B reports save -> on_event.
-- CLOCK_MONOTONIC is one clock for every process of the machine.
local function cross_node(notify, count)
  local cinfo = fresh_db("layer2_bench_nodes")
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(([[
    local layer2 = require("layer2")
    local dir = os.tmpname()
    os.remove(dir)
    local got, delays = 0, {}
    local db = assert(layer2.open(dir, { l2 = %q, notify = %s, poll_frequency = 1, nosync = true,
      on_event = function(ev, origin)
        if origin == "l2" then
          got = got + 1
          delays[#delays + 1] = layer2.monotonic() - tonumber(ev.content)
        end
      end }))
    io.write("ready\n")
    io.flush()
    local deadline = layer2.monotonic() + 120
    while got < %d and layer2.monotonic() < deadline do db:poll_wait() end
    for _, d in ipairs(delays) do io.write(("%%.6f\n"):format(d)) end
    db:close()
    os.execute("rm -rf " .. dir)
  ]]):format(cinfo, tostring(notify), count))
  f:close()
  local out = os.tmpname()
  local b = assert(io.popen(("lua5.4 %s > %s"):format(script, out), "w"))
  -- wait until B is up (its L1 is open and its cursor set) before saving
  for _ = 1, 200 do
    local r = io.open(out)
    local s = r and r:read("a") or ""
    if r then r:close() end
    if s:find("ready") then break end
    layer2.sleep(0.05)
  end
  local dir = os.tmpname()
  os.remove(dir)
  local a = assert(layer2.open(dir, { l2 = cinfo, nosync = true }))
  local key = ("7"):rep(63) .. "1"
  for i = 1, count do
    -- spaced irregularly so that saves fall anywhere in B's polling period
    layer2.sleep(0.05 + (i * 37 % 10) / 40)
    local t = now()
    local ev = assert(layer2.event.sign({ created_at = os.time(), kind = 1, tags = {}, content = ("%.6f"):format(t) },
      key))
    assert(a:save_event(ev))
  end
  b:close()
  local delays = {}
  for line in io.lines(out) do
    if line ~= "ready" then delays[#delays + 1] = tonumber(line) * 1000 end
  end
  a:close()
  os.execute("rm -rf " .. dir)
  os.remove(out)
  os.remove(script)
  assert(#delays == count, ("node B saw %d of %d events"):format(#delays, count))
  return queries.percentile(delays, 0.5), queries.percentile(delays, 0.99)
end

local COUNT = 40
local poll50, poll99 = cross_node(false, COUNT)
local note50, note99 = cross_node(true, COUNT)
local delay_rows = {
  { "polling every 1 s", ("%.0f / %.0f"):format(poll50, poll99) },
  { "LISTEN/NOTIFY (polling stays the safety net)", ("%.1f / %.1f"):format(note50, note99) },
}

print(("## bench/postgres (%s)\n"):format(_VERSION))
print("machine: " .. util.machine())
print("server: " .. psql("SHOW server_version"):gsub("%s+$", "") .. ", a throwaway cluster on a Unix socket, fsync on")
print(("data: %s, %d events made by layer2.gen, %.1f MB JSONL\n"):format(path, N, jsonl_bytes / 1e6))
print(util.table({ "what", "figure", "note" }, rows))
print(("\nquery µs p50 / p99, limit 50, JSON out (%d queries each, wall clock):\n"):format(ITER))
print(util.table({ "class", "PostgreSQL", "LMDB (L1)", "L1 faster by (p50)" }, qrows))
print(("\ncross-node delay, save on node A -> on_event on node B (another process), %d events, ms p50 / p99:\n")
  :format(COUNT))
print(util.table({ "how B learns", "ms" }, delay_rows))
local data = ("%dk generated events"):format(math.floor(N / 1000))
util.summary("import into PostgreSQL (COPY)", util.fmt_rate(N / t_pg) .. " events/s", data)
util.summary("L1 vs PostgreSQL, query p50 (limit 50)", ("%.0f x to %.0f x faster"):format(ratios[1], ratios[#ratios]),
  "median over classes " .. ("%.0f x"):format(ratios[math.ceil(#ratios / 2)]))
util.summary("cross-node delay, polling 1 s", ("%.0f ms p50"):format(poll50), ("p99 %.0f ms"):format(poll99))
util.summary("cross-node delay, NOTIFY", ("%.1f ms p50"):format(note50), ("p99 %.1f ms"):format(note99))
