-- bench/backend: the two-level store against the raw stores it is made of, side by side in one
-- run, as ratios (what the backend costs over doing the same work on the stores directly).
--   lua5.4 bench/backend.lua [events]      (default 20000; one-by-one saves use the first 2,000)
-- Both levels are local LMDB with fsync on (the defaults).
local layer2 = require("layer2")
local util = require("bench.util")
local dataset = require("bench.dataset")

local N = tonumber(arg and arg[1]) or 20000
local path = dataset.ensure(N)
local lines = {}
for line in io.lines(path) do lines[#lines + 1] = line end
local ONE_BY_ONE = math.min(2000, #lines)

local function fresh(name)
  local dir = "bench/data/backend-" .. name
  os.execute("rm -rf " .. dir)
  return dir
end

local rows = {}
local function row(what, backend, raw, unit, note)
  rows[#rows + 1] = { what, backend .. " " .. unit, raw .. " " .. unit, ("%.2f x"):format(tonumber(backend) /
    tonumber(raw)), note }
end
local function rate(n, seconds) return ("%.0f"):format(n / seconds) end

-- writes one by one: the backend (L2 verifies, L1 trusts) against the two raw stores doing the same
local dir = fresh("one")
local db = assert(layer2.open(dir))
local w0 = util.wall()
for i = 1, ONE_BY_ONE do db:save_event(lines[i]) end
local t_backend = util.wall() - w0
db:close()
dir = fresh("raw")
local l1 = assert(layer2.lmdb.open(dir .. "/l1", { cache = true }))
local l2 = assert(layer2.lmdb.open(dir .. "/l2"))
w0 = util.wall()
for i = 1, ONE_BY_ONE do
  l2:save_event(lines[i])
  l1:save_event(lines[i], { verify = false })
end
local t_raw = util.wall() - w0
l1:close()
l2:close()
row("save_event, one by one", rate(ONE_BY_ONE, t_backend), rate(ONE_BY_ONE, t_raw), "events/s",
  ("%d events; raw: L2 save_event then L1 save_event (trusted)"):format(ONE_BY_ONE))

-- batches of 100 against L2's import of the same events
dir = fresh("batch")
db = assert(layer2.open(dir))
w0 = util.wall()
for from = 1, #lines, 100 do
  local batch = {}
  for i = from, math.min(#lines, from + 99) do batch[#batch + 1] = lines[i] end
  assert(db:save_events(batch))
end
t_backend = util.wall() - w0
db:close()
dir = fresh("import")
l2 = assert(layer2.lmdb.open(dir))
w0 = util.wall()
assert(l2:import(path))
t_raw = util.wall() - w0
l2:close()
row("save_events, batches of 100", rate(#lines, t_backend), rate(#lines, t_raw), "events/s",
  "raw: L2's import of the same file (verified, 2 threads)")

-- L1's own fsync (l1.sync): L1 keeps its place in L2's feed and is rebuilt from it after any loss,
-- so it needs integrity, not durability. "full" is LMDB's two fsyncs a commit, "data" one (the
-- default with an L2 that has a feed), "none" leaves it to the kernel. Rates measured in turns,
-- best of three each.
local function save_rate(sync, batch)
  local d = assert(layer2.open(fresh("sync-" .. sync), { l1 = { sync = sync } }))
  local n = batch == 1 and ONE_BY_ONE or #lines
  local t0 = util.wall()
  for from = 1, n, batch do
    if batch == 1 then
      d:save_event(lines[from])
    else
      local list = {}
      for i = from, math.min(n, from + batch - 1) do list[#list + 1] = lines[i] end
      assert(d:save_events(list))
    end
  end
  local t = util.wall() - t0
  d:close()
  return n / t
end
for _, batch in ipairs({ 1, 100 }) do
  local best = { full = 0, data = 0, none = 0 }
  for _ = 1, 3 do
    for _, sync in ipairs({ "full", "data", "none" }) do best[sync] = math.max(best[sync], save_rate(sync, batch)) end
  end
  local what = batch == 1 and "save_event, one by one" or "save_events, batches of 100"
  for _, sync in ipairs({ "data", "none" }) do
    row(("%s: l1.sync %s vs full"):format(what, sync), ("%.0f"):format(best[sync]), ("%.0f"):format(best.full),
      "events/s", ("raw column: l1.sync = full; L2 fsyncs each commit in all three (%d events)"):format(
        batch == 1 and ONE_BY_ONE or #lines))
  end
end

-- reads: an imported data set (it goes to L2). The rows of answers L1 holds open it with
-- l1.admit = "always" (L1 fills on the first ask): by default an L1 without a size limit in front
-- of the embedded L2 copies nothing L2 returns
dir = fresh("read")
db = assert(layer2.open(dir, { l1 = { admit = "always" } }))
assert(db:import(path))
local ids = {}
for i = 1, #lines, math.max(1, math.floor(#lines / 500)) do ids[#ids + 1] = layer2.event.parse(lines[i]).id end

local function per_call(fn, n)
  local t0 = util.now()
  for i = 1, n do fn(i) end
  return (util.now() - t0) / n * 1e6
end

-- µs per call of a and of b, each the best of 5 rounds taken in turn (a busy 2-core machine
-- slows one round or another; taking turns gives both the same chances)
local function side_by_side(a, b, n)
  local best_a, best_b = math.huge, math.huge
  for _ = 1, 5 do
    best_a = math.min(best_a, per_call(a, n))
    best_b = math.min(best_b, per_call(b, n))
  end
  return best_a, best_b
end

-- id lookups L1 answers: each asked before, which brought it into L1
for _ = 1, 3 do
  for _, id in ipairs(ids) do db:query_events({ ids = { id } }) end
end
local us_backend, us_raw = side_by_side(function(i) db:query_events({ ids = { ids[i % #ids + 1] } }) end,
  function(i) db.l1:query_events({ ids = { ids[i % #ids + 1] } }) end, 10000)
rows[#rows + 1] = { "id lookup L1 holds", ("%.1f µs"):format(us_backend), ("%.1f µs"):format(us_raw),
  ("%.2f x"):format(us_backend / us_raw), "raw: db.l1:query_events, the same ids" }

local function query_row(what, f, raw_store, note)
  db:query_events(f) -- the first ask may fill L1
  local b, r = side_by_side(function() db:query_events(f) end, function() raw_store:query_events(f) end, 400)
  rows[#rows + 1] = { what, ("%.1f µs"):format(b), ("%.1f µs"):format(r), ("%.2f x"):format(b / r), note }
end
query_row("kinds [1] limit 50, repeated", { kinds = { 1 }, limit = 50 }, db.l2, "raw: db.l2 (L1 holds too little)")
query_row("kinds [1] limit 500, repeated", { kinds = { 1 }, limit = 500 }, db.l2, "raw: db.l2")

-- p99 against p50 over 1,000 mixed queries (wall clock per query), through the backend and, the
-- same queries, asked of L2 alone: the mix has classes of very different cost (an id lookup, a
-- limit-100 page), so its own p99 / p50 is the raw store's as much as the backend's
local function mixed(store)
  math.randomseed(7)
  local times = {}
  for i = 1, 1000 do
    local ev = layer2.event.parse(lines[math.random(#lines)])
    local f = ({ { kinds = { ev.kind }, limit = 50 }, { authors = { ev.pubkey }, limit = 20 }, { ids = { ev.id } },
      { kinds = { 1 }, since = ev.created_at, limit = 100 } })[i % 4 + 1]
    local t0 = util.now()
    store:query_events(f)
    times[i] = util.now() - t0
  end
  table.sort(times)
  return times[500] * 1e6, times[990] * 1e6
end
local raw50, raw99 = mixed(db.l2)
-- this handle's L1 fills on each first ask; layer2.open's default (a fresh store: the same queries
-- would find what the first run filled) copies nothing
local fill50, fill99 = mixed(db)
db:close()
dir = fresh("read-default")
db = assert(layer2.open(dir))
assert(db:import(path))
local p50, p99 = mixed(db)
rows[#rows + 1] = { "1,000 mixed queries, p99 / p50", ("%.0f / %.0f µs = %.1f"):format(p99, p50, p99 / p50),
  ("%.0f / %.0f µs = %.1f"):format(raw99, raw50, raw99 / raw50), ("%.2f x"):format((p99 / p50) / (raw99 / raw50)),
  "kinds, authors, ids, since: new filters each time; raw: db.l2; ratio of the two p99 / p50"
}
rows[#rows + 1] = { "1,000 mixed queries, p50 / p99", ("%.0f / %.0f µs"):format(p50, p99),
  ("%.0f / %.0f µs"):format(raw50, raw99), ("%.2f / %.2f x"):format(p50 / raw50, p99 / raw99),
  "layer2.open's default: an L1 without a size limit in front of the embedded L2 copies nothing L2 returns" }
rows[#rows + 1] = { "1,000 mixed queries, p50 / p99, L1 filling", ("%.0f / %.0f µs"):format(fill50, fill99),
  ("%.0f / %.0f µs"):format(raw50, raw99), ("%.2f / %.2f x"):format(fill50 / raw50, fill99 / raw99),
  'l1.admit = "always": a first ask reaches L2 and fills L1 in one commit' }
db:close()
os.execute("rm -rf bench/data/backend-*")

print(("## bench/backend (%s)\n"):format(_VERSION .. (jit and (" / " .. jit.version) or "")))
print("machine: " .. util.machine())
print(("data: %d events made by layer2.gen (bench/dataset.lua); both levels local LMDB, fsync on\n"):format(#lines))
print(util.table({ "what", "backend", "raw stores", "backend / raw", "note" }, rows))
for _, r in ipairs(rows) do util.summary("backend: " .. r[1], r[4], r[2] .. " vs " .. r[3]) end
