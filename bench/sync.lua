-- bench/sync: NIP-77 sync of two stores of N + 1,000 events each, N in common and 1,000 only on each
-- side, with `--dir both` and the filter {}: round trips, bytes on the wire each way and seconds of
--   a. `layer2 sync` from a layer2 store against the example relay (tools/relay, nginx);
-- and, when STRFRY names a strfry binary, in the same run:
--   b. `layer2 sync` against a strfry relay;
--   c. `strfry sync` from a strfry db against the example relay;
--   d. `strfry sync` against a strfry relay (strfry's own baseline).
-- Every scenario starts from fresh copies of stores imported once, and ends by comparing the ids
-- both sides hold. A proxy (bench/wsproxy.lua) between the syncing client and the relay counts the
-- bytes and the messages the same way for every scenario.
--   lua5.4 bench/sync.lua [N]          STRFRY=/path/to/strfry lua5.4 bench/sync.lua [N]
local util = require("bench.util")
local dataset = require("bench.dataset")
local cjson = require("cjson")
local socket = require("socket")

local N = tonumber(arg and arg[1]) or 99000 -- the events both sides hold
local DIFF = 1000 -- the events only one side holds, each way
local REPEATS = 3 -- runs of each scenario, each on fresh copies; seconds are their median
local SEED = 7 -- of the draw of the spread layout's differences (the events are bench/dataset's: seed 1)
local WORKERS = 2
local MAX_SUBS = 200
local FILTER = "{}"

local ROOT = io.popen("pwd"):read("l")
local STRFRY = os.getenv("STRFRY")
local with_strfry = STRFRY ~= nil
local sh, output_of, read_file = util.sh, util.output_of, util.read_file
local t_start = socket.gettime()

local function load_average()
  return (read_file("/proc/loadavg") or ""):match("^(%S+ %S+ %S+)") or "?"
end
local load_start = load_average()

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function log(fmt, ...)
  io.stderr:write("bench/sync: ", fmt:format(...), "\n")
end

-- the data ----------------------------------------------------------------------------------------

-- Events that no other event replaces or deletes: the differences are drawn from these only, so
-- that each side holds exactly DIFF events the other lacks and both end with the same set.
local function regular(kind)
  return kind ~= 0 and kind ~= 3 and kind ~= 5 and not (kind >= 10000 and kind < 40000)
end

-- The layouts of the differences among the N + 2 x DIFF events (in file order, oldest first):
--   tail: the last 2 x DIFF regular events, the first DIFF of them only on A, the next DIFF only on B
--     (two relays that each missed the other's newest events);
--   spread: 2 x DIFF regular events drawn at random over the whole file, alternately A's and B's
--     (differences everywhere in the range: the harder case for a reconciliation).
local LAYOUTS = {
  { name = "tail", text = ("the newest: the last %d regular events of the file, the first %d only on A, the next "
    .. "%d only on B"):format(2 * DIFF, DIFF, DIFF), pick = function(regulars)
    local side = {}
    for i = #regulars - 2 * DIFF + 1, #regulars do
      side[regulars[i]] = i <= #regulars - DIFF and "A" or "B"
    end
    return side
  end },
  { name = "spread", text = ("spread: %d regular events drawn at random over the whole file (seed %d), "
    .. "alternately only on A and only on B"):format(2 * DIFF, SEED), pick = function(regulars)
    local state = SEED
    local function draw(n) -- Park-Miller, as layer2.gen: the same draw under every Lua
      state = state * 16807 % 2147483647
      return state % n + 1
    end
    local pool = {}
    for i, line in ipairs(regulars) do pool[i] = line end
    local chosen = {}
    for i = 1, 2 * DIFF do -- a partial Fisher-Yates shuffle
      local j = i - 1 + draw(#pool - i + 1)
      pool[i], pool[j] = pool[j], pool[i]
      chosen[i] = pool[i]
    end
    table.sort(chosen)
    local side = {}
    for i, line in ipairs(chosen) do side[line] = i % 2 == 1 and "A" or "B" end
    return side
  end },
}

-- Writes each layout's two sides as JSON lines: WORK/<layout>-A.jsonl and -B.jsonl.
local function write_sides(path, work)
  local regulars = {}
  local n = 0
  for line in io.lines(path) do
    n = n + 1
    if regular(tonumber(line:match('"kind"%s*:%s*(%d+)'))) then regulars[#regulars + 1] = n end
  end
  assert(#regulars >= 2 * DIFF, "too few regular events for the differences")
  for _, layout in ipairs(LAYOUTS) do
    local side = layout.pick(regulars)
    local a = assert(io.open(("%s/%s-A.jsonl"):format(work, layout.name), "w"))
    local b = assert(io.open(("%s/%s-B.jsonl"):format(work, layout.name), "w"))
    local i = 0
    for line in io.lines(path) do
      i = i + 1
      if side[i] ~= "B" then a:write(line, "\n") end
      if side[i] ~= "A" then b:write(line, "\n") end
    end
    a:close()
    b:close()
  end
end

-- stores ------------------------------------------------------------------------------------------
-- A store: { kind = "layer2" | "strfry", dir = a directory }; a strfry store's db is dir/db, its
-- configuration dir/strfry.conf (written again for each copy, which has another path).

local function strfry_conf(dir)
  return util.strfry_conf(ROOT, dir .. "/strfry.conf", dir .. "/db")
end

local function import(kind, dir, file) util.import(ROOT, kind, dir, file, STRFRY) end

local function copy(kind, from, to)
  sh(("rm -rf %s && cp -a %s %s"):format(to, from, to))
  if kind == "strfry" then strfry_conf(to) end
end

-- the sorted ids a store holds
local function ids_of(kind, dir)
  local cmd = kind == "layer2" and ("%s/bin/layer2 --path %s export 2>/dev/null"):format(ROOT, dir)
    or ("%s --config=%s/strfry.conf export 2>/dev/null"):format(STRFRY, dir)
  local ids = {}
  local p = assert(io.popen(cmd))
  for line in p:lines() do ids[#ids + 1] = assert(line:match('"id"%s*:%s*"(%x+)"'), "an event without id") end
  assert(p:close(), "failed: " .. cmd)
  table.sort(ids)
  return ids
end

local function same(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

-- a scenario --------------------------------------------------------------------------------------

local relays = { layer2 = util.layer2_relay({ root = ROOT, workers = WORKERS, max_subscriptions = MAX_SUBS,
  tag = "sync" }) }
if with_strfry then relays.strfry = util.strfry_relay({ root = ROOT, bin = STRFRY, tag = "sync" }) end

local SCENARIOS = {
  { id = "a", client = "layer2", relay = "layer2" },
  { id = "b", client = "layer2", relay = "strfry" },
  { id = "c", client = "strfry", relay = "layer2" },
  { id = "d", client = "strfry", relay = "strfry" },
}
local CLIENT_TEXT = { layer2 = "`layer2 sync`", strfry = "`strfry sync`" }
local RELAY_TEXT = { layer2 = "example relay", strfry = "strfry relay" }

-- the sync command of a client store against url; its output goes to out (stdout) and log (stderr)
local function sync_command(kind, dir, url, out, logfile)
  if kind == "layer2" then
    return ("%s/bin/layer2 --path %s sync %s %s --dir both --json >%s 2>%s"):format(ROOT, dir, url, q(FILTER), out,
      logfile)
  end
  return ("%s --config=%s/strfry.conf sync %s --filter %s --dir both >%s 2>%s"):format(STRFRY, dir, url, q(FILTER),
    out, logfile)
end

-- the proxy in front of a relay's port: { pid, port, out }
local function start_proxy(relay_port, out)
  local pid = tonumber(output_of(("lua5.4 %s/bench/wsproxy.lua %d %s >%s.log 2>&1 & echo $!"):format(ROOT, relay_port,
    out, out)))
  for _ = 1, 100 do
    local port = tonumber(read_file(out .. ".port"))
    if port then return { pid = pid, port = port, out = out } end
    socket.sleep(0.05)
  end
  os.execute(("kill %d 2>/dev/null"):format(pid))
  error("the proxy did not start: " .. (read_file(out .. ".log") or ""))
end

-- the proxy's counts, once the connection it served has closed (within 10 s)
local function proxy_counts(proxy)
  for _ = 1, 200 do
    local text = read_file(proxy.out)
    if text then
      util.wait_gone(proxy.pid)
      return cjson.decode(text)
    end
    socket.sleep(0.05)
  end
  os.execute(("kill %d 2>/dev/null"):format(proxy.pid))
  error("the proxy wrote no counts: " .. (read_file(proxy.out .. ".log") or ""))
end

-- One run of a scenario on fresh copies of the layout's base stores: its measures, or raises.
local function run(sc, bases, work, problems)
  local client, server = work .. "/client", work .. "/server"
  copy(sc.client, bases[sc.client].A, client)
  copy(sc.relay, bases[sc.relay].B, server)
  local r = relays[sc.relay].start(sc.relay == "layer2" and server or (server .. "/db"))
  local proxy
  local ok, res = pcall(function()
    assert(util.ready(r.port), ("the %s relay did not answer on port %d"):format(sc.relay, r.port))
    proxy = start_proxy(r.port, work .. "/proxy.json")
    local out, logfile = work .. "/sync.out", work .. "/sync.log"
    local t0 = socket.gettime()
    local done = os.execute(sync_command(sc.client, client, ("ws://127.0.0.1:%d/"):format(proxy.port), out, logfile))
    local seconds = socket.gettime() - t0
    local counts = proxy_counts(proxy)
    proxy = nil
    assert(done, ("%s failed: %s"):format(CLIENT_TEXT[sc.client], (read_file(logfile) or ""):sub(-600)))
    local m = { seconds = seconds, up = counts.up, down = counts.down }
    if sc.client == "layer2" then
      m.stats = cjson.decode(read_file(out))
      m.have, m.need = m.stats.have, m.stats.need
    else
      local h, n = (read_file(logfile) or ""):match("Set reconcile complete%. Have (%d+) need (%d+)")
      m.have, m.need = tonumber(h), tonumber(n)
    end
    return m
  end)
  if proxy then os.execute(("kill %d 2>/dev/null"):format(proxy.pid)) end
  local seen = relays[sc.relay].stop(r)
  if seen.count > 0 then problems[#problems + 1] = { where = "the relay in " .. sc.id, log = seen } end
  assert(ok, tostring(res) .. (seen.count > 0 and "; the relay's log: " .. table.concat(seen.lines, " | ") or ""))
  local a, b = ids_of(sc.client, client), ids_of(sc.relay, server)
  res.same, res.held = same(a, b), { #a, #b }
  sh(("rm -rf %s %s %s/proxy.json* %s/sync.*"):format(client, server, work, work))
  return res
end

-- main --------------------------------------------------------------------------------------------

local M = N + 2 * DIFF
local DATA = dataset.ensure(M)
local work = util.temp_dir("sync")
write_sides(DATA, work)

local scenarios = {}
for _, sc in ipairs(SCENARIOS) do
  if with_strfry or (sc.client == "layer2" and sc.relay == "layer2") then scenarios[#scenarios + 1] = sc end
end

-- A layout's runs: runs[scenario id][repeat], each on fresh copies of base stores imported once
local function measure(layout, problems)
  local bases = {} -- bases[kind].A / .B
  for _, kind in ipairs(with_strfry and { "layer2", "strfry" } or { "layer2" }) do
    bases[kind] = {}
    for _, side in ipairs({ "A", "B" }) do
      local dir = ("%s/base-%s-%s"):format(work, kind, side)
      log("%s: importing side %s into %s", layout.name, side, kind)
      import(kind, dir, ("%s/%s-%s.jsonl"):format(work, layout.name, side))
      bases[kind][side] = dir
    end
  end
  -- the scenarios alternate within each repeat, so that all see the same machine state
  local runs = {}
  for rep = 1, REPEATS do
    for _, sc in ipairs(scenarios) do
      log("%s, run %d of %d: %s (%s against the %s)", layout.name, rep, REPEATS, sc.id, CLIENT_TEXT[sc.client],
        RELAY_TEXT[sc.relay])
      runs[sc.id] = runs[sc.id] or {}
      runs[sc.id][rep] = run(sc, bases, work, problems)
    end
  end
  for _, kind in pairs(bases) do sh(("rm -rf %s %s"):format(kind.A, kind.B)) end
  return runs
end

local results, problems = {}, {}
local ok_all, err_all = pcall(function()
  for _, layout in ipairs(LAYOUTS) do results[layout.name] = measure(layout, problems) end
end)
-- the copies and the data go whatever happened (run stops the relay of a failed run)
sh("rm -rf " .. work)
assert(ok_all, err_all)

-- formatting ---------------------------------------------------------------------------------------

local function median(list)
  local s = { table.unpack(list) }
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

local function rounds(m) return (m.up.messages["NEG-OPEN"] or 0) + (m.up.messages["NEG-MSG"] or 0) end

-- the payload bytes of the reconciliation's messages (NEG-OPEN, NEG-MSG, NEG-CLOSE, NEG-ERR) one way
local function neg_bytes(counts)
  local n = 0
  for name, bytes in pairs(counts.payload) do
    if name:match("^NEG%-") then n = n + bytes end
  end
  return n
end

-- a measure over the repeats: its median, and whether the repeats disagreed
local function over(list, f)
  local values, differ = {}, false
  for i, m in ipairs(list) do
    values[i] = f(m)
    if values[i] ~= values[1] then differ = true end
  end
  return median(values), differ, values
end

local function ratio(a, b)
  if not a or not b or b == 0 or a == 0 then return "-" end
  return ("%.2f"):format(a / b)
end

local function int(n) return tostring(math.floor(n + 0.5)) end

local function messages_text(msgs)
  local parts = {}
  for name, n in pairs(msgs) do parts[#parts + 1] = ("%s %d"):format(name, n) end
  table.sort(parts)
  return table.concat(parts, ", ")
end

local notes = {}
local function note(s) notes[#notes + 1] = "- " .. s end

print("## bench/sync: NIP-77 sync, `layer2 sync`" .. (with_strfry and " and `strfry sync`, side by side\n" or "\n"))
print("machine: " .. util.machine())
print(("data: %s (layer2.gen, seed 1, 2,000 authors, %d signed events): %d in common and %d only on each side, "
  .. "so each side holds %d; differences only among events nothing replaces or deletes (kinds 1, 6, 7)")
  :format(DATA, M, N, DIFF, N + DIFF))
print(("sync: `--dir both`, filter `%s`; A syncs (the client), B serves (the relay, %s); each scenario %d times, "
  .. "each on fresh copies of stores imported once (`layer2 import --no-verify`, `strfry import --no-verify`)")
  :format(FILTER, with_strfry and "the example relay or strfry" or "the example relay", REPEATS))
print(("layer2: examples/openresty by tools/relay, %d nginx workers, --max-subscriptions %d; `layer2 sync` is "
  .. "`bin/layer2 --path A sync URL '{}' --dir both --json` (Lua 5.4, which runs it again under LuaJIT)")
  :format(WORKERS, MAX_SUBS))
if with_strfry then
  print(("strfry: %s (%s), bench/strfry/strfry.conf with its port and db rewritten; `strfry sync URL --filter '{}' "
    .. "--dir both`"):format(relays.strfry.version(), STRFRY))
else
  print("strfry: skipped (set STRFRY=/path/to/strfry to measure it side by side)")
end

for _, layout in ipairs(LAYOUTS) do
  local runs = results[layout.name]
  print(("\n### differences %s\n"):format(layout.text))
  local headers = { "scenario", "round trips", "bytes client→relay", "bytes relay→client",
    "of them NEG-* payload, client→relay / relay→client",
    ("seconds, median of %d (min-max)"):format(REPEATS), "only on A / only on B found", "same set (events each side)" }
  local rows, med = {}, {}
  for _, sc in ipairs(scenarios) do
    local list = runs[sc.id]
    local rt, rt_differ = over(list, rounds)
    local up, up_differ, ups = over(list, function(m) return m.up.bytes end)
    local down, down_differ, downs = over(list, function(m) return m.down.bytes end)
    local secs, _, all_secs = over(list, function(m) return m.seconds end)
    local neg_up, neg_up_differ = over(list, function(m) return neg_bytes(m.up) end)
    local neg_down, neg_down_differ = over(list, function(m) return neg_bytes(m.down) end)
    table.sort(all_secs)
    table.sort(ups)
    table.sort(downs)
    local same_all, held = true, list[1].held
    for _, m in ipairs(list) do
      same_all = same_all and m.same
      if m.held[1] ~= held[1] or m.held[2] ~= held[2] then held = m.held end
    end
    med[sc.id] = { rounds = rt, up = up, down = down, seconds = secs, neg = neg_up + neg_down }
    local function spread(v, differ, sorted)
      return differ and ("%s (%s-%s)"):format(int(v), int(sorted[1]), int(sorted[#sorted])) or int(v)
    end
    rows[#rows + 1] = { ("%s. %s against the %s"):format(sc.id, CLIENT_TEXT[sc.client], RELAY_TEXT[sc.relay]),
      rt_differ and (int(rt) .. " (differ)") or int(rt), spread(up, up_differ, ups), spread(down, down_differ, downs),
      ("%s / %s%s"):format(int(neg_up), int(neg_down), (neg_up_differ or neg_down_differ) and " (differ)" or ""),
      ("%.2f (%.2f-%.2f)"):format(secs, all_secs[1], all_secs[#all_secs]),
      list[1].have and ("%d / %d"):format(list[1].have, list[1].need) or "?",
      ("%s (%d / %d)"):format(same_all and "yes" or "NO", held[1], held[2]) }
    local m1 = list[1]
    note(("%s, %s: messages client→relay: %s; relay→client: %s%s"):format(layout.name, sc.id,
      messages_text(m1.up.messages), messages_text(m1.down.messages),
      m1.stats and ("; `layer2 sync` counted %d round trips, %.2f s of its own"):format(m1.stats.rounds,
        m1.stats.seconds) or ""))
    for _, m in ipairs(list) do
      if m.up.compressed > 0 or m.down.compressed > 0 or m.down.extensions then
        note(("%s, %s: permessage-deflate in use (%s): %d + %d compressed frames, their messages not named")
          :format(layout.name, sc.id, tostring(m.down.extensions), m.up.compressed, m.down.compressed))
        break
      end
    end
  end
  print(util.table(headers, rows))
  local a, b, c, d = med.a, med.b, med.c, med.d
  util.summary(("sync, %d each way (%s), layer2 sync vs example relay"):format(DIFF, layout.name),
    ("%.2f s, %d round trips"):format(a.seconds, a.rounds), ("%d + %d bytes; %s"):format(a.up, a.down,
    with_strfry and ("strfry sync %.2f s, %d round trips, %d + %d bytes"):format(c.seconds, c.rounds, c.up, c.down)
    or "strfry skipped"))
  if with_strfry then
    print("\nmeasured in this run, strfry sync / layer2 sync (>1: layer2 better: fewer round trips, fewer bytes, "
      .. "less time):\n")
    local function ratio_row(what, l2, sf)
      return { what, ratio(sf.rounds, l2.rounds), ratio(sf.up, l2.up), ratio(sf.down, l2.down),
        ratio(sf.up + sf.down, l2.up + l2.down), ratio(sf.neg, l2.neg), ratio(sf.seconds, l2.seconds) }
    end
    print(util.table({ "against", "round trips", "bytes client→relay", "bytes relay→client", "bytes both ways",
      "NEG-* payload both ways", "seconds" }, { ratio_row("the example relay (c / a)", a, c),
      ratio_row("strfry's relay (d / b)", b, d) }))
  end
end

print("\nnotes:")
print("- round trips: the NEG-OPEN and NEG-MSG messages the client sent (each waits for the relay's answer); "
  .. "bytes: on the wire, the HTTP upgrade and websocket framing included, as bench/wsproxy.lua (a TCP proxy "
  .. "between client and relay, TCP_NODELAY both ways, each frame passed on whole in one write as a relay writes it) "
  .. "counted them; seconds: wall time of the sync command, start to exit (opening its store and reading its items "
  .. "included), through the proxy")
print("- compression: strfry's client offers permessage-deflate; the proxy forwards the handshake unchanged; "
  .. "neither relay accepts it (the example relay has none, bench/strfry/strfry.conf turns strfry's off as for "
  .. "bench/relay), so every frame is plain and the proxy reads each message's type (it checks each 101 answer and "
  .. "each frame's RSV1 bit, and says so below if it saw compression)")
print("- only on A / only on B: the differences the client's reconciliation found (`layer2 sync --json` have / "
  .. "need; strfry's log line `Set reconcile complete. Have X need Y`); same set: both sides' ids equal after "
  .. "the sync (`layer2 export`, `strfry export`), checked on every run")
if with_strfry then
  print("- the transfers after the reconciliation differ: `layer2 sync` fetches with REQs of up to 500 ids, "
    .. "4 in flight, and keeps up to 200 EVENTs awaiting their OK; `strfry sync` fetches with one REQ of 50 ids "
    .. "at a time and keeps up to 100 EVENTs awaiting their OK")
end
for _, s in ipairs(notes) do print(s) end
util.print_log_problems(problems)
print(("- load average (1, 5, 15 min): %s at the start, %s at the end; run time %.0f s"):format(load_start,
  load_average(), socket.gettime() - t_start))
