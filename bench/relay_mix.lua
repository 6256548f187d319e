-- bench/relay_mix: the REQ mix of bench/relay (400 distinct filters made from the stored events,
-- each asked once on one connection, one at a time) as the store grows: for each size, the same
-- number of events imported into a fresh store (`layer2 import`; `strfry import` when STRFRY names
-- a strfry binary), the relay started on it, and the mix asked of it. Query cost as data grows:
-- the ratio should hold from the small store to the large one.
--   lua5.4 bench/relay_mix.lua [sizes]      STRFRY=/path/to/strfry lua5.4 bench/relay_mix.lua 20000,1000000
-- The events are bench/data's generated set (bench/dataset.lua: made once, the large one takes
-- about two minutes and 860 MB); the client is bench/relay.mjs's reqMix.
local util = require("bench.util")
local dataset = require("bench.dataset")
local cjson = require("cjson")

local SIZES = {}
for n in ((arg and arg[1]) or "20000,1000000"):gmatch("%d+") do SIZES[#SIZES + 1] = tonumber(n) end
local MIX = { n = 400, seed = 7 }
local WORKERS, MAX_SUBS = 2, 200

local ROOT = io.popen("pwd"):read("l")
local NODE_DIR = ROOT .. "/build/node"
-- the mix's client: bench/reqmix.c (node makes the filters)
local CLIENT = util.reqmix_client(ROOT)
local STRFRY = os.getenv("STRFRY")
local sh, read_file, write_file = util.sh, util.read_file, util.write_file

local kinds = { util.layer2_relay({ root = ROOT, workers = WORKERS, max_subscriptions = MAX_SUBS, tag = "mix" }) }
if STRFRY then kinds[2] = util.strfry_relay({ root = ROOT, bin = STRFRY, tag = "mix" }) end

util.setup_node(ROOT)

-- the first n events of the largest file made: one set, so a smaller store holds a prefix of the larger
local largest = 0
for _, n in ipairs(SIZES) do largest = math.max(largest, n) end
local DATA = ROOT .. "/" .. dataset.ensure(largest)

-- a file of the first n lines of DATA (the import's input)
local function first_lines(n, path)
  sh(("head -n %d %s > %s"):format(n, DATA, path))
  return path
end

-- Imports the file into a fresh store of `kind` in dir (util.import); returns the seconds it took.
local function import(kind, dir, file)
  local t0 = util.wall()
  util.import(ROOT, kind.name, dir, file, STRFRY)
  return util.wall() - t0
end

-- The mix against `kind` started on the store in dir, twice on the same relay: first asked and
-- asked again (an L1 that copies what L2 returns would answer the second). Problems in its log go
-- to `problems`.
local function measure(kind, dir, n, problems)
  local r = kind.start(kind.name == "layer2" and dir or dir .. "/db")
  local ok, out = util.ready(r.port), ("%s did not answer on port %d"):format(kind.name, r.port)
  local passes = {}
  for pass = 1, 2 do
    if not ok then break end
    local cfg_path, out_path = os.tmpname(), os.tmpname()
    write_file(cfg_path, cjson.encode({ url = r.url, file = DATA,
      reqmix = { from = 0, count = n, n = MIX.n, seed = MIX.seed, pids = kind.pids(r), client = CLIENT } }))
    ok, out = pcall(function()
      sh(("cd %s && node --max-old-space-size=4096 relay.mjs %s %s"):format(NODE_DIR, cfg_path, out_path))
      return cjson.decode(assert(read_file(out_path))).reqmix
    end)
    passes[pass] = out
    os.remove(cfg_path)
    os.remove(out_path)
  end
  local seen = kind.stop(r)
  if seen.count > 0 then problems[#problems + 1] = { where = ("%s, %d events"):format(kind.name, n), log = seen } end
  assert(ok, tostring(out))
  return passes
end

local function ms(v) return ("%.2f"):format(v) end
local function ratio(a, b) return (a and b and b > 0) and ("%.2f"):format(a / b) or "-" end

local rows, problems, differ = {}, {}, {}
for _, n in ipairs(SIZES) do
  local file = first_lines(n, os.tmpname())
  local res, imported = {}, {}
  for _, kind in ipairs(kinds) do
    io.stderr:write(("bench/relay_mix: %s, %d events: import, then the mix twice\n"):format(kind.name, n))
    local dir = util.temp_dir("mix-" .. kind.name)
    imported[kind.name] = import(kind, dir, file)
    res[kind.name] = measure(kind, dir, n, problems)
    sh("rm -rf " .. dir)
  end
  os.remove(file)
  for pass, name in ipairs({ "first asked", "asked again" }) do
    local l2, sf = res.layer2[pass], res.strfry and res.strfry[pass]
    local row = { ("%d"):format(n), name, pass == 1 and ("%.0f s"):format(imported.layer2) or "", ("%d"):format(l2.events),
      ("%.1f"):format(l2.total_ms), ms(l2.p50), ms(l2.p90), ms(l2.p99), ms(l2.relay_cpu_ms) }
    if sf then
      for _, v in ipairs({ pass == 1 and ("%.0f s"):format(imported.strfry) or "", ("%.1f"):format(sf.total_ms),
        ms(sf.p50), ms(sf.p90), ms(sf.p99), ms(sf.relay_cpu_ms), ratio(sf.total_ms, l2.total_ms), ratio(sf.p50, l2.p50),
        ratio(sf.p90, l2.p90), ratio(sf.relay_cpu_ms, l2.relay_cpu_ms) }) do
        row[#row + 1] = v
      end
      local d = 0
      for i, c in ipairs(l2.counts) do if c ~= sf.counts[i] then d = d + 1 end end
      if d > 0 then
        differ[#differ + 1] = ("%d events, %s: %d of %d REQs returned a different number of events"):format(n, name, d,
          MIX.n)
      end
    end
    rows[#rows + 1] = row
  end
end

local headers = { "stored events", "mix", "layer2 import", "events returned", "layer2 all REQs ms", "p50", "p90", "p99",
  "relay CPU ms" }
if STRFRY then
  for _, h in ipairs({ "strfry import", "strfry all REQs ms", "p50", "p90", "p99", "relay CPU ms",
    "total strfry / layer2 (>1: layer2 better)", "p50 ratio", "p90 ratio", "relay CPU ratio" }) do
    headers[#headers + 1] = h
  end
end

print("## bench/relay_mix: the REQ mix as the store grows\n")
print(("- machine: %s"):format(util.machine()))
print(("- data: the first N of %s (layer2.gen, seed 1), imported with `layer2 import --no-verify`%s")
  :format((DATA:gsub("^" .. ROOT .. "/", "")), STRFRY and " and `strfry import --no-verify`" or ""))
print(("- relays: the example relay (%d workers, L1 unlimited)%s; client bench/reqmix.c (a websocket client in C "
  .. "that counts EVENT frames by their head; node makes the filters) on the same machine; relay CPU: every thread of "
  .. "the relay's processes while the mix ran"):format(WORKERS, STRFRY and ", strfry " .. util.output_of(STRFRY
  .. " --version 2>/dev/null") or "; strfry skipped (STRFRY unset)"))
print(("- the mix: %d distinct filters made from the stored events (ids, authors, author and kind, #t, #p, kinds, "
  .. "time windows; limits 20-500; seed %d), each asked once on one connection, one at a time\n"):format(MIX.n,
  MIX.seed))
print(util.table(headers, rows))
print("\nnotes:")
print("- layer2: an import leaves L1 proving nothing of what it brought, so each REQ is answered by L2. The example "
  .. "relay's L1 (no size limit, in front of the embedded LMDB L2) copies nothing L2 returns (l1.admit = \"never\": "
  .. "reading that L2 costs what reading L1 does, and a copy is a write in the worker's event loop), so both passes "
  .. "are L2's. strfry has one level: its two passes differ by the page cache only")
for _, d in ipairs(differ) do print("- " .. d) end
util.print_log_problems(problems)
