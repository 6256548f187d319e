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

print(("## bench/event (%s)\n"):format(_VERSION .. (jit and (" / " .. jit.version) or "")))
print(("machine: %s"):format(util.machine()))
print(("data: %s, %d events, %.1f MB (mean %d bytes/event)\n"):format(data_name, #lines, bytes / 1e6,
  math.floor(bytes / #lines)))
print(util.table({ "operation (one core)", "events/s", "µs/event", "note" }, rows))
print(("\npeak RSS: %.1f MB"):format(util.peak_rss_kb() / 1024))
util.summary("parse + id, one core", util.fmt_rate(id_rate) .. " events/s", data_name)
util.summary("parse + id + verify, one core", util.fmt_rate(verify_rate) .. " events/s",
  ("%.1f %% of raw libsecp256k1 verify (%s/s)"):format(100 * verify_rate / raw_rate, util.fmt_rate(raw_rate)))
