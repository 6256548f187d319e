-- Shared by the specs: the corpora they run over (generated, and real when present), fixtures, and
-- small readers for them.
local cjson = require("cjson")

local helper = {}

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

local ROOT = io.popen("pwd"):read("l") -- the specs run from the repository's root

-- A file of the project's own fixtures (spec/fixtures: published test vectors).
function helper.fixture(name)
  return ROOT .. "/spec/fixtures/" .. name
end

-- The real corpus, when this machine has it: the folder LAYER2_DATA names, or ../shared/data
-- beside the checkout. Nothing else is looked for.
function helper.real_dir()
  local dir = os.getenv("LAYER2_DATA") or (ROOT .. "/../shared/data")
  if exists(dir .. "/real.jsonl") then return (io.popen("cd '" .. dir .. "' && pwd"):read("l")) end
  return nil
end

local generated
-- The generated corpus (spec/fixtures/corpus.lua), written once per run into build/fixtures.
local function generated_corpus()
  if generated then return generated end
  local dir = ROOT .. "/build/fixtures/" .. (jit and "luajit" or "lua5.4")
  os.execute("mkdir -p '" .. dir .. "'")
  local counts = require("spec.fixtures.corpus").write(dir)
  generated = { name = "generated", dir = dir, valid = dir .. "/valid.jsonl", invalid = dir .. "/invalid.jsonl",
    reasons = dir .. "/invalid.reasons.jsonl", counts = counts }
  return generated
end

-- The corpora a spec runs over: the generated one always, the real one when present. Each is
-- { name, valid, invalid, reasons (paths), counts = { valid, invalid, reasons = {reason = n} } }.
function helper.corpora()
  local list = { generated_corpus() }
  local real = helper.real_dir()
  if real then
    list[2] = { name = "real", dir = real, valid = real .. "/real.jsonl", invalid = real .. "/real-invalid.jsonl",
      reasons = real .. "/real-invalid.reasons.jsonl", peer = real .. "/peer-rust-nostr-db-suite.jsonl",
      counts = { valid = 6652, invalid = 391, reasons = { bad_id = 197, bad_shape = 188, bad_sig = 6 } } }
  end
  return list
end

-- Runs body(corpus) for each corpus (in a describe block); without the real corpus, what would
-- have run on it is reported as skipped by name, with busted's `pending` (the spec file's: busted's
-- functions live in its environment, not in a module's).
function helper.each_corpus(pending, what, body)
  for _, c in ipairs(helper.corpora()) do body(c) end
  if not helper.real_dir() then
    pending(what .. " on the real corpus (not here: set LAYER2_DATA to the folder with real.jsonl)")
  end
end

-- The same for a spec that exists only for the real corpus.
function helper.with_real(pending, what, body)
  local real = helper.real_dir()
  if real then return body(helper.corpora()[2]) end
  pending(what .. " (needs the real corpus: set LAYER2_DATA to the folder with real.jsonl)")
end

-- The payloads of a websocket server's frames in one string (db:query_frames): each final, text,
-- unmasked, with 2, 4 or 10 header bytes by its length (asserted: the shortest form).
function helper.ws_frames(bytes)
  local assert = require("luassert")
  local out, at = {}, 1
  while at <= #bytes do
    local b0, b1 = bytes:byte(at, at + 1)
    assert.equal(0x81, b0)
    assert(b1 < 128, "a server's frame is not masked")
    local n, hn = b1, 2
    if b1 == 126 then
      n, hn = bytes:byte(at + 2) * 256 + bytes:byte(at + 3), 4
      assert(n >= 126)
    elseif b1 == 127 then
      n, hn = 0, 10
      for i = 2, 9 do n = n * 256 + bytes:byte(at + i) end
      assert(n >= 65536)
    end
    out[#out + 1] = bytes:sub(at + hn, at + hn + n - 1)
    at = at + hn + n
  end
  assert.equal(#bytes + 1, at, "whole frames")
  return out
end

-- The non-empty lines of a file (a path, or the name of a fixture).
function helper.lines(path)
  if not path:find("/", 1, true) then path = helper.fixture(path) end
  local out = {}
  for line in io.lines(path) do
    if line ~= "" then out[#out + 1] = line end
  end
  return out
end

function helper.decode(s)
  return cjson.decode(s)
end

-- Deep equality for event-shaped tables (numbers compared by value, so 1 == 1.0).
function helper.same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not helper.same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- A deterministic pseudo-random generator (Park-Miller): exact in both integer (Lua 5.4) and
-- double (LuaJIT) arithmetic, so both ABIs see the same sequence. rand(n) is in 1..n.
function helper.rng(seed)
  local state = seed % 2147483646 + 1
  return function(n)
    state = state * 16807 % 2147483647
    return state % n + 1
  end
end

-- A fresh path for a store (not created), and its removal.
function helper.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  return p
end

function helper.rmdir(p)
  os.execute("rm -rf '" .. p .. "'")
end

-- The contents of a file, which is then removed ("" when there is none).
function helper.slurp(path)
  local f = io.open(path)
  local s = f and f:read("a") or ""
  if f then f:close() end
  os.remove(path)
  return s
end

-- The ids of a query's answer (event tables or JSON strings), in order.
function helper.ids(list)
  local out = {}
  for i, ev in ipairs(list) do out[i] = type(ev) == "string" and require("layer2").event.parse(ev).id or ev.id end
  return out
end

local CLI_ENV = ("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/build/lua5.4/?.so;;'"):format(ROOT, ROOT,
  ROOT)

-- Runs `layer2 ARGS` (a shell string) as a user does (bin/layer2, Lua 5.4; `wrap` may change
-- the command); returns its exit code, stdout and stderr.
function helper.cli(args, wrap)
  local out, err, code = helper.tmpdir(), helper.tmpdir(), helper.tmpdir()
  local cmd = ("%s lua5.4 %s/bin/layer2 %s"):format(CLI_ENV, ROOT, args)
  if wrap then cmd = wrap(cmd) end
  os.execute(("(%s) >%s 2>%s; echo $? >%s"):format(cmd, out, err, code))
  local c = tonumber(helper.slurp(code))
  return c, helper.slurp(out), helper.slurp(err)
end

-- The interpreter running the specs, for child processes that load the same build.
helper.LUA = jit and "luajit" or "lua5.4"

-- Runs a Lua script in a separate process (stdout and stderr read through the handle); the
-- script's file is removed when the handle is closed.
function helper.spawn(script)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(script)
  f:close()
  local p = assert(io.popen(("%s %s 2>&1"):format(helper.LUA, path)))
  return {
    read = function(_, ...) return p:read(...) end,
    close = function()
      local a, b, c = p:close()
      os.remove(path)
      return a, b, c
    end,
  }
end

return helper
