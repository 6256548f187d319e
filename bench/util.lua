-- Shared by the benchmarks: timing, the machine's name, markdown tables, peak memory; shell and file
-- helpers, and the relays bench/relay and bench/sync start (the example relay, strfry).
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

-- Shell and files ----------------------------------------------------------------------------------

function util.sh(cmd)
  assert(os.execute(cmd), "failed: " .. cmd)
end

-- a command's standard output, trailing white space removed
function util.output_of(cmd)
  local p = assert(io.popen(cmd))
  local s = p:read("a")
  p:close()
  return (s:gsub("%s+$", ""))
end

function util.read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function util.write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- a private directory /tmp/bench-NAME.XXXXXX a relay's processes can read (nginx's workers run as
-- www-data under root)
function util.temp_dir(name)
  local dir = util.output_of(("mktemp -d /tmp/bench-%s.XXXXXX"):format(name))
  util.sh("chmod 755 " .. dir)
  return dir
end

function util.free_port()
  local socket = require("socket")
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

-- waits for a stopped process to be gone (10 s, then KILL), so the next one has the machine to itself
function util.wait_gone(pid)
  util.sh(("for i in $(seq 100); do kill -0 %d 2>/dev/null || exit 0; sleep 0.1; done; kill -KILL %d"):format(pid, pid))
end

-- the lines of a log that `is_problem` picks: { count, lines = at most 5 distinct (their text after any timestamp) }
function util.log_problems(path, is_problem)
  local seen, out, n = {}, {}, 0
  for line in (util.read_file(path) or ""):gmatch("[^\n]+") do
    if is_problem(line) then
      n = n + 1
      local text = line:gsub("^[%d/: .-]+", ""):gsub("%s+$", ""):sub(1, 200)
      if not seen[text] and #out < 5 then
        seen[text] = true
        out[#out + 1] = text
      end
    end
  end
  return { count = n, lines = out }
end

-- Relays -------------------------------------------------------------------------------------------
-- A kind of relay: kind.start(data) launches one, fresh, serving `data` (a directory the caller made
-- and removes; nil: a fresh, empty one) and gives { url, port, dir, ... }; util.ready(port) waits
-- until it answers; kind.stop(r) ends it, removes its own files and returns the problems its log shows.

-- a relay is up when it answers its NIP-11 document (within 10 s)
function util.ready(port)
  return os.execute(("for i in $(seq 100); do curl -sf --max-time 1 -o /dev/null "
    .. "-H 'Accept: application/nostr+json' http://127.0.0.1:%d/ && exit 0; sleep 0.1; done; exit 1"):format(port))
end

-- Stops a relay (its process `pid`, by `signal`) and waits for it; returns the problems its log
-- shows (`is_problem(line)`), its directory removed.
local function stop_relay(r, pid, signal, log, is_problem)
  if pid then
    util.sh(("kill -%s %d"):format(signal, pid))
    util.wait_gone(pid)
  end
  local problems = util.log_problems(log, is_problem)
  util.sh("rm -rf " .. r.dir)
  return problems
end

-- The example relay (tools/relay, nginx) as a kind: opts.root (the checkout), opts.workers,
-- opts.max_subscriptions, opts.tag (in its temporary directory's name), opts.l1_sync (tools/relay's
-- --l1-sync; the kind is then named for it), opts.policy (tools/relay's --policy: a policy file's
-- text), opts.name.
function util.layer2_relay(opts)
  local kind = { name = opts.name or "layer2" }
  function kind.start(data)
    local port, dir = util.free_port(), util.temp_dir(opts.tag .. "-" .. kind.name)
    local policy = ""
    if opts.policy then
      -- where the workers (www-data when run as root) can read it
      util.write_file(dir .. "/policy.lua", opts.policy)
      util.sh(("chmod 755 %s && chmod 644 %s/policy.lua"):format(dir, dir))
      policy = (" --policy %s/policy.lua"):format(dir)
    end
    util.sh(("%s/tools/relay --listen 127.0.0.1:%d --prefix %s/prefix --data %s --workers %d --daemon "
      .. "--max-subscriptions %d%s%s"):format(opts.root, port, dir, data or (dir .. "/data"), opts.workers,
      opts.max_subscriptions, opts.l1_sync and (" --l1-sync " .. opts.l1_sync) or "", policy))
    return { url = ("ws://127.0.0.1:%d/"):format(port), port = port, dir = dir }
  end
  -- the pids of a running instance's processes: nginx's workers
  function kind.pids(r)
    local master = tonumber(util.read_file(r.dir .. "/prefix/logs/nginx.pid"))
    local pids = {}
    for pid in util.output_of(("pgrep -P %d || true"):format(master)):gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
    return pids
  end
  function kind.stop(r)
    -- graceful: the master waits for its workers to close their connections; nginx's levels above
    -- notice (the workers' graceful exit is logged at notice)
    return stop_relay(r, tonumber(util.read_file(r.dir .. "/prefix/logs/nginx.pid")), "QUIT",
      r.dir .. "/prefix/logs/error.log", function(line)
        return line:find("%[warn%]") or line:find("%[error%]") or line:find("%[crit%]") or line:find("%[alert%]")
          or line:find("%[emerg%]")
      end)
  end
  return kind
end

-- A copy of bench/strfry/strfry.conf at `path`, its db (a directory, made if missing) and port rewritten.
function util.strfry_conf(root, path, db, port, plugin)
  local conf = assert(util.read_file(root .. "/bench/strfry/strfry.conf"))
  local n1, n2, n3
  conf, n1 = conf:gsub('\ndb = "[^"]*"', ('\ndb = "%s/"'):format(db))
  conf, n2 = conf:gsub("\n(%s*)port = %d+", ("\n%%1port = %d"):format(port or 7778))
  conf, n3 = conf:gsub('\n(%s*)plugin = "[^"]*"', ('\n%%1plugin = "%s"'):format(plugin or ""))
  assert(n1 == 1 and n2 == 1 and n3 == 1, "bench/strfry/strfry.conf: no `db = `, `port = ` or `plugin = ` line to rewrite")
  util.write_file(path, conf)
  util.sh("mkdir -p " .. db)
  return path
end

-- strfry as a kind: opts.root, opts.bin (the strfry binary), opts.tag, opts.name ("strfry"),
-- opts.plugin (a write-policy plugin's command); each start with a copy of
-- bench/strfry/strfry.conf (util.strfry_conf).
function util.strfry_relay(opts)
  local kind = { name = opts.name or "strfry" }
  function kind.version()
    return util.output_of(opts.bin .. " --version 2>/dev/null")
  end
  function kind.start(db)
    local port, dir = util.free_port(), util.temp_dir(opts.tag .. "-strfry")
    util.strfry_conf(opts.root, dir .. "/strfry.conf", db or (dir .. "/db"), port, opts.plugin)
    local pid = tonumber(util.output_of(("%s --config=%s/strfry.conf relay >%s/strfry.log 2>&1 & echo $!")
      :format(opts.bin, dir, dir)))
    return { url = ("ws://127.0.0.1:%d/"):format(port), port = port, dir = dir, pid = pid }
  end
  function kind.pids(r) return { r.pid } end
  function kind.stop(r)
    -- loguru's levels above INFO; the SIGTERM that stopped it is ours
    return stop_relay(r, r.pid, "TERM", r.dir .. "/strfry.log", function(line)
      return line:find("%]%s*WARN|") or line:find("%]%s*ERR|") or line:find("%]%s*FATL|")
    end)
  end
  return kind
end

-- bench/relay.mjs and its node modules (nostr-tools, ws) in root/build/node.
function util.setup_node(root)
  local dir = root .. "/build/node"
  if not io.open(dir .. "/node_modules/ws/package.json") then
    util.sh(("mkdir -p %s && cd %s && npm install --silent --no-audit --no-fund nostr-tools@2 ws@8 >/dev/null 2>&1")
      :format(dir, dir))
  end
  util.sh(("cp %s/bench/relay.mjs %s/"):format(root, dir))
end

-- bench/reqmix.c built into root/build/reqmix: the REQ mix's client (bench/relay.mjs, reqMix); its path.
function util.reqmix_client(root)
  local bin = root .. "/build/reqmix"
  util.sh(("mkdir -p %s/build && cc -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -o %s %s/bench/reqmix.c"):format(root, bin, root))
  return bin
end

-- Imports a JSONL file into a fresh store in dir, unverified: layer2's (`layer2 import`, the store at
-- dir itself) or strfry's (the binary `strfry`, its db at dir/db, its configuration dir/strfry.conf).
function util.import(root, kind, dir, file, strfry)
  util.sh("mkdir -p " .. dir)
  if kind == "layer2" then
    util.sh(("%s/bin/layer2 --path %s import %s --no-verify >%s/import.log 2>&1"):format(root, dir, file, dir))
  else
    util.sh(("%s --config=%s import --no-verify <%s >%s/import.log 2>&1"):format(strfry,
      util.strfry_conf(root, dir .. "/strfry.conf", dir .. "/db"), file, dir))
  end
end

-- The closing note on the relays' logs: problems are {where =, log = {count, lines}}.
function util.print_log_problems(problems)
  if #problems == 0 then
    print("- logs: no warning or error in the relays' logs")
    return
  end
  for _, p in ipairs(problems) do
    print(("- log of %s: %d warnings or errors, e.g. %s"):format(p.where, p.log.count, table.concat(p.log.lines, " | ")))
  end
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
