-- bench/event: events/s per core for the event core on the real corpus (or the generated one).
-- Single-threaded, CPU time (os.clock): each figure is one core's rate.
local layer2 = require("layer2")
local util = require("bench.util")
local event, schnorr = layer2.event, layer2.schnorr

local path, data_name = util.corpus()
local lines, bytes = {}, 0
for line in io.lines(path) do
  lines[#lines + 1] = line
  bytes = bytes + #line
end

-- runs fn over every line `passes` times; returns events per second of CPU time
local function rate(passes, fn)
  local t0 = util.now()
  for _ = 1, passes do
    for i = 1, #lines do fn(lines[i]) end
  end
  return passes * #lines / (util.now() - t0)
end

local raw = {}
for i, line in ipairs(lines) do
  local ev = event.parse(line)
  raw[i] = { ev.pubkey, ev.id, ev.sig }
end

local passes = tonumber(arg and arg[1]) or 1
local rows = {}
local function add(name, r, note)
  rows[#rows + 1] = { name, util.fmt_rate(r), ("%.2f"):format(1e6 / r), note or "" }
  return r
end

local parse_rate = add("parse (JSON -> Lua table)", rate(5 * passes, event.parse))
local pack_rate = add("parse + binary form (JSON -> stored bytes)", rate(5 * passes, event.pack))
local id_rate = add("parse + id (canonical form, sha256)", rate(5 * passes, event.id))
local verify_rate = add("parse + id + verify", rate(passes, event.verify))
local t0 = util.now()
for _ = 1, passes do
  for i = 1, #raw do
    local r = raw[i]
    schnorr.verify(r[1], r[2], r[3])
  end
end
local raw_rate = add("raw libsecp256k1 BIP-340 verify", passes * #raw / (util.now() - t0))
rows[#rows][4] = "the bound for verified input"
rows[4][4] = ("%.1f %% of the raw verify rate"):format(100 * verify_rate / raw_rate)
local _ = parse_rate + pack_rate + id_rate

-- live fan-out in a relay worker: 10,000 subscriptions (an author's feed, a thread, a tag, a
-- kind), each event handed to the ones that match: the worker's index (layer2.fanout) against
-- checking every subscription's filter (layer2.filter.match, as the example relay did)
local SUBS = 10000
local sample = {}
for i = 1, math.min(#lines, 2000) do sample[i] = event.parse(lines[i]) end
local fo, filters = layer2.fanout(), {}
for k = 1, SUBS do
  local ev = sample[(k * 7919) % #sample + 1]
  local f = ({ { authors = { ev.pubkey }, kinds = { 1 } }, { ["#e"] = { ev.id } }, { ["#t"] = { "nostr" .. k % 50 } },
    { kinds = { 30000 + k % 100 } } })[k % 4 + 1]
  filters[k] = f
  assert(fo:add(k, { f }))
end
local FAN = math.min(#lines, 1000)
t0 = util.now()
local delivered = 0
for i = 1, FAN do delivered = delivered + #fo:match(lines[i]) end
local fo_rate = FAN / (util.now() - t0)
local SCAN = math.min(FAN, 50)
t0 = util.now()
local scanned = 0
for i = 1, SCAN do
  for k = 1, SUBS do
    if layer2.filter.match(filters[k], lines[i]) then scanned = scanned + 1 end
  end
end
local scan_rate = SCAN / (util.now() - t0)
add(("live fan-out, %d subscriptions: index"):format(SUBS), fo_rate)
rows[#rows][4] = ("%.0f x the filter-by-filter check; %d deliveries"):format(fo_rate / scan_rate, delivered)
add(("live fan-out, %d subscriptions: every filter"):format(SUBS), scan_rate)
rows[#rows][4] = "layer2.filter.match on each subscription (the relay before)"

print(("## bench/event (%s)\n"):format(_VERSION .. (jit and (" / " .. jit.version) or "")))
print(("machine: %s"):format(util.machine()))
print(("data: %s, %d events, %.1f MB (mean %d bytes/event)\n"):format(data_name, #lines, bytes / 1e6,
  math.floor(bytes / #lines)))
print(util.table({ "operation (one core)", "events/s", "µs/event", "note" }, rows))
print(("\npeak RSS: %.1f MB"):format(util.peak_rss_kb() / 1024))
util.summary("parse + id, one core", util.fmt_rate(id_rate) .. " events/s", data_name)
util.summary("live fan-out, 10,000 subscriptions, one core", util.fmt_rate(fo_rate) .. " events/s",
  ("%.0f x checking every filter (%s/s)"):format(fo_rate / scan_rate, util.fmt_rate(scan_rate)))
util.summary("parse + id + verify, one core", util.fmt_rate(verify_rate) .. " events/s",
  ("%.1f %% of raw libsecp256k1 verify (%s/s)"):format(100 * verify_rate / raw_rate, util.fmt_rate(raw_rate)))
