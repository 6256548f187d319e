-- `make bench`: runs every benchmark, prints one summary table, then each benchmark's own tables,
-- and writes all of it to bench/results/latest.md.
local util = require("bench.util")

local events = os.getenv("BENCH_EVENTS") or "100000"
-- bench/store runs at 10k events too: query cost against store size
local RUNS = {
  { "bench/event.lua", "" }, { "bench/store.lua", "10000", quiet = true }, { "bench/store.lua", events },
  { "bench/cache.lua", events }, { "bench/backend.lua", "20000" }, { "bench/relay.lua", "5000" },
  { "bench/sync.lua", "5000" },
  -- a throwaway PostgreSQL server for this one, fsync on
  { "bench/postgres.lua", events, prefix = "tools/pg run -- " },
}
local summary = os.tmpname()
local parts = {}
local t0 = os.time()
os.execute("mkdir -p bench/results && rm -f bench/results/query-scaling.dat")
for _, r in ipairs(RUNS) do
  io.stderr:write(("running %s %s...\n"):format(r[1], r[2]))
  local p = assert(io.popen(("BENCH_SUMMARY=%s %slua5.4 %s %s"):format(r.quiet and "/dev/null" or summary,
    r.prefix or "", r[1], r[2])))
  local out = p:read("a")
  if not r.quiet then parts[#parts + 1] = out end
  assert(p:close(), r[1] .. " failed")
end

-- pictures, where gnuplot is installed (make bench installs it)
local function gnuplot(script)
  local p = io.popen("gnuplot 2>&1", "w")
  if not p then return false end
  p:write(script)
  return p:close()
end
local pictures = {}
if os.execute("command -v gnuplot >/dev/null 2>&1") then
  local ok1 = gnuplot([[
set terminal svg size 800,400 dynamic background rgb "white"
set output "bench/results/cache-trace.svg"
set title "L1 over the Zipf(0.9) read trace (lru)"
set xlabel "reads"
set ylabel "L1 used (MiB)"
set y2label "cumulative hit ratio"
set ytics nomirror
set y2tics
set key bottom right
plot "bench/results/cache-trace.dat" using 1:2 with lines title "L1 used MiB", \
  "" using 1:3 axes x1y2 with lines title "hit ratio"
]])
  -- one data block per query class, so each class is one line
  local names, points = {}, {}
  for line in io.lines("bench/results/query-scaling.dat") do
    local n, i, us, name = line:match("^(%d+) (%d+) (%d+) (.+)$")
    if n then
      i = tonumber(i)
      names[i] = name:gsub("_", " ")
      points[i] = (points[i] or "") .. n .. " " .. us .. "\n"
    end
  end
  local blocks, lines = {}, {}
  for i, name in ipairs(names) do
    blocks[#blocks + 1] = ("$c%d << EOD\n%sEOD\n"):format(i, points[i])
    lines[#lines + 1] = ('$c%d using 1:2 with linespoints title "%s"'):format(i, name)
  end
  local ok2 = #lines > 0 and gnuplot(table.concat(blocks) .. [[
set terminal svg size 800,400 dynamic background rgb "white"
set output "bench/results/query-scaling.svg"
set title "query p50 (limit 500, JSON) against store size"
set xlabel "events in the store"
set ylabel "µs"
set logscale x
set key outside right
plot ]] .. table.concat(lines, ", ") .. "\n")
  if ok1 then pictures[#pictures + 1] = "![L1 over the trace](cache-trace.svg)" end
  if ok2 then pictures[#pictures + 1] = "![query cost against store size](query-scaling.svg)" end
end
local rows = {}
for line in io.lines(summary) do
  local what, figure, note = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
  rows[#rows + 1] = { what, figure, note }
end
os.remove(summary)
local head = ("# layer2 benchmarks\n\nmachine: %s\ndate: %s, %d s in all\n\n%s\n"):format(util.machine(),
  os.date("!%Y-%m-%d %H:%M UTC"), os.time() - t0, util.table({ "what", "figure", "note" }, rows))
local text = head .. "\n" .. table.concat(pictures, "\n") .. "\n\n" .. table.concat(parts, "\n")
io.write(text)
os.execute("mkdir -p bench/results")
local f = assert(io.open("bench/results/latest.md", "w"))
f:write(text)
f:close()
io.stderr:write("written to bench/results/latest.md\n")
