-- bench/compare: the query classes of bench/store timed on this tree's build and on an older
-- commit's, side by side, each on a store it imported itself from the same data set.
--   lua5.4 bench/compare.lua REV [events]       (make bench-compare REV=... [BENCH_EVENTS=...])
-- A shared machine's speed drifts by half between runs of one build, so the builds run in
-- alternating processes (ROUNDS each, the first one alternating too); for each query the fastest
-- of its rounds counts, and each cell is the median over its queries. A ratio above 1 is a cell
-- slower than REV's.
local ROUNDS, ITER = 6, 200

-- child modes, run under one build's LUA_PATH/LUA_CPATH with this tree's bench/ first on the path
if arg[1] == "--import" then
  local db = assert(require("layer2").lmdb.open(arg[2]))
  assert(db:import(arg[3], { verify = false }))
  db:close()
  return
elseif arg[1] == "--time" then
  local queries = require("bench.queries")
  local db = assert(require("layer2").lmdb.open(arg[2]))
  local _, sample = queries.sample(arg[3])
  local out = assert(io.open(arg[4], "w"))
  local clock = os.clock
  for pass = 0, 1 do -- an untimed pass first: every page the queries touch is in memory
    for _, cl in ipairs(queries.classes(sample)) do
      for _, limit in ipairs({ 50, 500 }) do
        for _, json in ipairs({ false, true }) do
          collectgarbage()
          local opts = { json = json }
          for i = 1, ITER do
            local f = queries.limit(cl[2](i), limit)
            local t0 = clock()
            local res = db:query_events(f, opts)
            local us = (clock() - t0) * 1e6
            if pass == 1 then out:write(("%s\t%d\t%s\t%d\t%.1f\t%d\n"):format(cl[1], limit, json, i, us, #res)) end
          end
        end
      end
    end
  end
  out:close()
  db:close()
  return
end

local util = require("bench.util")
local dataset = require("bench.dataset")
local percentile = require("bench.queries").percentile
local rev = arg[1]
if not rev or rev:match("^%-") then
  io.stderr:write("usage: lua5.4 bench/compare.lua REV [events]   (a commit of this repository)\n")
  os.exit(2)
end
local N = tonumber(arg[2]) or 100000
local path = dataset.ensure(N)

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  local ok = p:close()
  assert(ok, "failed: " .. cmd)
  return out
end

local root = sh("pwd"):gsub("\n$", "")
local work = root .. "/bench/data/compare"
local p = io.popen(("git rev-parse --verify --quiet '%s^{commit}'"):format(rev:gsub("'", "")))
local sha = p:read("l")
p:close()
if not sha then
  io.stderr:write(("bench/compare: '%s' is not a commit of this repository\n"):format(rev))
  os.exit(2)
end
local old = work .. "/" .. sha:sub(1, 12)
-- REV's tree, built (kept across runs: building takes a minute)
if not io.open(old .. "/build/lua5.4/layer2/core.so") then
  sh(("rm -rf '%s' && mkdir -p '%s' && git archive %s | tar -x -C '%s'"):format(old, old, sha, old))
  print("building " .. sha:sub(1, 12) .. " ...")
  sh(("make -s -C '%s' build/lua5.4/layer2/core.so >&2"):format(old))
end
local function env(tree)
  return sh(("make -s -C '%s' env"):format(tree)):gsub("\n", "; ")
    .. ("export LUA_PATH='%s/?.lua;'\"$LUA_PATH\"; "):format(root)
end
local builds = {
  { name = sha:sub(1, 12), env = env(old) },
  { name = "this tree", env = env(root) },
}
for _, b in ipairs(builds) do
  b.store = ("%s/store-%s-%d"):format(work, b.name:gsub(" ", "-"), N)
  sh(("rm -rf '%s'"):format(b.store))
  local w0 = util.wall()
  sh(("%s lua5.4 bench/compare.lua --import '%s' '%s'"):format(b.env, b.store, path))
  b.import_s = util.wall() - w0
  b.times = {} -- cell -> i -> fastest µs
  b.counts = {} -- cell -> i -> events returned
end

local cells = {}
for round = 1, ROUNDS do
  for k = 1, 2 do
    local b = builds[(round + k) % 2 + 1]
    local tsv = ("%s/round-%s.tsv"):format(work, b.name:gsub(" ", "-"))
    sh(("%s lua5.4 bench/compare.lua --time '%s' '%s' '%s'"):format(b.env, b.store, path, tsv))
    for line in io.lines(tsv) do
      local class, limit, json, i, us, n = line:match("^(.-)\t(%d+)\t(%a+)\t(%d+)\t([%d.]+)\t(%d+)$")
      local cell = ("%s\t%s\t%s"):format(class, limit, json)
      if not b.times[cell] then
        b.times[cell], b.counts[cell] = {}, {}
        if not cells[cell] then
          cells[#cells + 1] = cell
          cells[cell] = true
        end
      end
      i = tonumber(i)
      b.times[cell][i] = math.min(b.times[cell][i] or math.huge, tonumber(us))
      b.counts[cell][i] = tonumber(n)
    end
    os.remove(tsv)
  end
  io.stderr:write(("round %d of %d done\n"):format(round, ROUNDS))
end

local rows, worst, differ = {}, 0, 0
for _, cell in ipairs(cells) do
  local class, limit, json = cell:match("^(.-)\t(%d+)\t(%a+)$")
  local a, b = percentile(builds[1].times[cell], 0.5), percentile(builds[2].times[cell], 0.5)
  for i, n in ipairs(builds[1].counts[cell]) do
    if builds[2].counts[cell][i] ~= n then differ = differ + 1 end
  end
  local ratio = b / math.max(a, 1)
  if a >= 20 then worst = math.max(worst, ratio) end -- a cell of a few µs is at the clock's resolution
  rows[#rows + 1] = { class, limit, json == "true" and "JSON" or "table", ("%.0f"):format(a), ("%.0f"):format(b),
    ("%.2f"):format(ratio) }
end
for _, b in ipairs(builds) do sh(("rm -rf '%s'"):format(b.store)) end

print(("## bench/compare: this tree against %s (%s)\n"):format(sha:sub(1, 12), _VERSION))
print("machine: " .. util.machine())
print(("data: %s, %d events made by layer2.gen; each build imported it itself (%s %.1f s, this tree %.1f s)"):format(
  path, N, builds[1].name, builds[1].import_s, builds[2].import_s))
print(("query CPU µs: per query the fastest of %d alternating rounds, then the median of %d queries\n"):format(
  ROUNDS, ITER))
print(util.table({ "class", "limit", "answer", sha:sub(1, 12), "this tree", "ratio" }, rows))
print(("\nslowest cell against %s (of those over 20 µs): %.2f; queries whose answers differ in size: %d"):format(
  sha:sub(1, 12), worst, differ))
