-- Shared by the specs: where the shared test data lives, and small readers for it.
local cjson = require("cjson")

local helper = {}

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

-- ../shared/data beside the checkout (CI, developers); LAYER2_DATA overrides.
function helper.data_dir()
  local candidates = { "../shared/data", "../../shared/data", "/work/shared/data" }
  local override = os.getenv("LAYER2_DATA")
  if override then table.insert(candidates, 1, override) end
  for _, dir in ipairs(candidates) do
    if exists(dir .. "/real.jsonl") then return dir end
  end
  error("shared test data not found: set LAYER2_DATA to the folder holding real.jsonl")
end

function helper.lines(name)
  local out = {}
  for line in io.lines(helper.data_dir() .. "/" .. name) do
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
