-- The example relay on real nginx (2 workers) for the specs, and the node clients that drive it
-- (nostr-tools and ws from npm, installed once into build/node).
local helper = require("spec.helper")
local cjson = require("cjson")

local harness = {}
harness.ROOT = io.popen("pwd"):read("l")
local NODE_DIR = harness.ROOT .. "/build/node"

function harness.sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end
local sh = harness.sh

-- nginx runs LuaJIT whatever runs the specs: once is enough, and never under ASan's LD_PRELOAD
harness.runs = not (jit or os.getenv("LAYER2_ASAN"))

-- The client libraries and the client scripts (spec/relay/*.mjs) into the test-only folder.
function harness.setup()
  if not io.open(NODE_DIR .. "/node_modules/nostr-tools/package.json") then
    assert(sh(("mkdir -p %s && cd %s && npm install --silent --no-audit --no-fund nostr-tools@2 ws@8 >/dev/null 2>&1")
      :format(NODE_DIR, NODE_DIR)), "npm install nostr-tools ws failed")
  end
  assert(sh(("cp %s/spec/relay/*.mjs %s/"):format(harness.ROOT, NODE_DIR)))
end

local function free_port()
  local socket = require("socket")
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end
harness.free_port = free_port

local function wait_http(port)
  for _ = 1, 100 do
    if sh(("curl -sf --max-time 2 -o /dev/null http://127.0.0.1:%d/"):format(port)) then return true end
    os.execute("sleep 0.1")
  end
  return false
end

-- Starts a relay (tools/relay options in `extra`) on `data` (a new directory when not given);
-- returns its port, its data directory, a stop function and its prefix (logs/nginx.pid,
-- logs/error.log).
function harness.start_relay(extra, data)
  local port = free_port()
  local prefix = helper.tmpdir()
  data = data or helper.tmpdir()
  assert(sh(("%s/tools/relay --listen 127.0.0.1:%d --prefix %s --data %s --workers 2 --daemon %s"):format(harness.ROOT,
    port, prefix, data, extra or "")), "the relay did not start")
  assert(wait_http(port), "the relay does not answer")
  return port, data, function()
    os.execute(("kill -QUIT $(cat %s/logs/nginx.pid) 2>/dev/null; sleep 0.3"):format(prefix))
    helper.rmdir(prefix)
    helper.rmdir(data)
  end, prefix
end

-- The plain-Lua relay (examples/plain) runs under LuaJIT (lua-http is Debian's for the 5.1 ABI),
-- on the LuaJIT build.
harness.PLAIN_ENV = ("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/build/luajit/?.so;;'"):format(
  harness.ROOT, harness.ROOT, harness.ROOT)

-- Starts the plain relay on `data` (its options in `extra`); returns its port, a stop function
-- that returns what it logged, and its pid.
function harness.start_plain_relay(data, extra)
  local port = free_port()
  local log = data .. ".log"
  local pid = io.popen(("%s luajit %s/examples/plain/relay.lua --listen 127.0.0.1:%d --data %s %s >%s 2>&1 & echo $!")
    :format(harness.PLAIN_ENV, harness.ROOT, port, data, extra or "", log)):read("l")
  assert(wait_http(port), "the plain relay does not answer")
  return port, function()
    os.execute("kill " .. pid .. " 2>/dev/null; sleep 0.2")
    return helper.slurp(log)
  end, pid
end

-- The lines of the relay's error log at warn level or above (nginx's and layer2's own).
function harness.log_problems(prefix)
  local out = {}
  local f = io.open(prefix .. "/logs/error.log")
  for line in f and f:lines() or function() end do
    if line:match("%[warn%]") or line:match("%[error%]") or line:match("%[crit%]") or line:match("%[alert%]")
      or line:match("%[emerg%]") then
      out[#out + 1] = line
    end
  end
  if f then f:close() end
  return out
end

-- The pids of the processes holding the relay's side of its open connections (one per connection).
function harness.connections(port)
  local pids = {}
  local p = io.popen(("ss -tnpH state established '( sport = :%d )' 2>/dev/null"):format(port))
  for line in p:lines() do
    local pid = line:match("pid=(%d+)")
    if pid then pids[#pids + 1] = pid end
  end
  p:close()
  return pids
end

-- cfg in a file for a client script (cfg.out is set to where the script writes its JSON result);
-- returns the file's path.
local function config_file(cfg)
  local path = os.tmpname()
  cfg.out = path .. ".out"
  local f = io.open(path, "w")
  f:write(cjson.encode(cfg))
  f:close()
  return path
end

-- The result a client wrote, decoded; its files removed.
local function result(path, cfg)
  local out, err = helper.slurp(cfg.out), helper.slurp(path .. ".err")
  os.remove(path)
  local ok, res = pcall(cjson.decode, out)
  assert(ok, ("the client failed: %s\n%s\n(output: %d bytes: %s...)"):format(tostring(res), err, #out, out:sub(1, 200)))
  return res
end

-- Runs `node SCRIPT CONFIG.json` with cfg; returns the decoded result.
function harness.run_client(script, cfg)
  local path = config_file(cfg)
  os.execute(("cd %s && node %s %s 2>%s.err"):format(NODE_DIR, script, path, path))
  return result(path, cfg)
end

-- Starts `node SCRIPT CONFIG.json` in the background; returns a handle whose :wait() returns
-- the decoded result once the script ends.
function harness.spawn_client(script, cfg)
  local path = config_file(cfg)
  assert(sh(("cd %s && (node %s %s 2>%s.err; touch %s.done) &"):format(NODE_DIR, script, path, path, path)))
  return {
    wait = function()
      while not os.rename(path .. ".done", path .. ".done") do os.execute("sleep 0.1") end
      os.remove(path .. ".done")
      return result(path, cfg)
    end,
  }
end

return harness
