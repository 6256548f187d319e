-- Four processes on one backend (as nginx workers would be): two write, two query, one of those
-- also runs eviction; a bounded time; no error, exact counts, a clean check.
local helper = require("spec.helper")
local layer2 = require("layer2")

local LUA = jit and "luajit" or "lua5.4"

local WORKER = [=[
local layer2 = require("layer2")
local dir, role, seed = arg[1], arg[2], tonumber(arg[3])
local db = assert(layer2.open(dir, { l1 = { size_limit = 2 * 1024 * 1024 }, log = function() end }))
local deadline = layer2.monotonic() + 4
if role == "writer" then
  local sec = ("%064x"):format(seed)
  for i = 1, 600 do
    local ev = assert(layer2.event.sign({ kind = 1, created_at = 1700000000 + i, tags = { { "t", "w" .. seed } },
      content = ("note %d of writer %d "):format(i, seed) .. ("x"):rep(i % 700) }, sec))
    local ok, err = db:save_event(ev)
    if not ok then error("save: " .. tostring(err)) end
  end
else
  local n = 0
  while layer2.monotonic() < deadline do
    local res, err = db:query_events({ { kinds = { 1 }, limit = 50 }, { ["#t"] = { "w1", "w2" }, limit = 20 } })
    if not res then error("query: " .. tostring(err)) end
    for _, ev in ipairs(res) do assert(layer2.event.verify(ev)) end
    n = n + 1
    if role == "gc" and n % 20 == 0 then db:gc(true) end
  end
end
db:close()
print("done")
]=]

describe("concurrency", function()
  it("2 writers, 2 readers (one evicting) on one L1 and L2: no error, exact counts, clean", function()
    local dir = helper.tmpdir()
    local script = dir .. "-worker.lua"
    local f = assert(io.open(script, "w"))
    f:write(WORKER)
    f:close()
    assert(layer2.open(dir)):close() -- create it first: the workers race on nothing else
    local procs = {}
    for i, role in ipairs({ "writer", "writer", "reader", "gc" }) do
      procs[i] = assert(io.popen(("%s %s %s %s %d 2>&1"):format(LUA, script, dir, role, i)))
    end
    for i, p in ipairs(procs) do
      local out = p:read("a")
      p:close()
      assert.equal("done\n", out, "worker " .. i)
    end
    local db = assert(layer2.open(dir))
    assert.equal(600, db:count_events({ ["#t"] = { "w1" } }))
    assert.equal(600, db:count_events({ ["#t"] = { "w2" } }))
    assert.equal(1200, db.l2:count_events({}))
    local ok, problems = db:check()
    assert(ok, table.concat(problems, "\n"))
    assert(db.l1:stats().file_bytes <= 2 * 1024 * 1024)
    db:close()
    helper.rmdir(dir)
    os.remove(script)
  end)

  -- What one process learns from its reads is what every process on the same L1 knows.
  it("shares read counts and known-missing ids between processes on one L1", function()
    local dir = helper.tmpdir()
    local sec = ("0"):rep(63) .. "5"
    local ev = layer2.event.sign({ kind = 1, created_at = 1000, tags = {}, content = "read twice" }, sec)
    -- size-limited: L1 admits an event on its second read (counted by any process)
    local LIMITED = "l1 = { size_limit = 64 * 2 ^ 20 }"
    local db = assert(layer2.open(dir, { nosync = true, log = function() end, l1 = { size_limit = 64 * 2 ^ 20 } }))
    local line = layer2.event.encode(ev)
    assert(db:import(function()
      local l = line
      line = nil
      return l
    end))
    local nobody = ("ab"):rep(32)
    local function other(query)
      local p = helper.spawn(([[
        local layer2 = require("layer2")
        local db = assert(layer2.open(%q, { nosync = true, log = function() end, %s }))
        local res, from = assert(db:query_events(%s))
        print(#res, from.l1, from.l2, from.missing or 0)
        db:close()
      ]]):format(dir, LIMITED, query))
      local out = p:read("a")
      p:close()
      return out
    end
    -- the other process fetches the event once from L2 (one read: not admitted)...
    assert.equal("1\t0\t1\t0\n", other(("{ ids = { %q } }"):format(ev.id)))
    -- ...so this one's first fetch is its second read: admitted, and the next read is L1's
    local res, from = db:query_events({ ids = { ev.id } })
    assert.equal(1, #res)
    assert.equal(1, from.l2)
    res, from = db:query_events({ ids = { ev.id } })
    assert.equal(1, #res)
    assert.equal(1, from.l1)
    -- an id L2 does not have, learnt here, is not asked of L2 by the other process
    res, from = db:query_events({ ids = { nobody } })
    assert.same({}, res)
    assert.is_nil(from.missing)
    assert.equal("0\t0\t0\t1\n", other(("{ ids = { %q } }"):format(nobody)))
    db:close()
    helper.rmdir(dir)
  end)

  it("shares remembered answers between processes on one L1; a save in either ends them for both", function()
    local dir = helper.tmpdir()
    local sec = ("0"):rep(63) .. "7"
    local lines = {}
    for i = 1, 3 do
      lines[i] = layer2.event.encode(layer2.event.sign({ kind = 1, created_at = 1000 + i, tags = {}, content = "n" .. i },
        sec))
    end
    -- kept answers: an L1 without a size limit in front of the embedded L2 keeps none unless told
    local db = assert(layer2.open(dir, { nosync = true, log = function() end, l1 = { admit = "always" } }))
    local n = 0
    assert(db:import(function()
      n = n + 1
      return lines[n]
    end))
    local pk = layer2.event.parse(lines[1]).pubkey
    local filter = ("{ authors = { %q }, kinds = { 1 }, limit = 5 }"):format(pk)
    local function other(code)
      local p = helper.spawn(([[
        local layer2 = require("layer2")
        local db = assert(layer2.open(%q, { nosync = true, log = function() end, l1 = { admit = "always" } }))
        %s
        local res, from = assert(db:query_events(%s))
        print(#res, from.l2, db:stats().hits.answers)
        db:close()
      ]]):format(dir, code, filter))
      local out = p:read("a")
      p:close()
      return out
    end
    local f = load("return " .. filter)()
    local res, from = db:query_events(f)
    assert.equal(3, #res)
    assert.equal(3, from.l2, "L2 answered the filter")
    -- the other process asks the same filter: this one's answer serves it, by id
    assert.equal("3\t0\t1\n", other(""))
    -- the other process saves an event the filter matches: the answer is gone for both
    local save = ("assert(db:save_event(layer2.event.sign({ kind = 1, created_at = 2000, tags = {}, content = 'new' }, %q)))")
      :format(sec)
    assert.equal("4\t4\t0\n", other(save))
    res, from = db:query_events(f)
    assert.equal(4, #res)
    assert.equal(2000, res[1].created_at)
    -- the answer the other process remembered then serves this one
    assert.equal(0, from.l2)
    assert.equal(1, db:stats().hits.answers)
    db:close()
    helper.rmdir(dir)
  end)
end)
