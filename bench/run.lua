-- `make bench`: runs every benchmark, prints one summary table, then each benchmark's own tables,
-- and writes all of it to bench/results/latest.md.
local util = require("bench.util")

local BENCHES = { "bench/event.lua", "bench/store.lua", "bench/cache.lua" }
local events = os.getenv("BENCH_EVENTS") or "100000"
local summary = os.tmpname()
local parts = {}
local t0 = os.time()
for _, b in ipairs(BENCHES) do
  io.stderr:write("running " .. b .. "...\n")
  local arg = b == "bench/event.lua" and "" or events
  local p = assert(io.popen(("BENCH_SUMMARY=%s lua5.4 %s %s"):format(summary, b, arg)))
  parts[#parts + 1] = p:read("a")
  assert(p:close(), b .. " failed")
end
local rows = {}
for line in io.lines(summary) do
  local what, figure, note = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
  rows[#rows + 1] = { what, figure, note }
end
os.remove(summary)
local head = ("# layer2 benchmarks\n\nmachine: %s\ndate: %s, %d s in all\n\n%s\n"):format(util.machine(),
  os.date("!%Y-%m-%d %H:%M UTC"), os.time() - t0, util.table({ "what", "figure", "note" }, rows))
local text = head .. "\n" .. table.concat(parts, "\n")
io.write(text)
os.execute("mkdir -p bench/results")
local f = assert(io.open("bench/results/latest.md", "w"))
f:write(text)
f:close()
io.stderr:write("written to bench/results/latest.md\n")
