-- Shared by the benchmarks: timing, the machine's name, markdown tables, peak memory.
local util = {}

function util.now()
  -- os.clock is CPU time of this process: what "per core" means for single-threaded work
  return os.clock()
end

function util.wall()
  local p = io.popen("date +%s.%N")
  local t = tonumber(p:read("l"))
  p:close()
  return t
end

local function first_line(cmd)
  local p = io.popen(cmd)
  local s = p and p:read("l") or ""
  if p then p:close() end
  return s or ""
end

function util.machine()
  local cpu = first_line("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'")
  local cores = first_line("nproc")
  local mem = first_line("free -g | awk '/Mem:/ {print $2}'")
  return ("%s, %s cores, %s GiB RAM"):format(cpu, cores, mem)
end

function util.peak_rss_kb()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmHWM:%s+(%d+)")
    if kb then return tonumber(kb) end
  end
end

function util.table(headers, rows)
  local out = { "| " .. table.concat(headers, " | ") .. " |" }
  local sep = {}
  for i = 1, #headers do sep[i] = "---" end
  out[#out + 1] = "| " .. table.concat(sep, " | ") .. " |"
  for _, r in ipairs(rows) do out[#out + 1] = "| " .. table.concat(r, " | ") .. " |" end
  return table.concat(out, "\n")
end

function util.fmt_rate(n)
  if n >= 1e6 then return ("%.2f M"):format(n / 1e6) end
  if n >= 1e3 then return ("%.1f k"):format(n / 1e3) end
  return ("%.0f"):format(n)
end

-- The events a benchmark reads: the real corpus when this machine has it (LAYER2_DATA, or
-- ../shared/data beside the checkout), else the project's generated corpus. Returns the path of
-- its JSON lines and a name for the tables.
function util.corpus()
  local dir = os.getenv("LAYER2_DATA") or "../shared/data"
  local f = io.open(dir .. "/real.jsonl")
  if f then
    f:close()
    return dir .. "/real.jsonl", "real.jsonl (6,652 real events)"
  end
  os.execute("mkdir -p build/fixtures/bench")
  local counts = require("spec.fixtures.corpus").write("build/fixtures/bench")
  return "build/fixtures/bench/valid.jsonl", ("the generated corpus (%d events, spec/fixtures/corpus.lua)")
    :format(counts.valid)
end

-- One row of `make bench`'s summary table (bench/run.lua collects them through $BENCH_SUMMARY).
function util.summary(what, figure, note)
  local path = os.getenv("BENCH_SUMMARY")
  if not path then return end
  local f = assert(io.open(path, "a"))
  f:write(what, "\t", figure, "\t", note or "", "\n")
  f:close()
end

return util
