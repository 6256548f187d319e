-- L1 never answers differently from L2 (docs/DESIGN.md §3, "L1's place in L2's feed"): a writer
-- is killed at named steps of each write path (csrc/killpoint.h), between L2's commit and L1's or
-- inside a batch, an import, an eviction or a poll. Then a fresh process answers every id lookup
-- (asked first, so that no filter's answer mends L1 on the way) and every filter exactly as its
-- L2 does and as spec/ref.lua does over what L2 committed.
local helper = require("spec.helper")
local layer2 = require("layer2")
local ref = require("spec.ref")
local pg = require("spec.pg")

local KEYS = { ("0"):rep(63) .. "1", ("0"):rep(63) .. "2", ("0"):rep(63) .. "3" }
local NOW = os.time()

local function sign(key, t)
  t.tags = t.tags or {}
  t.content = t.content or ""
  return layer2.event.sign(t, key)
end

-- The child: opens the two-level store, runs the ops in order, arming the named step before the
-- op that carries it; it prints "done" only when no step killed it.
local CHILD = [=[
local layer2 = require("layer2")
local core = require("layer2.core")
local dir, opts, ops = %q, load("return " .. %q)(), load("return " .. %q)()
opts.log = function() end
local db = assert(layer2.open(dir, opts))
local function parse(list)
  local out = {}
  for i, s in ipairs(list) do out[i] = layer2.event.parse(s) end
  return out
end
for _, op in ipairs(ops) do
  if op.arm then core.testing.kill_at(op.arm, op.nth) end
  if op[1] == "save" then
    assert(db:save_events(parse(op.evs)))
  elseif op[1] == "delete" then
    assert(db:delete_event(op.id, op.no_tombstone))
  elseif op[1] == "import" then
    assert(db:import(op.file, { batch = op.batch }))
  elseif op[1] == "gc" then
    assert(db:gc(true))
  elseif op[1] == "poll" then
    assert(db:poll())
  elseif op[1] == "other" then
    -- another writer of the same L2, whose changes reach this L1 only by its feed
    local other = assert(opts.l2 and layer2.postgres.open(opts.l2) or layer2.lmdb.open(dir .. "/layer2"))
    assert(other:save_events(parse(op.evs)))
    for _, id in ipairs(op.delete or {}) do assert(other:delete_event(id)) end
    other:close()
  end
end
db:close()
print("done")
]=]

local function serialize(v)
  if type(v) == "table" then
    local parts = {}
    for k, x in pairs(v) do
      local key = type(k) == "number" and ("[%d]"):format(k) or ("[%q]"):format(k)
      parts[#parts + 1] = key .. "=" .. serialize(x)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return type(v) == "string" and ("%q"):format(v) or tostring(v)
end

local function run_child(dir, opts, ops)
  local p = helper.spawn(CHILD:format(dir, serialize(opts), serialize(ops)))
  local out = p:read("a")
  p:close()
  return out
end

-- The events a workload makes, by name, and the ops that save them.
local function workload()
  local ev = {}
  local notes = {}
  for i = 1, 24 do
    notes[i] = sign(KEYS[i % 3 + 1], { kind = 1, created_at = NOW - 500 + i * 10, content = "note " .. i,
      tags = { { "t", i % 2 == 0 and "even" or "odd" } } })
  end
  ev.notes = notes
  ev.target = sign(KEYS[1], { kind = 1, created_at = NOW - 100, content = "to be deleted" })
  ev.profile1 = sign(KEYS[1], { kind = 0, created_at = NOW - 90, content = "{\"name\":\"one\"}" })
  ev.profile2 = sign(KEYS[1], { kind = 0, created_at = NOW - 50, content = "{\"name\":\"two\"}" })
  ev.list1 = sign(KEYS[2], { kind = 30000, created_at = NOW - 80, tags = { { "d", "x" } }, content = "v1" })
  ev.list2 = sign(KEYS[2], { kind = 30000, created_at = NOW - 40, tags = { { "d", "x" } }, content = "v2" })
  ev.del_e = sign(KEYS[1], { kind = 5, created_at = NOW - 30, tags = { { "e", ev.target.id } } })
  ev.del_a = sign(KEYS[2], { kind = 5, created_at = NOW - 20,
    tags = { { "a", "30000:" .. ev.list1.pubkey .. ":x" } } })
  ev.fresh = sign(KEYS[3], { kind = 1, created_at = NOW - 10, content = "fresh" })
  ev.imported = {}
  for i = 1, 40 do
    ev.imported[i] = sign(KEYS[i % 3 + 1], { kind = 1, created_at = NOW - 200 + i, content = "imported " .. i })
  end
  ev.bulk = {}
  for i = 1, 200 do
    ev.bulk[i] = sign(KEYS[i % 3 + 1], { kind = 1, created_at = NOW - 1000 + i, content = ("b"):rep(1000) .. i })
  end
  ev.others = {}
  for i = 1, 30 do
    ev.others[i] = sign(KEYS[i % 3 + 1], { kind = 1, created_at = NOW - 5 + i % 4, content = "other " .. i })
  end
  return ev
end

local function encode_all(list)
  local out = {}
  for i, e in ipairs(list) do out[i] = layer2.event.encode(e) end
  return out
end

-- Every id lookup first, then the filters: the fresh backend against its own L2 and the reference.
local function compare(dir, opts, model, universe, label)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.log = function() end
  local db = assert(layer2.open(dir, o))
  for _, e in ipairs(universe) do
    local got = helper.ids(db:query_events({ ids = { e.id } }))
    local want = helper.ids(db.l2:query_events({ ids = { e.id } }))
    assert.same(want, got, ("%s: the id lookup of %s"):format(label, e.content))
    assert.same(model.byid[e.id] and { e.id } or {}, got, ("%s: the reference's lookup of %s"):format(label,
      e.content))
  end
  local a = universe[1].pubkey
  local filters = {
    { kinds = { 1 }, limit = 10 }, { kinds = { 1 }, limit = 50 }, { kinds = { 0 } }, { kinds = { 30000 } },
    { kinds = { 5 } }, { authors = { a } }, { limit = 100 }, { since = NOW - 120 }, { ["#t"] = { "even" } },
    { kinds = { 1 }, since = NOW - 3000, limit = 500 },
  }
  for _, f in ipairs(filters) do
    local got = helper.ids(db:query_events(f))
    assert.same(helper.ids(db.l2:query_events(f)), got, ("%s: %s"):format(label, serialize(f)))
    assert.same(model:query({ f }, os.time()), got, ("%s: the reference's %s"):format(label,
      serialize(f)))
  end
  local ok, problems = db:check()
  assert(ok, label .. ": " .. table.concat(problems or {}, "\n"))
  db:close()
end

-- The scenarios: what is saved before, then the op killed at a named step, and what of it L2 has
-- committed at that step (the reference's view of it).
local function scenarios(ev)
  local base = { { "save", evs = encode_all(ev.notes) }, { "save", evs = encode_all({ ev.target, ev.profile1,
    ev.list1 }) } }
  return {
    { name = "save_event, L2 committed, L1 not", step = "save:l2-committed",
      op = { "save", evs = encode_all({ ev.fresh }) }, applied = { ev.fresh } },
    { name = "save_events: NIP-09 by e and a replacement, L2 committed", step = "save:l2-committed",
      op = { "save", evs = encode_all({ ev.del_e, ev.profile2 }) }, applied = { ev.del_e, ev.profile2 } },
    { name = "NIP-09 by a, L2 committed", step = "save:l2-committed",
      op = { "save", evs = encode_all({ ev.del_a }) }, applied = { ev.del_a } },
    { name = "addressable replacement, L2 committed", step = "save:l2-committed",
      op = { "save", evs = encode_all({ ev.list2 }) }, applied = { ev.list2 } },
    { name = "delete_event, L2 committed, L1 not", step = "delete:l2-committed",
      op = { "delete", id = ev.notes[3].id }, deleted = { ev.notes[3] } },
    { name = "a batch in a small L1, killed between its L1 transactions", step = "save:l1-chunk", small = true,
      op = { "save", evs = encode_all(ev.others) }, applied = ev.others },
    { name = "import killed after its third batch", step = "import:batch", nth = 3, import = true,
      applied = { table.unpack(ev.imported, 1, 12) } },
    { name = "eviction (a save's, in a small L1) killed between its steps", step = "gc:evicted", small = true,
      op = { "save", evs = encode_all(ev.bulk) }, applied = ev.bulk },
    { name = "poll killed after applying L2's feed, before its position moved", step = "catch-up:applied",
      pre = { { "other", evs = encode_all(ev.others), delete = { ev.notes[5].id } } }, before = ev.others,
      op = { "poll" }, deleted = { ev.notes[5] } },
  }, base
end

for _, l2_kind in ipairs({ "lmdb", "postgres" }) do
  describe("L1 agrees with its " .. l2_kind .. " L2 after a writer is killed at a named step", function()
    local ev = workload()
    local list, base = scenarios(ev)
    local universe = {}
    for _, group in ipairs({ ev.notes, ev.imported, ev.others, ev.bulk }) do
      for _, e in ipairs(group) do universe[#universe + 1] = e end
    end
    for _, k in ipairs({ "target", "profile1", "profile2", "list1", "list2", "del_e", "del_a", "fresh" }) do
      universe[#universe + 1] = ev[k]
    end

    for _, sc in ipairs(list) do
      it(sc.name .. " (" .. sc.step .. ")", function()
        local dir = helper.tmpdir()
        local opts = { nosync = true, l2 = l2_kind == "postgres" and pg.fresh() or nil }
        if sc.small then opts.l1 = { size_limit = 256 * 1024 } end
        local ops = {}
        for _, op in ipairs(base) do ops[#ops + 1] = op end
        for _, op in ipairs(sc.pre or {}) do ops[#ops + 1] = op end
        local op = sc.op
        local file
        if sc.import then
          file = dir .. "-import.jsonl"
          local f = assert(io.open(file, "w"))
          for _, line in ipairs(encode_all(ev.imported)) do f:write(line, "\n") end
          f:close()
          op = { "import", file = file, batch = 4 }
        end
        op.arm, op.nth = sc.step, sc.nth
        ops[#ops + 1] = op
        local out = run_child(dir, opts, ops)
        -- killed at the step: nothing printed but the shell's word for it
        assert.equal("", (out:gsub("Killed%s*", "")), "the child was not killed at " .. sc.step)
        -- the reference: what L2 committed before the step and at it
        local model = ref.new()
        for _, group in ipairs({ ev.notes, { ev.target, ev.profile1, ev.list1 }, sc.before or {}, sc.applied or {} }) do
          for _, e in ipairs(group) do model:save(e, os.time()) end
        end
        for _, e in ipairs(sc.deleted or {}) do model:remove(model.byid[e.id]) end
        compare(dir, opts, model, universe, sc.name)
        helper.rmdir(dir)
        if file then os.remove(file) end
      end)
    end
  end)
end

-- Every id of `universe` and a set of filters: db answers as db.l2 does (ids first).
local function agrees(db, universe, label)
  for _, e in ipairs(universe) do
    assert.same(helper.ids(db.l2:query_events({ ids = { e.id } })), helper.ids(db:query_events({ ids = { e.id } })),
      ("%s: the id lookup of %s"):format(label, e.id))
  end
  for _, f in ipairs({ { kinds = { 1 }, limit = 10 }, { kinds = { 1 }, limit = 300 }, { kinds = { 0 } },
    { kinds = { 5 } }, { limit = 100 }, { since = NOW - 120 }, { kinds = { 1 }, since = NOW - 20 } }) do
    assert.same(helper.ids(db.l2:query_events(f)), helper.ids(db:query_events(f)), ("%s: %s"):format(label,
      serialize(f)))
  end
end

describe("L1 agrees with L2 when it falls behind", function()
  local ev = workload()
  local universe = {}
  for _, group in ipairs({ ev.notes, ev.others, { ev.target, ev.fresh, ev.profile1 } }) do
    for _, e in ipairs(group) do universe[#universe + 1] = e end
  end

  for _, l2_kind in ipairs({ "lmdb", "postgres" }) do
    -- the options of a backend on this kind of L2, and another writer of that same L2
    local function options(extra)
      local o = { nosync = true, l2 = l2_kind == "postgres" and pg.fresh() or nil }
      for k, v in pairs(extra or {}) do o[k] = v end
      return o
    end
    local function other_writer(dir, o)
      return assert(o.l2 and layer2.postgres.open(o.l2) or layer2.lmdb.open(dir .. "/layer2"))
    end

    it(l2_kind .. ": a process open all along catches up at its next gc timer step after a writer died between "
      .. "the commits", function()
      local dir = helper.tmpdir()
      local logs = {}
      local o = options()
      local db = assert(layer2.open(dir, options({ l2 = o.l2, log = function(m) logs[#logs + 1] = m end })))
      assert(db:save_events(ev.notes))
      assert(db:save_event(ev.target))
      local _, from = db:query_events({ kinds = { 1 }, limit = 10 })
      assert.equal(0, from.l2, "L1 proves it alone")
      local out = run_child(dir, o, { { "delete", id = ev.target.id, arm = "delete:l2-committed" } })
      assert.equal("", (out:gsub("Killed%s*", "")))
      assert.equal(0, db.l2:count_events({ ids = { ev.target.id } }), "L2 deleted it")
      assert(db:gc())
      if l2_kind == "lmdb" then
        assert.truthy(table.concat(logs, "\n"):find("a process died while writing", 1, true))
      end
      agrees(db, universe, "after gc")
      db:close()
      helper.rmdir(dir)
    end)

    it(l2_kind .. ": an L1 emptied behind the backend answers as L2, and proves answers again after a gc timer "
      .. "step", function()
      local dir = helper.tmpdir()
      local db = assert(layer2.open(dir, options({ log = function() end })))
      assert(db:save_events(ev.notes))
      assert(db.l1:nuke())
      agrees(db, universe, "emptied")
      assert(db:gc())
      assert(db:save_events(ev.others))
      agrees(db, universe, "after gc")
      local _, from = db:query_events({ kinds = { 1 }, since = NOW - 20 })
      assert.same({ #ev.others, 0 }, { from.l1, from.l2 }, "L1 proves what was saved since")
      db:close()
      helper.rmdir(dir)
    end)

    it(l2_kind .. ": an L1 too small for what a poll brings moves its horizon past it, says so, and answers as L2",
      function()
      local dir = helper.tmpdir()
      local logs = {}
      local o = options({ l1 = { size_limit = 256 * 1024 }, log = function(m) logs[#logs + 1] = m end })
      local db = assert(layer2.open(dir, o))
      assert(db:save_events(ev.notes))
      local big = sign(KEYS[2], { kind = 1, created_at = NOW - 15, content = ("x"):rep(40000) })
      local other = other_writer(dir, o)
      assert(other:save_event(big))
      local r = assert(db:poll())
      assert.equal(0, r.received)
      assert.truthy(table.concat(logs, "\n"):find("L1 could not take 1 event(s) of L2's feed", 1, true))
      local got, from = db:query_events({ kinds = { 1 }, since = NOW - 20 })
      assert.same({ { big.id }, 1 }, { helper.ids(got), from.l2 })
      agrees(db, universe, "after the poll")
      other:close()
      db:close()
      helper.rmdir(dir)
    end)
  end

  it("a deletion without a tombstone, replayed after its writer died, lets the event come back into L1", function()
    local dir = helper.tmpdir()
    local opts = { nosync = true }
    local out = run_child(dir, opts, { { "save", evs = encode_all(ev.notes) },
      { "delete", id = ev.notes[20].id, no_tombstone = true, arm = "delete:l2-committed" } })
    assert.equal("", (out:gsub("Killed%s*", "")))
    local db = assert(layer2.open(dir, { nosync = true, log = function() end }))
    agrees(db, universe, "replayed")
    assert.is_true(db:save_event(ev.notes[20]), "L2 keeps no tombstone: it takes the event again")
    assert.same({ ev.notes[20].id }, helper.ids(db.l1:query_events({ ids = { ev.notes[20].id } })),
      "and so does L1")
    agrees(db, universe, "saved again")
    db:close()
    helper.rmdir(dir)
  end)

  it("a deletion queued while L2 was down reaches L2 with its tombstone, or without one, as it was asked", function()
    local dir = helper.tmpdir()
    os.execute("mkdir -p '" .. dir .. "'")
    local raw = assert(layer2.lmdb.open(dir .. "/l2", { nosync = true }))
    local down = false
    local l2 = setmetatable({}, { __index = function(_, name)
      return function(_, ...)
        if down then return nil, "error: L2 is down" end
        return raw[name](raw, ...)
      end
    end })
    local db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = function() end }))
    assert(db:save_events(ev.notes))
    down = true
    assert(db:delete_event(ev.notes[1].id))
    assert(db:delete_event(ev.notes[2].id, true))
    down = false
    assert.equal(2, db:poll().sent)
    assert.same({ false, "blocked: this event was deleted by its author" },
      { raw:save_event(ev.notes[1]) }, "the tombstone reached L2")
    assert.is_true(raw:save_event(ev.notes[2]), "no tombstone was asked for")
    db:close()
    raw:close()
    helper.rmdir(dir)
  end)

  it("two processes writing at once (batches, deletions without a tombstone, saves again): L1 ends at L2's "
    .. "last change, nothing ahead, and answers as L2", function()
    local dir = helper.tmpdir()
    local go = dir .. "-go"
    local writer = [=[
local layer2 = require("layer2")
local dir, go, seed = %q, %q, %d
local db = assert(layer2.open(dir, { nosync = true, log = function() end }))
local g = require("layer2.gen").new({ seed = seed, authors = 6, count = 100000 })
for _ = 1, 400 do
  local f = io.open(go)
  if f then f:close() break end
  os.execute("sleep 0.01")
end
local mine = {}
for i = 1, 60 do
  local batch = {}
  for j = 1, 4 do batch[j] = g:next() end
  assert(db:save_events(batch))
  for _, e in ipairs(batch) do if e.kind == 1 then mine[#mine + 1] = e end end
  if i %% 6 == 0 and #mine > 0 then
    local e = mine[#mine]
    db:delete_event(e.id, true) -- no tombstone: the same event may come back
    assert(db:save_event(e))
  end
end
local st = db:stats()
db:close()
print(("done %%d %%d"):format(st.feed_position, st.feed_ahead))
]=]
    local procs = {}
    for k = 1, 2 do procs[k] = helper.spawn(writer:format(dir, go, 40 + k)) end
    assert(io.open(go, "w")):close()
    local last = { 0, 0 }
    for k = 1, 2 do
      local out = procs[k]:read("a")
      procs[k]:close()
      local pos, ahead = out:match("^done (%d+) (%d+)\n$")
      assert(pos, out)
      if tonumber(pos) > last[1] then last = { tonumber(pos), tonumber(ahead) } end
    end
    -- the writer that finished last left L1 at L2's last change with nothing ahead, on its own
    local l2 = assert(layer2.lmdb.open(dir .. "/layer2"))
    assert.same({ l2:stats().last_seq, 0 }, last)
    l2:close()
    local db = assert(layer2.open(dir, { nosync = true, log = function() end }))
    local all = {}
    db.l2:export(function(line) all[#all + 1] = layer2.event.parse(line) end)
    assert(#all > 300)
    agrees(db, all, "two writers")
    db:close()
    os.remove(go)
    helper.rmdir(dir)
  end)

  it("a large save gives way to light ones waiting for the write lock; killed between its parts, L1 answers as "
    .. "L2", function()
    -- a light writer (one event a save) in a loop, and a large one (batches of 200) armed to die
    -- at the step between two parts of a batch that gave way (save:gave-way)
    local dir = helper.tmpdir()
    local stop, log = dir .. "-stop", dir .. "-light.log"
    local light = helper.spawn(([=[
local layer2 = require("layer2")
local db = assert(layer2.open(%q, { nosync = true, log = function() end }))
local g = require("layer2.gen").new({ seed = 77, authors = 6, count = 100000 })
local log = assert(io.open(%q, "w"))
for _ = 1, 1e9 do
  local f = io.open(%q)
  if f then f:close() break end
  local ev = g:next()
  if db:save_event(ev) then log:write(ev.id, "\n") log:flush() end
end
db:close()
print("done")
]=]):format(dir, log, stop))
    local bulk = {}
    local heavy = helper.spawn(([=[
local layer2 = require("layer2")
local core = require("layer2.core")
local db = assert(layer2.open(%q, { nosync = true, log = function() end }))
local g = require("layer2.gen").new({ seed = 78, authors = 6, count = 100000 })
for _ = 1, 600 do -- until the light writer has saved something
  local f = io.open(%q)
  if f and f:read("l") then f:close() break end
  if f then f:close() end
  os.execute("sleep 0.01")
end
core.testing.kill_at("save:gave-way")
for round = 1, 40 do
  local batch = {}
  for i = 1, 200 do
    local ev = g:next()
    ev.kind, ev.tags = 1, {}
    batch[i] = layer2.event.sign(ev, g.keys[1])
  end
  print(round)
  io.stdout:flush()
  assert(db:save_events(batch))
end
print("done")
]=]):format(dir, log))
    local out = heavy:read("a")
    heavy:close()
    assert(io.open(stop, "w")):close()
    light:read("a")
    light:close()
    local rounds = tonumber(out:match("(%d+)%s*Killed%s*$") or out:match("(%d+)%s*$"))
    assert.is_nil(out:find("done", 1, true), "the large writer never gave way in 40 batches: " .. out)
    assert(rounds, out)
    -- the same batches, made again: the killed one's events L2 committed are its first part
    local g = require("layer2.gen").new({ seed = 78, authors = 6, count = 100000 })
    local l2 = assert(layer2.lmdb.open(dir .. "/layer2"))
    for round = 1, rounds do
      local kept = 0
      for i = 1, 200 do
        local made = g:next()
        made.kind, made.tags = 1, {}
        made = layer2.event.sign(made, g.keys[1])
        bulk[#bulk + 1] = made
        local there = l2:count_events({ ids = { made.id } }) == 1
        if there then kept = kept + 1 end
        assert.equal(kept == i, there, ("batch %d: L2 committed its first part, in order (event %d)"):format(round, i))
      end
      if round < rounds then
        assert.equal(200, kept, "a batch that returned is all in L2")
      else
        assert.is_true(kept >= 32 and kept < 200, "the killed batch committed a first part of at least 32: " .. kept)
      end
    end
    l2:close()
    local saved = {}
    for line in io.lines(log) do saved[#saved + 1] = { id = line } end
    for _, e in ipairs(bulk) do saved[#saved + 1] = e end
    local db = assert(layer2.open(dir, { nosync = true, log = function() end }))
    for _, e in ipairs(saved) do
      assert.same(helper.ids(db.l2:query_events({ ids = { e.id } })), helper.ids(db:query_events({ ids = { e.id } })),
        "the id lookup of " .. e.id)
    end
    agrees(db, bulk, "after the kill between parts")
    assert.same({}, select(2, db:check()) or {})
    db:close()
    os.remove(stop)
    os.remove(log)
    helper.rmdir(dir)
  end)

  it("random kills of a writer doing saves, batches, deletions and replacements: every round answers as L2",
    function()
      local dir = helper.tmpdir()
      local script = dir .. "-writer.lua"
      local f = assert(io.open(script, "w"))
      f:write(([=[
local layer2 = require("layer2")
local dir, seed, working = %q, tonumber(arg[1]), arg[2]
local db = assert(layer2.open(dir, { nosync = true, l1 = { size_limit = 1024 * 1024 }, log = function() end }))
local g = require("layer2.gen").new({ seed = seed, authors = 8, count = 100000 })
local mine = {}
for i = 1, 1e9 do
  if i == 2 then assert(io.open(working, "w")):close() end -- a batch is saved: the kill may come
  local batch = {}
  for j = 1, i %% 7 + 1 do batch[j] = g:next() end
  db:save_events(batch)
  for _, e in ipairs(batch) do if e.kind == 1 then mine[#mine + 1] = e.id end end
  if i %% 5 == 0 and #mine > 0 then db:delete_event(mine[#mine]) end
  if i %% 50 == 0 then db:gc() end
end
]=]):format(dir))
      f:close()
      local rand = helper.rng(2812)
      local working = dir .. "-working"
      for round = 1, 8 do
        -- the kill comes a random while after the writer's first batch (however slow its start)
        os.remove(working)
        os.execute(("%s %s %d %s > /dev/null 2>&1 & p=$!; for _ in $(seq 600); do [ -e %s ] && break; sleep 0.05; done; "
          .. "sleep %.3f; kill -9 $p; wait $p 2>/dev/null"):format(helper.LUA, script, round, working, working,
          0.05 + rand(300) / 1000))
        local db = assert(layer2.open(dir, { nosync = true, l1 = { size_limit = 1024 * 1024 },
          log = function() end }))
        local ids = {}
        db.l2:export(function(line) ids[#ids + 1] = layer2.event.parse(line) end)
        db.l1:export(function(line) ids[#ids + 1] = layer2.event.parse(line) end)
        assert(#ids > 0, "the writer saved nothing before it was killed")
        agrees(db, ids, "round " .. round)
        db:close()
      end
      os.remove(script)
      os.remove(working)
      helper.rmdir(dir)
    end)
end)

describe("events dated far ahead of the clock", function()
  it("are refused by default (900 s ahead; future_limit sets it, false lifts it) and nothing is stored", function()
    local dir = helper.tmpdir()
    local db = assert(layer2.open(dir, { nosync = true, log = function() end }))
    local ahead = sign(KEYS[1], { kind = 1, created_at = os.time() + 1000, content = "from the future" })
    local near = sign(KEYS[1], { kind = 1, created_at = os.time() + 600, content = "a clock a little fast" })
    assert.same({ false, "invalid: created_at is more than 900 seconds ahead of the clock" },
      { db:save_event(ahead) })
    assert.same({ "invalid: created_at is more than 900 seconds ahead of the clock", true },
      db:save_events({ ahead, near }))
    assert.same({ 0, 0 }, { db.l1:count_events({ ids = { ahead.id } }), db.l2:count_events({ ids = { ahead.id } }) })
    assert.equal(1, db.l2:count_events({ ids = { near.id } }))
    db:close()
    db = assert(layer2.open(dir, { nosync = true, future_limit = 60, log = function() end }))
    assert.same({ false, "invalid: created_at is more than 60 seconds ahead of the clock" },
      { db:save_event(sign(KEYS[2], { kind = 1, created_at = os.time() + 120 })) })
    db:close()
    db = assert(layer2.open(dir, { nosync = true, future_limit = false, log = function() end }))
    assert.is_true(db:save_event(ahead))
    db:close()
    for _, bad in ipairs({ -1, 1.5, "900", true }) do
      assert.has_error(function() layer2.open(dir, { future_limit = bad }) end,
        "layer2.open: future_limit must be a whole number of seconds, or false for no limit")
    end
    helper.rmdir(dir)
  end)

  it("already in L2 (2^53 - 1 among them) do not put a new L1's horizon where it proves nothing", function()
    local dir = helper.tmpdir()
    os.execute("mkdir -p '" .. dir .. "'")
    local l2 = assert(layer2.lmdb.open(dir .. "/layer2", { nosync = true }))
    local far = sign(KEYS[3], { kind = 1, created_at = 2 ^ 53 - 1, content = "the end of time" })
    local notes = {}
    for i = 1, 5 do notes[i] = sign(KEYS[i % 3 + 1], { kind = 1, created_at = NOW - 100 + i, content = "n" .. i }) end
    assert(l2:save_events({ far, table.unpack(notes) }))
    l2:close()
    local db = assert(layer2.open(dir, { nosync = true, log = function() end }))
    assert(db:stats().horizon <= os.time() + 1, "the horizon is at the present")
    assert(db:save_event(sign(KEYS[1], { kind = 1, created_at = NOW - 1, content = "new" })))
    local got, from = db:query_events({ kinds = { 1 }, limit = 2 })
    assert.same(helper.ids(db.l2:query_events({ kinds = { 1 }, limit = 2 })), helper.ids(got))
    assert.same({ far.id, 2, 0 }, { got[1].id, from.l1, from.l2 }, "L1 holds the far event and proves the answer")
    agrees(db, notes, "far future")
    db:close()
    helper.rmdir(dir)
  end)
end)
