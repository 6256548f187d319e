-- bench/relay: the example relay (nginx + lua-nginx-module, 2 workers; also with L1 fsyncing each
-- commit, and with a five-line write and read policy) and, when STRFRY names a strfry binary,
-- strfry beside it in the same run, each fresh with an empty store per publish run:
--   1. publish rate by 1, 16 and 64 pipelining websocket clients, with the OK latency;
--   2. REQ round trips at limit 50 and 500 on the store the last publish run filled, and a REQ mix:
--      400 distinct filters each asked once;
--   3. live fan-out: 10,000 subscriptions on 100 connections, 1,000 new events/s for 10 s;
--   4. fairness: one connection floods 20,000 EVENTs, another's single EVENTs wait how long;
--   5. memory: 10 clients ask for 400 stored notes 100 times each and read nothing.
--   lua5.4 bench/relay.lua [events]          STRFRY=/path/to/strfry lua5.4 bench/relay.lua [events]
-- The client is bench/relay.mjs (node + ws), one process per relay instance, so one clock.
local util = require("bench.util")
local dataset = require("bench.dataset")
local cjson = require("cjson")

local N = tonumber(arg and arg[1]) or 20000
local CLIENTS = { 1, 16, 64 }
-- EVENTs a publishing connection may have unacknowledged: the same for both relays
local WINDOW = 1000
local REQS = { { limit = 50, n = 200, warmup = 20 }, { limit = 500, n = 100, warmup = 20 } }
-- distinct filters made from the published events, each asked once (bench/relay.mjs, reqMix)
local REQMIX = { from = 0, count = N, n = 400, seed = 7 }
local DATASET = 100000
-- fan-out events must be new to the relay that holds the first N: a slice further into the file
local FANOUT = { from = math.max(50000, N), count = 10000, rate = 1000, connections = 100, perConnection = 100,
  grace = 3, seed = 1 }
-- the flood's events come after the fan-out's, the lone EVENTs after those
-- (and before the flood, `idle` lone EVENTs on the idle relay, after those)
local FLOOD = { from = FANOUT.from + FANOUT.count, count = 20000, probes = 60, interval = 25, idle = 60 }
local FLOOD_EVENTS = FLOOD.count + FLOOD.probes + FLOOD.idle
assert(FLOOD.from + FLOOD_EVENTS <= DATASET, ("at most %d events: the fan-out and the flood take %d after them")
  :format(DATASET - FLOOD_EVENTS - FANOUT.count, FANOUT.count + FLOOD_EVENTS))
local WORKERS = 2
local MAX_SUBS = 200

local ROOT = io.popen("pwd"):read("l")
local DATA = ROOT .. "/" .. dataset.ensure(DATASET)
local NODE_DIR = ROOT .. "/build/node"
-- the REQ mix's client: bench/reqmix.c
local REQMIX_CLIENT = util.reqmix_client(ROOT)
local STRFRY = os.getenv("STRFRY")

local sh, output_of, read_file, write_file = util.sh, util.output_of, util.read_file, util.write_file

local function clients_text(n)
  return n == 1 and "1 client" or ("%d clients"):format(n)
end

-- The two kinds of relay (bench/util.lua): start() launches one, fresh and empty, and gives { url, port, ... }
-- (measure waits until it answers), stop(instance) ends it, removes its files and returns the problems its log shows.
local layer2 = util.layer2_relay({ root = ROOT, workers = WORKERS, max_subscriptions = MAX_SUBS, tag = "relay" })
-- the same relay with L1 fsyncing each commit as LMDB does by default (l1.sync = "full"), beside
-- the default (one fsync: L1 is rebuilt from L2's feed after a loss)
local layer2_full = util.layer2_relay({ root = ROOT, workers = WORKERS, max_subscriptions = MAX_SUBS, tag = "relay",
  l1_sync = "full", name = "layer2-l1full" })
-- the default relay with a five-line write policy and a five-line read policy (layer2.relay's
-- hooks), beside it: what a relay's rules in Lua cost on the hot path
local POLICY = [[
return {
  accept_event = function(ev, client)
    if #ev.content > 65536 then return false, "blocked: too long" end
    return true
  end,
  accept_req = function(filters, client)
    if #filters > 10 then return false, "restricted: too many filters" end
    return true
  end,
}
]]
local layer2_policy = util.layer2_relay({ root = ROOT, workers = WORKERS, max_subscriptions = MAX_SUBS, tag = "relay",
  policy = POLICY, name = "layer2-policy" })
local strfry = util.strfry_relay({ root = ROOT, bin = STRFRY, tag = "relay" })
-- strfry with a five-line write plugin doing what the policy's accept_event does (its write
-- policies are plugins: a process fed JSON lines), in the publish runs
local strfry_plugin = util.strfry_relay({ root = ROOT, bin = STRFRY, tag = "relay", name = "strfry-plugin",
  plugin = ROOT .. "/bench/strfry/plugin.js" })

-- one node process against a running relay: the sections of `config` it names
local function client(url, config)
  config.url, config.file = url, DATA
  local cfg_path, out_path = os.tmpname(), os.tmpname()
  write_file(cfg_path, cjson.encode(config))
  sh(("cd %s && node relay.mjs %s %s"):format(NODE_DIR, cfg_path, out_path))
  local out = cjson.decode(assert(read_file(out_path)))
  os.remove(cfg_path)
  os.remove(out_path)
  return out
end

-- A fresh relay of `kind` with an empty store: the publish run, and on the last one the REQ round
-- trips and the fan-out on the store it filled. Problems in its log go to `problems`.
local function measure(kind, clients, last, problems)
  io.stderr:write(("bench/relay: %s, %s%s\n"):format(kind.name, clients_text(clients),
    last and ", REQ, fan-out, flood" or ""))
  local r = kind.start()
  local ok, out = util.ready(r.port), ("%s did not answer on port %d"):format(kind.name, r.port)
  if ok then
    local reqmix = last and { from = REQMIX.from, count = REQMIX.count, n = REQMIX.n, seed = REQMIX.seed,
      pids = kind.pids(r), client = REQMIX_CLIENT } or nil
    ok, out = pcall(client, r.url, { publish = { from = 0, count = N, clients = clients, window = WINDOW },
      req = last and REQS or nil, reqmix = reqmix, fanout = last and FANOUT or nil,
      flood = last and FLOOD or nil })
  end
  -- stopped whatever happened, so that a failure leaves no relay behind
  local seen = kind.stop(r)
  if seen.count > 0 then
    problems[#problems + 1] = { where = ("%s, %s"):format(kind.name, clients_text(clients)), log = seen }
  end
  assert(ok, tostring(out) .. (seen.count > 0 and "; its log: " .. table.concat(seen.lines, " | ") or ""))
  return out
end

-- formatting ---------------------------------------------------------------------------------------

local function ms(v) return v and ("%.2f"):format(v) or "-" end
local function ms_pair(p) return ms(p.p50) .. " / " .. ms(p.p99) end
local function ratio(a, b)
  if not a or not b or b == 0 or a == 0 then return "-" end
  return ("%.2f"):format(a / b)
end
local function count(n) return tostring(math.floor(n)) end

-- "text ×n" of a { text = n } tally, for the notes
local function tally_text(t)
  local parts = {}
  for text, n in pairs(t or {}) do parts[#parts + 1] = ("%q ×%d"):format(text, n) end
  table.sort(parts)
  return table.concat(parts, ", ")
end

-- main ---------------------------------------------------------------------------------------------

util.setup_node(ROOT)
local kinds = { layer2, layer2_full, layer2_policy }
if STRFRY then kinds[#kinds + 1] = strfry end
-- the kinds of the publish runs: also strfry with its plugin
local publish_kinds = { table.unpack(kinds) }
if STRFRY then publish_kinds[#publish_kinds + 1] = strfry_plugin end
local with_strfry = STRFRY ~= nil
local t_start = util.wall()

-- results[kind name][clients]; the relays alternate per row, so both see the same machine state
local results, problems = { layer2 = {}, strfry = {}, [layer2_full.name] = {}, [layer2_policy.name] = {},
  [strfry_plugin.name] = {} }, {}
for i, clients in ipairs(CLIENTS) do
  for _, kind in ipairs(publish_kinds) do
    results[kind.name][clients] = measure(kind, clients, i == #CLIENTS and kind ~= strfry_plugin, problems)
  end
end
local last = CLIENTS[#CLIENTS]
local function section(name, kind)
  return results[kind][last] and results[kind][last][name]
end

local notes = {}
local function note(s) notes[#notes + 1] = "- " .. s end

-- 1. publish
local pub_headers = { "clients" }
for _, kind in ipairs(publish_kinds) do
  for _, h in ipairs({ "events/s", "accepted", "OK ms p50 / p99" }) do pub_headers[#pub_headers + 1] = kind.name .. " " .. h end
end
if with_strfry then pub_headers[#pub_headers + 1] = "layer2 / strfry events/s (>1: layer2 better)" end
pub_headers[#pub_headers + 1] = "with a policy / without, events/s (target >= 0.9)"
if with_strfry then pub_headers[#pub_headers + 1] = "strfry with its plugin / without, events/s" end
local pub_rows = {}
for _, clients in ipairs(CLIENTS) do
  local row = { tostring(clients) }
  for _, kind in ipairs(publish_kinds) do
    local p = results[kind.name][clients].publish
    row[#row + 1] = util.fmt_rate(p.rate)
    row[#row + 1] = ("%d / %d"):format(p.accepted, p.published)
    row[#row + 1] = ms_pair(p.ok)
    if p.unanswered > 0 then note(("%s, %s: %d EVENTs got no OK"):format(kind.name, clients_text(clients), p.unanswered)) end
    if next(p.refused) then note(("%s, %s, refused: %s"):format(kind.name, clients_text(clients), tally_text(p.refused))) end
    if next(p.notices) then note(("%s, %s, NOTICEs: %s"):format(kind.name, clients_text(clients), tally_text(p.notices))) end
  end
  local l2, sf = results.layer2[clients].publish, results.strfry[clients] and results.strfry[clients].publish
  if with_strfry then row[#row + 1] = ratio(l2.rate, sf.rate) end
  row[#row + 1] = ratio(results[layer2_policy.name][clients].publish.rate, l2.rate)
  if with_strfry then row[#row + 1] = ratio(results[strfry_plugin.name][clients].publish.rate, sf.rate) end
  pub_rows[#pub_rows + 1] = row
  util.summary("relay publish, " .. clients_text(clients), util.fmt_rate(l2.rate) .. " events/s",
    ("%d events, %d nginx workers, durable saves; %s"):format(N, WORKERS, with_strfry
      and ("strfry %s events/s, layer2/strfry %s"):format(util.fmt_rate(sf.rate), ratio(l2.rate, sf.rate))
      or "strfry skipped"))
end

-- 2. REQ round trips: a ratio of times is strfry's over layer2's, so that >1 is layer2 better too
local req_headers = { "REQ", "round trips" }
for _, kind in ipairs(kinds) do req_headers[#req_headers + 1] = kind.name .. " ms p50 / p99" end
if with_strfry then req_headers[#req_headers + 1] = "strfry / layer2 time p50 / p99 (>1: layer2 better)" end
req_headers[#req_headers + 1] = "with a policy / without, time p50 (target <= 1.1)"
local req_rows = {}
for i, spec in ipairs(REQS) do
  local row = { ('`{"kinds":[1],"limit":%d}`'):format(spec.limit), tostring(spec.n) }
  for _, kind in ipairs(kinds) do
    local q = section("req", kind.name)[i]
    row[#row + 1] = ms_pair(q)
    if q.returned_min ~= spec.limit or q.returned_max ~= spec.limit then
      note(("%s, REQ limit %d: %d to %d events per answer"):format(kind.name, spec.limit, q.returned_min, q.returned_max))
    end
    if next(q.closed) then note(("%s, REQ limit %d, CLOSED: %s"):format(kind.name, spec.limit, tally_text(q.closed))) end
  end
  local l2, sf = section("req", "layer2")[i], with_strfry and section("req", "strfry")[i]
  if with_strfry then row[#row + 1] = ratio(sf.p50, l2.p50) .. " / " .. ratio(sf.p99, l2.p99) end
  row[#row + 1] = ratio(section("req", layer2_policy.name)[i].p50, l2.p50)
  req_rows[#req_rows + 1] = row
  util.summary(("relay REQ round trip, limit %d"):format(spec.limit), ms_pair(l2) .. " ms p50/p99",
    'kinds [1], JSON over a websocket; ' .. (with_strfry and ("strfry %s ms"):format(ms_pair(sf)) or "strfry skipped"))
end

-- One row per measure { name, value(result), ratio(layer2's, strfry's) or nil } over each relay's result.
local function measure_rows(measures, by_kind)
  local rows = {}
  for _, m in ipairs(measures) do
    local row = { m[1] }
    for _, kind in ipairs(kinds) do row[#row + 1] = m[2](by_kind[kind.name]) end
    if with_strfry then row[#row + 1] = m[3] and m[3](by_kind.layer2, by_kind.strfry) or "" end
    rows[#rows + 1] = row
  end
  return rows
end

-- 2b. the REQ mix: a ratio of times is strfry's over layer2's (>1: layer2 better)
local mix_headers = { "REQ mix" }
for _, kind in ipairs(kinds) do mix_headers[#mix_headers + 1] = kind.name end
if with_strfry then mix_headers[#mix_headers + 1] = "strfry / layer2 (>1: layer2 better; target >= 1.5 for total and p90)" end
local mix = {}
for _, kind in ipairs(kinds) do mix[kind.name] = section("reqmix", kind.name) end
local mix_measures = {
  { "events returned in all", function(m) return count(m.events) end },
  { "all REQs, ms", function(m) return ("%.1f"):format(m.total_ms) end,
    function(l2, sf) return ratio(sf.total_ms, l2.total_ms) end },
  { "REQ p50 ms", function(m) return ms(m.p50) end, function(l2, sf) return ratio(sf.p50, l2.p50) end },
  { "REQ p90 ms", function(m) return ms(m.p90) end, function(l2, sf) return ratio(sf.p90, l2.p90) end },
  { "REQ p99 ms", function(m) return ms(m.p99) end, function(l2, sf) return ratio(sf.p99, l2.p99) end },
  -- the wall time is the relay's work, the client's and the round trips between: what each used
  { "relay CPU while the mix ran, ms (every thread of its processes)", function(m) return ms(m.relay_cpu_ms) end,
    function(l2, sf) return ratio(sf.relay_cpu_ms, l2.relay_cpu_ms) end },
  { "client CPU while the mix ran, ms", function(m) return ms(m.client_cpu_ms) end },
}
-- where the time went: each class's REQs (REQ i is of class i % 7: relay.mjs's MIX_CLASSES)
local function class_sum(m, c, what)
  local sum = 0
  for i = c, #m[what], #m.classes do sum = sum + m[what][i] end
  return sum
end
for c, name in ipairs(mix.layer2.classes) do
  local reqs = math.floor((REQMIX.n - c) / #mix.layer2.classes) + 1
  mix_measures[#mix_measures + 1] = {
    ("%s (%d REQs, %s events): ms in all"):format(name, reqs, count(class_sum(mix.layer2, c, "counts"))),
    function(m) return ("%.1f"):format(class_sum(m, c, "times")) end,
    function(l2, sf) return ratio(class_sum(sf, c, "times"), class_sum(l2, c, "times")) end }
end
local mix_rows = measure_rows(mix_measures, mix)
if with_strfry then
  local differ = 0
  for i, c in ipairs(mix.layer2.counts) do if c ~= mix.strfry.counts[i] then differ = differ + 1 end end
  if differ > 0 then note(("REQ mix: %d of %d REQs returned a different number of events from layer2 and strfry")
    :format(differ, REQMIX.n)) end
end
for _, kind in ipairs(kinds) do
  if next(mix[kind.name].closed) then note(("%s, REQ mix, CLOSED: %s"):format(kind.name, tally_text(mix[kind.name].closed))) end
end
util.summary("relay REQ mix, 400 distinct filters", ("%.1f ms in all, p90 %s ms"):format(mix.layer2.total_ms,
  ms(mix.layer2.p90)), with_strfry and ("strfry %.1f ms, p90 %s ms"):format(mix.strfry.total_ms, ms(mix.strfry.p90))
  or "strfry skipped")

-- 3. fan-out: one row per measure; a ratio only where one says which relay did better
local fan_headers = { "fan-out" }
for _, kind in ipairs(kinds) do fan_headers[#fan_headers + 1] = kind.name end
if with_strfry then
  fan_headers[#fan_headers + 1] = "layer2 vs strfry (>1: layer2 better): share of expected delivered, strfry / layer2 latency"
end
local fan = {}
for _, kind in ipairs(kinds) do
  fan[kind.name] = section("fanout", kind.name)
  local f = fan[kind.name]
  if next(f.closed) then note(("%s, fan-out subscriptions refused: %s"):format(kind.name, tally_text(f.closed))) end
  if next(f.refused) then note(("%s, fan-out EVENTs refused: %s"):format(kind.name, tally_text(f.refused))) end
  if f.unanswered > 0 then note(("%s, fan-out: %d EVENTs got no OK"):format(kind.name, f.unanswered)) end
end
local fan_measures = {
  { "subscriptions, all EOSE'd before publishing (s to open)", function(f)
    return ("%d (%.1f s)"):format(f.subscriptions, f.setup_seconds) end },
  { "events published / accepted", function(f) return ("%d / %d"):format(f.published, f.accepted) end },
  { "publish rate kept", function(f) return util.fmt_rate(f.rate) .. " events/s" end },
  { "expected deliveries", function(f) return count(f.expected) end },
  { "delivered", function(f) return count(f.delivered) end,
    function(l2, sf) return ratio(l2.delivered / l2.expected, sf.delivered / sf.expected) end },
  { "missed (of them: replaced later in the stream)", function(f)
    return ("%d (%d)"):format(f.missed, f.missed_superseded) end },
  { "duplicates", function(f) return count(f.duplicates) end },
  { "unexpected (matching no subscription's filter)", function(f) return count(f.unexpected) end },
  { "delivery latency p50 ms", function(f) return ms(f.latency.p50) end,
    function(l2, sf) return ratio(sf.latency.p50, l2.latency.p50) end },
  { "delivery latency p99 ms", function(f) return ms(f.latency.p99) end,
    function(l2, sf) return ratio(sf.latency.p99, l2.latency.p99) end },
  { "delivery latency max ms", function(f) return ms(f.latency.max) end },
}
local fan_rows = measure_rows(fan_measures, fan)
local fl2 = fan.layer2
util.summary("relay fan-out, 10,000 subscriptions", ms_pair(fl2.latency) .. " ms p50/p99",
  ("%d of %d delivered, 1,000 events/s; %s"):format(fl2.delivered, fl2.expected, with_strfry
    and ("strfry %s ms, %d of %d"):format(ms_pair(fan.strfry.latency), fan.strfry.delivered, fan.strfry.expected)
    or "strfry skipped"))

-- 4. fairness under a flood
local flood_headers = { "lone EVENT's OK while another connection floods" }
for _, kind in ipairs(kinds) do flood_headers[#flood_headers + 1] = kind.name end
if with_strfry then flood_headers[#flood_headers + 1] = "strfry / layer2 (>1: layer2 better)" end
local flood = {}
for _, kind in ipairs(kinds) do flood[kind.name] = section("flood", kind.name) end
local flood_measures = {
  { "before the flood, on the idle relay: OK latency p50 ms", function(f) return ms(f.idle.p50) end,
    function(l2, sf) return ratio(sf.idle.p50, l2.idle.p50) end },
  { "before the flood, on the idle relay: OK latency max ms", function(f) return ms(f.idle.max) end,
    function(l2, sf) return ratio(sf.idle.max, l2.idle.max) end },
  { "lone EVENTs sent while the flood was still being answered", function(f)
    return ("%d of %d"):format(f.during, f.probes) end },
  { "OK latency p50 ms", function(f) return ms(f.lone.p50) end,
    function(l2, sf) return ratio(sf.lone.p50, l2.lone.p50) end },
  { "OK latency p90 ms", function(f) return ms(f.lone.p90) end,
    function(l2, sf) return ratio(sf.lone.p90, l2.lone.p90) end },
  { "OK latency max ms", function(f) return ms(f.lone.max) end,
    function(l2, sf) return ratio(sf.lone.max, l2.lone.max) end },
  { "the flood's 20,000 OKs took (s)", function(f) return ("%.1f"):format(f.flood_seconds) end,
    function(l2, sf) return ratio(sf.flood_seconds, l2.flood_seconds) end },
}
local flood_rows = measure_rows(flood_measures, flood)
util.summary("relay lone EVENT on an idle relay", ms(flood.layer2.idle.p50) .. " ms p50", with_strfry
  and ("strfry %s ms"):format(ms(flood.strfry.idle.p50)) or "strfry skipped")
util.summary("relay lone EVENT during a 20,000-EVENT flood", ms(flood.layer2.lone.p50) .. " / "
  .. ms(flood.layer2.lone.max) .. " ms p50/max", with_strfry and ("strfry %s / %s ms"):format(
  ms(flood.strfry.lone.p50), ms(flood.strfry.lone.max)) or "strfry skipped")

-- 5. memory under readers that read nothing (raw websocket clients: spec/relay/rawws.lua)
local SLOW = { clients = 10, reqs = 100, notes = 400, note_bytes = 2000, watch = 8 }
local rawws = require("spec.relay.rawws")

local function rss_kb(pids)
  local total = 0
  for _, pid in ipairs(pids) do
    local status = read_file("/proc/" .. pid .. "/status")
    total = total + (status and tonumber(status:match("VmRSS:%s*(%d+)")) or 0)
  end
  return total
end

-- the relay's processes: strfry's one, or the nginx workers under the master
local function relay_pids(r)
  if r.pid then return { r.pid } end
  local master = read_file(r.dir .. "/prefix/logs/nginx.pid"):match("%d+")
  local pids, p = {}, io.popen("pgrep -P " .. master)
  for pid in p:lines() do pids[#pids + 1] = pid end
  p:close()
  return pids
end

local function slow_readers(kind)
  io.stderr:write(("bench/relay: %s, %d readers that read nothing\n"):format(kind.name, SLOW.clients))
  local layer2_lib = require("layer2")
  local r = kind.start()
  assert(util.ready(r.port), kind.name .. " does not answer")
  local key = ("6"):rep(63) .. "1"
  local pub = assert(rawws.connect(r.port))
  for i = 1, SLOW.notes do
    local ev = assert(layer2_lib.event.sign({ created_at = os.time() - 5000 + i, kind = 1, tags = {},
      content = ("n%d "):format(i) .. ("x"):rep(SLOW.note_bytes) }, key))
    assert(pub:send_text('["EVENT",' .. layer2_lib.event.encode(ev) .. "]"))
  end
  local oks = 0
  assert(pub:read_until(function(msg) if msg[1] == "OK" then oks = oks + 1 end return oks == SLOW.notes end))
  local function answer(c, subid)
    local t0 = util.wall()
    assert(c:send_json({ "REQ", subid, { kinds = { 1 }, limit = 500 } }))
    local got = assert(c:read_until(function(msg) return msg[1] == "EOSE" end))
    assert(c:send_json({ "CLOSE", subid }))
    return #got - 1, (util.wall() - t0) * 1000
  end
  for i = 1, 4 do answer(pub, "warm" .. i) end
  local pids = relay_pids(r)
  local before = rss_kb(pids)
  local peak, slow = before, {}
  for i = 1, SLOW.clients do
    local c = assert(rawws.connect(r.port))
    local frames = {}
    for q = 1, SLOW.reqs do frames[q] = rawws.frame(rawws.TEXT, ('["REQ","s%d",{"kinds":[1],"limit":500}]'):format(q % 15)) end
    assert(c:send_raw(table.concat(frames)))
    slow[i] = c
  end
  local answered, worst = 0, 0
  local deadline = util.wall() + SLOW.watch
  while util.wall() < deadline do
    local n, took = answer(pub, "meanwhile")
    if n == SLOW.notes then answered = answered + 1 end
    worst = math.max(worst, took)
    peak = math.max(peak, rss_kb(pids))
    os.execute("sleep 0.25")
  end
  for _, c in ipairs(slow) do c:close() end
  pub:close()
  local seen = kind.stop(r)
  if seen.count > 0 then problems[#problems + 1] = { where = kind.name .. ", slow readers", log = seen } end
  return { before = before, growth = peak - before, answered = answered, worst = worst }
end

local mem = {}
for _, kind in ipairs(STRFRY and { layer2, strfry } or { layer2 }) do mem[kind.name] = slow_readers(kind) end
local mem_headers = { "while 10 clients read nothing", "layer2" }
if with_strfry then mem_headers[3], mem_headers[4] = "strfry", "strfry / layer2 (>1: layer2 better)" end
local function mem_row(name, f, ratio_of)
  local row = { name, f(mem.layer2) }
  if with_strfry then row[3], row[4] = f(mem.strfry), ratio_of and ratio_of(mem.strfry, mem.layer2) or "" end
  return row
end
local mem_rows = {
  mem_row("relay RSS before (MB)", function(m) return ("%.1f"):format(m.before / 1024) end),
  mem_row("RSS growth at its peak (MB)", function(m) return ("%.1f"):format(m.growth / 1024) end,
    function(sf, l2) return ratio(sf.growth, l2.growth) end),
  mem_row(("another client's full answers in %d s"):format(SLOW.watch), function(m) return tostring(m.answered) end),
  mem_row("its slowest answer (ms)", function(m) return ms(m.worst) end,
    function(sf, l2) return ratio(sf.worst, l2.worst) end),
}
util.summary("relay memory, 10 readers reading nothing", ("%.1f MB growth"):format(mem.layer2.growth / 1024),
  with_strfry and ("strfry %.1f MB"):format(mem.strfry.growth / 1024) or "strfry skipped")

-- print --------------------------------------------------------------------------------------------

print("## bench/relay: the example relay" .. (with_strfry and " and strfry, side by side\n" or "\n"))
print("machine: " .. util.machine())
print(("data: the first %d events of %s (layer2.gen), each relay fresh with an empty store per publish run; "
  .. "the fan-out publishes lines %d-%d of it"):format(N, DATA, FANOUT.from + 1, FANOUT.from + FANOUT.count))
print(("layer2: examples/openresty by tools/relay, %d nginx workers, --max-subscriptions %d, durable saves (L2 then L1)")
  :format(WORKERS, MAX_SUBS))
if with_strfry then
  print(("strfry: %s (%s), bench/strfry/strfry.conf with its port and db rewritten, durable LMDB commits (its default)")
    :format(strfry.version(), STRFRY))
else
  print("strfry: skipped (set STRFRY=/path/to/strfry to measure it side by side)")
end
-- 6. the policy's cost in one process: layer2.relay sessions over one store, with the five-line
-- policy and without, alternating; relay instances differ by more than a hook costs (two
-- identical nginx relays measured here gave REQ p50s 20 % apart), so the hook's cost is measured
-- where nothing else differs
local INPROC = { events = 5000, reqs = 500, rounds = 6 }
local function policy_cost()
  local layer2_mod, relay_mod = require("layer2"), require("layer2.relay")
  local dir = os.tmpname()
  os.remove(dir)
  local db = assert(layer2_mod.open(dir, { nosync = true, log = function() end }))
  -- the store holds the first INPROC.events events; the EVENTs measured are the next ones
  local lines = {}
  for line in io.lines(DATA) do
    lines[#lines + 1] = line
    if #lines == 3 * INPROC.events then break end
  end
  assert(db:save_events({ table.unpack(lines, 1, INPROC.events) }))
  local function session(policy)
    local r = relay_mod.new({ store = db, policy = policy and assert(load(POLICY))() or nil, log = function() end })
    return assert(r:session({ send = function() end }))
  end
  local s = { without = session(false), with = session(true) }
  local req = '["REQ","q",{"kinds":[1],"limit":50}]'
  local best = { without = { req = math.huge, event = math.huge }, with = { req = math.huge, event = math.huge } }
  local next_line = INPROC.events + 1
  for round = 1, INPROC.rounds do
    for _, name in ipairs(round % 2 == 1 and { "without", "with" } or { "with", "without" }) do
      local t0 = util.wall()
      for _ = 1, INPROC.reqs do
        s[name]:message(req)
        s[name]:message('["CLOSE","q"]')
      end
      best[name].req = math.min(best[name].req, (util.wall() - t0) / INPROC.reqs)
      -- new events for each side (the file's next ones), saved one EVENT at a time
      local n = math.floor(INPROC.events / INPROC.rounds)
      t0 = util.wall()
      for i = next_line, next_line + n - 1 do s[name]:message('["EVENT",' .. lines[i] .. "]") end
      best[name].event = math.min(best[name].event, (util.wall() - t0) / n)
      next_line = next_line + n
    end
  end
  db:close()
  os.execute("rm -rf '" .. dir .. "'")
  return best
end
local cost = policy_cost()
local cost_headers = { "in layer2.relay over one store (best of " .. INPROC.rounds .. " alternating rounds)",
  "without a policy, µs", "with the five-line policy, µs", "with / without" }
local cost_rows = {
  { ('REQ `{"kinds":[1],"limit":50}` and its CLOSE (%d a round)'):format(INPROC.reqs),
    ("%.1f"):format(cost.without.req * 1e6), ("%.1f"):format(cost.with.req * 1e6), ratio(cost.with.req, cost.without.req) },
  { ("EVENT, saved at once (%d a round, new events)"):format(math.floor(INPROC.events / INPROC.rounds)),
    ("%.1f"):format(cost.without.event * 1e6), ("%.1f"):format(cost.with.event * 1e6),
    ratio(cost.with.event, cost.without.event) },
}

print(("\n### publish: %d events round robin over the clients, every OK awaited\n"):format(N))
print(util.table(pub_headers, pub_rows))
print(("\n### REQ round trips on the %d-client run's store, one connection, warm (%d first not counted)\n")
  :format(last, REQS[1].warmup))
print(util.table(req_headers, req_rows))
print(("\n### REQ mix: %d distinct filters (ids, authors, author and kind, #t, #p, kinds, time windows; limits 20 "
  .. "to 500) made from the published events, each asked once on one connection, one at a time\n"):format(REQMIX.n))
print(util.table(mix_headers, mix_rows))
print(("\n### fan-out: %d subscriptions on %d connections, %d events at %d/s on one more connection\n")
  :format(FANOUT.connections * FANOUT.perConnection, FANOUT.connections, FANOUT.count, FANOUT.rate))
print(util.table(fan_headers, fan_rows))
print(("\n### fairness: one connection sends %d EVENTs at once; another sends one every %d ms, up to %d times "
  .. "while the flood is answered (only those count), and %d times before it, on the idle relay\n")
  :format(FLOOD.count, FLOOD.interval, FLOOD.probes, FLOOD.idle))
print(util.table(flood_headers, flood_rows))
print(("\n### memory: %d clients each send %d REQs for %d stored notes of %d bytes (limit 500) and read nothing; "
  .. "another client asks for the same notes meanwhile\n"):format(SLOW.clients, SLOW.reqs, SLOW.notes, SLOW.note_bytes))
print(util.table(mem_headers, mem_rows))
print("\n### the five-line policy's cost in one process: layer2.relay sessions over one store (layer2.open, "
  .. "nosync), with it and without\n")
print(util.table(cost_headers, cost_rows))

print("\nnotes:")
print("- with a policy / without compares two relay instances, each filled by its own publish run: two identical "
  .. "relays measured that way differed by up to 25 % in REQ p50, more than a hook costs; the in-process table "
  .. "(one store, alternating rounds) is where the policy's own cost shows")
print(("- client: bench/relay.mjs, node %s + ws, one process per relay instance on the same %s-core machine as the "
  .. "relay, so it takes CPU from it; permessage-deflate off for both; the REQ mix's client is bench/reqmix.c (a "
  .. "websocket client in C that counts EVENT frames by their head), which costs the mix a tenth of node's CPU")
  :format(output_of("node --version"), output_of("nproc")))
print(("- publish: each connection pipelines its share with at most %d EVENTs unacknowledged; events/s counts from "
  .. "the first EVENT sent to the last OK (connections opened before); OK latency is EVENT sent to its OK, so it "
  .. "includes the wait in that window and in the relay's queue"):format(WINDOW))
local all_in_flight = {}
for _, clients in ipairs(CLIENTS) do
  if clients * WINDOW >= N then all_in_flight[#all_in_flight + 1] = tostring(clients) end
end
if #all_in_flight > 0 then
  print(("- with %s clients every event is in flight at once (clients × window ≥ %d), so their OK latency is "
    .. "mostly time queued"):format(table.concat(all_in_flight, " and "), N))
end
local older = results.layer2[CLIENTS[1]].publish.older_in_order
print(("- accepted: in file order %d of the %d events are older versions of a replaceable or addressable event "
  .. "sent before them, which a relay refuses in that order; the round robin over several clients reorders the "
  .. "stream, and a relay may reorder one connection's EVENTs too"):format(older, N))
print("- REQ: REQ to EOSE, then CLOSE, in sequence; the same REQ each time, so layer2 may answer from the answers "
  .. "it remembers (L1) while strfry scans its index each time")
print(("- fan-out: per connection 75 %% author filters (1-2 authors, half with kinds [1,6]), 12 %% #p (half with "
  .. "kinds [1,7]), 12 %% #t (1-2 topics, half with kinds [1]), and on 31 connections one kinds filter of "
  .. "the rarer kinds; values drawn from the published events, all distinct, all limit 0; made on the %d-client "
  .. "run's relay, which holds its %d events. Expected: each accepted event against each filter (nostr-tools "
  .. "matchFilter). Latency: from the publisher's send of the EVENT to a subscriber's first receipt of it, "
  .. "one clock; missed counted %d s after the last OK. Replaced later in the stream: a replaceable or "
  .. "addressable event that a later accepted one of the same author, kind (and d) replaces (%d of the "
  .. "accepted events); a relay that delivers from its store after the write may miss those"):format(last, N,
  FANOUT.grace, fan.layer2.superseded))
if with_strfry then
  print("- strfry.conf: maxSubsPerConnection 200 and maxFilterLimit 500 as the example relay's limits, "
    .. "rejectEventsOlderThanSeconds 100 years (the events are from 2023-2024; its default, 3 years, refuses the "
    .. "older ones), no NIP-42 read restriction and no compression (the example relay has neither); its threads "
    .. "are its defaults (ingester, reqWorker, reqMonitor 3 each, writer 1) against layer2's 2 nginx workers")
end
for _, s in ipairs(notes) do print(s) end
util.print_log_problems(problems)
print(("- run time: %.0f s"):format(util.wall() - t_start))
