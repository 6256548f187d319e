-- save_events: a batch in one write transaction per level, each event's verdict in order, the
-- same verdicts save_event gives one by one (checked against the reference, spec/ref.lua).
local layer2 = require("layer2")
local helper = require("spec.helper")
local ref = require("spec.ref")
local pg = require("spec.pg")

local event = layer2.event
local A, B = ("0"):rep(63) .. "a", ("0"):rep(63) .. "b"
local T, NOW = 1700000000, 1800000000
local quiet = function() end

local function sign(sec, kind, created_at, tags, content)
  return assert(event.sign({ kind = kind, created_at = created_at, tags = tags or {}, content = content or "" }, sec))
end

-- A batch with every kind of verdict: valid (table and JSON), a duplicate inside the batch,
-- replaceable versions (newer, then older), an addressable one, a deletion and its target, an
-- ephemeral event, a bad signature, a bad id, a broken shape, malformed JSON, a number.
local function mixed()
  local note = sign(A, 1, T, { { "t", "x" } }, "note")
  local target = sign(A, 1, T + 1, {}, "to delete")
  local bad_sig = sign(B, 1, T + 2, {}, "bad sig")
  bad_sig.sig = bad_sig.sig:sub(1, 127) .. (bad_sig.sig:sub(128) == "0" and "1" or "0")
  local bad_id = sign(B, 1, T + 3, {}, "bad id")
  bad_id.content = "changed"
  local shape = sign(B, 1, T + 4, {}, "shape")
  shape.kind = "1"
  local list = {
    note, event.encode(sign(B, 1, T + 5, {}, "as JSON")), note,
    sign(A, 0, T + 10, {}, '{"name":"new"}'), sign(A, 0, T + 9, {}, '{"name":"older"}'),
    sign(A, 30023, T + 11, { { "d", "a" } }, "article"),
    target, sign(A, 5, T + 12, { { "e", target.id } }, "delete it"), target,
    sign(B, 20001, T + 13, {}, "ephemeral"),
    bad_sig, bad_id, shape, "{not json", 42,
  }
  return list
end

-- what save_event's rules say of each, in order: true or the message's prefix
local function expected(list)
  local model, out = ref.new(), {}
  for i, ev in ipairs(list) do
    local ok, verr
    if type(ev) == "table" or type(ev) == "string" then ok, verr = event.verify(ev) end
    if type(ev) ~= "table" and type(ev) ~= "string" then out[i] = "invalid"
    elseif not ok then out[i] = verr:match("^(%a+):")
    else
      local p = type(ev) == "string" and event.parse(ev) or ev
      local saved, prefix = model:save(p, NOW)
      out[i] = saved or prefix
    end
  end
  return out, model
end

local function check_verdicts(list, verdicts)
  local want = expected(list)
  assert.equal(#list, #verdicts)
  for i, v in ipairs(verdicts) do
    if want[i] == true then assert(v == true, ("event %d: %s"):format(i, tostring(v)))
    else
      assert.equal("string", type(v), "event " .. i)
      assert.matches("^" .. want[i] .. ":", v, 1, false, "event " .. i)
    end
  end
end

local function same_store(db, list)
  local _, model = expected(list)
  assert.same(model:query({ {} }, NOW, 1000), helper.ids(db:query_events({}, { now = NOW, max_limit = 1000 })))
end

local stores = {
  { name = "the LMDB store", open = function()
    local dir = helper.tmpdir()
    return assert(layer2.lmdb.open(dir, { nosync = true })), function() helper.rmdir(dir) end
  end },
  { name = "the PostgreSQL store", open = function()
    return assert(layer2.postgres.open((pg.fresh()))), function() end
  end },
  { name = "the two-level backend", open = function()
    local dir = helper.tmpdir()
    -- the corpus's clock (NOW) is not the machine's: no future limit here (coherence_spec tests it)
    return assert(layer2.open(dir, { nosync = true, log = quiet, future_limit = false })),
      function() helper.rmdir(dir) end
  end },
  { name = "the two-level backend with a 1 MiB L1", open = function()
    local dir = helper.tmpdir()
    return assert(layer2.open(dir, { nosync = true, log = quiet, l1 = { size_limit = 1048576 }, future_limit = false })),
      function() helper.rmdir(dir) end
  end },
}

for _, s in ipairs(stores) do
  describe("save_events on " .. s.name, function()
    it("gives each event the verdict the rules give it, in order, and stores each once", function()
      local db, cleanup = s.open()
      local list = mixed()
      check_verdicts(list, assert(db:save_events(list, { now = NOW })))
      same_store(db, list)
      -- the same batch again: nothing new, each one a refusal now
      local again = assert(db:save_events(list, { now = NOW }))
      for i, v in ipairs(again) do
        if type(list[i]) == "table" and list[i].kind == 20001 then assert.is_true(v)
        else assert.equal("string", type(v), "event " .. i) end
      end
      same_store(db, list)
      assert.same({}, assert(db:save_events({})))
      db:close()
      cleanup()
    end)

    it("agrees with save_event one by one over a corpus, in batches of 100", function()
      local db, cleanup = s.open()
      local lines = helper.lines(helper.corpora()[1].valid)
      local model = ref.new()
      for from = 1, #lines, 100 do
        local batch = {}
        for i = from, math.min(#lines, from + 99) do batch[#batch + 1] = lines[i] end
        local verdicts = assert(db:save_events(batch, { now = NOW }))
        for k, line in ipairs(batch) do
          local ok, prefix = model:save(event.parse(line), NOW)
          if ok then assert(verdicts[k] == true, ("line %d: %s"):format(from + k - 1, tostring(verdicts[k])))
          else assert.matches("^" .. prefix .. ":", verdicts[k]) end
        end
      end
      assert.same(model:query({ {} }, NOW, 100000), helper.ids(db:query_events({}, { now = NOW, max_limit = 100000 })))
      db:close()
      cleanup()
    end)

    it("refuses misuse and an oversized batch clearly", function()
      local db, cleanup = s.open()
      assert.has_error(function() db:save_events("x") end)
      if s.name:match("store$") then
        local big = {}
        for i = 1, 10001 do big[i] = "{}" end
        local r, err = db:save_events(big)
        assert.is_nil(r)
        assert.equal("invalid: more than 10000 events in one save_events call", err)
      end
      db:close()
      if s.name:match("store$") then
        assert.has_error(function() db:save_events({}) end, "layer2: attempt to use a closed store")
      end
      cleanup()
    end)
  end)
end

describe("save_events on the two-level backend", function()
  local function lua_l2(store, fail)
    -- a Lua object with the store methods but no save_events: saved one by one
    local l2 = { saves = 0 }
    for _, m in ipairs({ "query_events", "count_events", "delete_event", "import", "export", "nuke", "sync", "path",
      "close", "stats" }) do
      l2[m] = function(_, ...) return store[m](store, ...) end
    end
    l2.save_event = function(self, ...)
      if fail() then error("L2 is down") end
      self.saves = self.saves + 1
      return store:save_event(...)
    end
    return l2
  end

  -- a backend in front of a Lua-table L2 over an LMDB store; body(db, store, l2, logged), then cleanup
  local function with_lua_l2(fail, body)
    local dir = helper.tmpdir()
    local store = assert(layer2.lmdb.open(dir .. "-l2", { nosync = true }))
    local l2, logged = lua_l2(store, fail), {}
    local db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = function(m) logged[#logged + 1] = m end }))
    body(db, store, l2, logged)
    db:close()
    store:close()
    helper.rmdir(dir)
    helper.rmdir(dir .. "-l2")
  end

  it("an L2 without save_events is saved event by event, with the same verdicts", function()
    with_lua_l2(function() return false end, function(db, store, l2)
      local list = mixed()
      check_verdicts(list, assert(db:save_events(list, { now = NOW })))
      same_store(store, list)
      assert(l2.saves >= 8, "each valid event reached L2")
    end)
  end)

  it("when L2 fails, L1 decides and keeps the batch in its outbox until L2 has it", function()
    local down = true
    with_lua_l2(function() return down end, function(db, store, _, logged)
      local list = mixed()
      check_verdicts(list, assert(db:save_events(list, { now = NOW })))
      assert.equal(0, store:count_events({}))
      assert.matches("L2 save failed, queued in the outbox", logged[1])
      same_store(db.l1, list)
      down = false
      db:sync()
      same_store(store, list)
      assert.equal(0, db:stats().outbox)
    end)
  end)

  it("signals each saved event once, ephemeral ones included, and no refused one", function()
    local dir = helper.tmpdir()
    local db = assert(layer2.open(dir, { nosync = true, log = quiet }))
    local seen = {}
    db:on_event(function(ev, origin) seen[#seen + 1] = ev.id .. " " .. origin end)
    local list = mixed()
    local verdicts = assert(db:save_events(list, { now = NOW }))
    local want = {}
    for i, v in ipairs(verdicts) do
      if v == true then
        local ev = type(list[i]) == "string" and event.parse(list[i]) or list[i]
        want[#want + 1] = ev.id .. " local"
      end
    end
    table.sort(want)
    table.sort(seen)
    assert.same(want, seen)
    db:close()
    helper.rmdir(dir)
  end)
end)

describe("a bulk batch's signature checks", function()
  -- the nice value of each thread of process `pid` (field 19 of /proc/PID/task/TID/stat, counted
  -- after the command name's closing parenthesis)
  local function nices(pid)
    local out = {}
    local ls = assert(io.popen("ls /proc/" .. pid .. "/task 2>/dev/null"))
    for tid in ls:lines() do
      local f = io.open(("/proc/%s/task/%s/stat"):format(pid, tid))
      local stat = f and f:read("a")
      if f then f:close() end
      local after = stat and stat:match("%)%s(.*)$")
      if after then
        local fields = {}
        for w in after:gmatch("%S+") do fields[#fields + 1] = w end
        out[tid] = tonumber(fields[17]) -- field 19 of the whole line
      end
    end
    ls:close()
    return out
  end

  it("run on threads of the lowest priority, the caller's own unchanged", function()
    if not io.open("/proc/self/stat") then return pending("no /proc here") end
    local stop = os.tmpname()
    os.remove(stop)
    -- a process verifying a batch of 2,000 events again and again until told to stop, and a
    -- batch of 10 between (checked on the caller's thread alone)
    local child = helper.spawn(([=[
local layer2 = require("layer2")
local f = assert(io.open("/proc/self/stat"))
print(f:read("a"):match("^%%d+"))
f:close()
io.stdout:flush()
local g = require("layer2.gen").new({ seed = 5, authors = 4, count = 2000 })
local list, short = {}, {}
for i = 1, 2000 do list[i] = g:next() end
for i = 1, 10 do short[i] = list[i] end
for _ = 1, 1e9 do
  local s = io.open(%q)
  if s then s:close() break end
  for _, v in ipairs(layer2.event.verify_list(list)) do assert(v == true, v) end
  for _, v in ipairs(layer2.event.verify_list(short)) do assert(v == true, v) end
end
print("done")
]=]):format(stop))
    local pid = assert(child:read("l"))
    local low, others_low = false, false
    for _ = 1, 2000 do -- until a checking thread is seen (the process verifies until then)
      for tid, nice in pairs(nices(pid)) do
        if nice == 19 then low = true end
        if tid == pid and nice ~= 0 then others_low = true end
      end
      if low then break end
      os.execute("sleep 0.01")
    end
    local f = assert(io.open(stop, "w"))
    f:close()
    local rest = child:read("a")
    child:close()
    os.remove(stop)
    assert.equal("done\n", rest)
    assert.is_true(low, "a thread at nice 19 while a batch of 2,000 was checked")
    assert.is_false(others_low, "the caller's thread stays at nice 0")
  end)
end)
