-- Store format 4 (8-byte prefixes of ids, pubkeys and hex values in index keys, 10-byte key tails;
-- one copy of a cached event) and the upgrade from formats 1, 2 and 3: spec/fixtures/vN/store is a relay's data
-- directory written by the last layer2 of format N (spec/fixtures/make_store.lua says how),
-- expected.json what each of its levels held.
local layer2 = require("layer2")
local helper = require("spec.helper")
local ref = require("spec.ref")
local cjson = require("cjson")

local LUA = helper.LUA
-- the command line tool as a user runs it: Lua 5.4, whichever interpreter runs the spec
local ROOT = io.popen("pwd"):read("l")
local CLI = ("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/build/lua5.4/?.so;;' lua5.4 %s/bin/layer2")
  :format(ROOT, ROOT, ROOT, ROOT)

local function fixture_copy(v)
  local dir = helper.tmpdir()
  assert(os.execute(("cp -r spec/fixtures/v%d/store %s"):format(v, dir)))
  return dir
end

local function expected(v)
  local f = assert(io.open(("spec/fixtures/v%d/expected.json"):format(v)))
  local e = cjson.decode(f:read("a"))
  f:close()
  return e
end

local function sha256(path)
  local p = io.popen("sha256sum " .. path)
  local s = p:read("a"):match("^(%x+)")
  p:close()
  return s
end

-- What a level holds, in the terms of expected.json.
local function holds(dir, level)
  local st = assert(layer2.lmdb.open(dir .. "/" .. level, { cache = level == "layer1" }))
  local file = os.tmpname()
  local n = assert(st:export(file))
  local s = st:stats()
  local ok, problems = st:check()
  assert(ok, level .. ": " .. table.concat(problems or {}, "\n"))
  st:close()
  local out = { exported = n, export_sha256 = sha256(file), events = s.events, stubs = s.stubs,
    tombstones = s.tombstones, changes = s.changes, last_seq = s.last_seq, outbox = s.outbox,
    index_entries = s.index_entries }
  os.remove(file)
  return out
end

-- The fixture's events as its generator made them (the same seed gives the same signed events).
local function generated()
  local g = require("layer2.gen").new({ seed = 2026, authors = 30 })
  local out = {}
  for i = 1, 610 do out[i] = g:next() end
  return out
end

-- A store's own check finds nothing wrong; then it goes.
local function checked_close(st, dir)
  local ok, problems = st:check()
  assert(ok, table.concat(problems or {}, "\n"))
  st:close()
  helper.rmdir(dir)
end

describe("store format 4", function()
  for _, v in ipairs({ 1, 2, 3 }) do
    it(("refuses a format-%d store with a message naming the upgrade, and reads it after `layer2 upgrade`")
      :format(v), function()
      local dir = fixture_copy(v)
      local db, err = layer2.open(dir)
      assert.is_nil(db)
      assert.equal(("error: the store at '%s/layer1' is in format %d, which this layer2 (format 4) does not read: "
        .. "run `layer2 upgrade --path %s/layer1` once (stop what uses it first)"):format(dir, v, dir), err)
      local st, err2 = layer2.lmdb.open(dir .. "/layer2")
      assert.is_nil(st)
      assert.matches(("is in format %d, which this layer2"):format(v), err2)
      -- the command line tool upgrades both levels of the data directory
      local p = io.popen(("%s --path %s upgrade 2>&1; echo rc=$?"):format(CLI, dir))
      local out = p:read("a")
      p:close()
      local want = expected(v)
      assert.matches(("layer1: upgraded, %d events re%%-indexed"):format(want.layer1.events), out)
      assert.matches(("layer2: upgraded, %d events re%%-indexed"):format(want.layer2.events), out)
      assert.matches("rc=0\n$", out)
      assert.same(want.layer1, holds(dir, "layer1"))
      assert.same(want.layer2, holds(dir, "layer2"))
      -- again: nothing to do
      p = io.popen(("%s --path %s upgrade 2>&1"):format(CLI, dir))
      out = p:read("a")
      p:close()
      assert.matches("layer1: already in this format\n.*layer2: already in this format", out)
      helper.rmdir(dir)
    end)

    it(("keeps every event, tombstone, head and outbox record of format %d through the upgrade, and answers like "
      .. "the reference"):format(v), function()
      local dir = fixture_copy(v)
      assert(layer2.lmdb.upgrade(dir .. "/layer1"))
      assert(layer2.lmdb.upgrade(dir .. "/layer2"))
      -- (every fetch fills L1: its cached events come back whole below)
      local db = assert(layer2.open(dir, { l1 = { admit = "always" }, log = function() end }))
      -- the outbox: the ten events L2 had not taken yet (the generator's last ten) go now, each stored
      -- or refused by L2's rules
      assert.equal(10, db:stats().outbox)
      db:gc()
      assert.equal(0, db:stats().outbox)
      local events = generated()
      local taken = 0
      for i = 601, 610 do
        if db.l2:count_events({ ids = { events[i].id } }) == 1 then
          taken = taken + 1
        else
          local ok, msg = db.l2:save_event(events[i])
          assert.is_false(ok)
          assert.matches("^duplicate: ", msg)
        end
      end
      assert.is_true(taken >= 5)
      local stored = {}
      for _, ev in ipairs(assert(db.l2:query_events({}, { max_limit = 10000 }))) do stored[ev.id] = ev end
      -- tombstones: each event a stored deletion names is refused again; heads: each replaced version
      -- of a replaceable event is refused as older than the head
      local deleted = {}
      for _, ev in pairs(stored) do
        if ev.kind == 5 then
          for _, t in ipairs(ev.tags) do if t[1] == "e" then deleted[t[2]] = true end end
        end
      end
      local blocked, older = 0, 0
      for _, ev in ipairs(events) do
        if not stored[ev.id] then
          local ok, msg = db:save_event(ev)
          assert.is_false(ok, ev.id)
          if deleted[ev.id] then
            assert.matches("^blocked: ", msg)
            blocked = blocked + 1
          elseif ev.kind == 0 or ev.kind == 3 or ev.kind == 10002 or ev.kind == 30023 then
            assert.matches("^duplicate: a newer version", msg)
            older = older + 1
          end
        end
      end
      assert.is_true(blocked >= 10 and older >= 10, ("%d blocked, %d older"):format(blocked, older))
      -- queries: the upgraded L2 against the reference over what it holds
      local model, list = ref.new(), {}
      for _, ev in pairs(stored) do list[#list + 1] = ev end
      table.sort(list, function(a, b) return a.created_at < b.created_at end)
      for _, ev in ipairs(list) do model.byid[ev.id] = ev end
      local rand = helper.rng(5)
      for _ = 1, 200 do
        local e = list[rand(#list)]
        local f = ({ { authors = { e.pubkey } }, { kinds = { e.kind }, limit = 30 }, { authors = { e.pubkey },
          kinds = { e.kind } }, { ["#p"] = { e.pubkey } } })[rand(4)]
        for _, t in ipairs(e.tags) do
          if (t[1] == "e" or t[1] == "t") and t[2] and rand(2) == 1 then f["#" .. t[1]] = { t[2] } end
        end
        assert.same(model:query({ f }, os.time(), 10000), helper.ids(db.l2:query_events(f, { max_limit = 10000 })),
          cjson.encode(f))
      end
      -- L1's cached events (their records written with a stub beside the body): each evicts to a
      -- stub and comes back whole from L2
      local function whole_in_l1()
        local file, out = os.tmpname(), {}
        assert(db.l1:export(file))
        for line in io.lines(file) do out[#out + 1] = cjson.decode(line).id end
        os.remove(file)
        table.sort(out)
        return out
      end
      local cached, stubs = whole_in_l1(), db.l1:stats().stubs
      assert.is_true(#cached >= 50, #cached)
      -- each is an eviction candidate (its lru key rebuilt in this format), with its last access kept
      local candidates = db.l1:candidates(100000)
      assert.equal(#cached, #candidates)
      for _, c in ipairs(candidates) do assert.is_true(c.last_access > 1.7e12, c.id) end
      assert.equal(#cached, (db.l1:evict(cached, "stub")))
      assert.same({}, whole_in_l1())
      assert.equal(stubs + #cached, db.l1:stats().stubs)
      assert.is_true(db:check())
      local back = db:query_events({ ids = cached }, { max_limit = 10000 })
      assert.same(cached, (function() local t = helper.ids(back); table.sort(t); return t end)())
      assert.same(cached, whole_in_l1())
      assert.equal(stubs, db.l1:stats().stubs)
      assert.is_true(db:check())
      db:close()
      helper.rmdir(dir)
    end)

    it(("a kill during the upgrade of format %d leaves the store as it was or upgraded, and upgrading again finishes")
      :format(v), function()
      local want = expected(v)
      local rand = helper.rng(11)
      for round = 1, 12 do
        local dir = fixture_copy(v)
        local script = dir .. ".lua"
        local f = assert(io.open(script, "w"))
        f:write(("assert(require('layer2').lmdb.upgrade(%q))"):format(dir .. "/layer2"))
        f:close()
        os.execute(("%s %s & pid=$!; sleep %.3f; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null"):format(LUA,
          script, rand(60) / 1000))
        local st, err = layer2.lmdb.open(dir .. "/layer2")
        if st then
          st:close() -- upgraded before the kill
        else
          assert.matches(("is in format %d"):format(v), err, "round " .. round)
        end
        assert(layer2.lmdb.upgrade(dir .. "/layer2"))
        assert.same(want.layer2, holds(dir, "layer2"), "round " .. round)
        os.remove(script)
        helper.rmdir(dir)
      end
    end)
  end

  it("ids that share their key prefix are told apart: lookups, duplicates, deletions and evictions touch only their own",
    function()
    for _, cache in ipairs({ false, true }) do
      local dir = helper.tmpdir()
      -- 1-byte keys: 600 events in 256 keys, most of them sharing theirs
      local st = assert(layer2.lmdb.open(dir, { key_prefix = 1, cache = cache }))
      local g = require("layer2.gen").new({ seed = 77, authors = 20 })
      local saved, by_prefix, shared = {}, {}, 0
      for _ = 1, 600 do
        local ev = g:next()
        if ev.kind ~= 5 and ev.kind ~= 0 and ev.kind ~= 3 and ev.kind < 10000 and st:save_event(ev) then
          saved[#saved + 1] = ev
          local p = ev.id:sub(1, 2)
          by_prefix[p] = (by_prefix[p] or 0) + 1
          if by_prefix[p] == 2 then shared = shared + 1 end
        end
      end
      assert.is_true(shared >= 50, shared)
      for _, ev in ipairs(saved) do
        assert.same({ ev.id }, helper.ids(st:query_events({ ids = { ev.id } })))
        local ok, msg = st:save_event(ev)
        assert.is_false(ok)
        assert.equal("duplicate: already have this event", msg)
      end
      -- an unknown id under a prefix others hold
      local absent = saved[1].id:sub(1, 2) .. ("0"):rep(62)
      assert.same({}, helper.ids(st:query_events({ ids = { absent } })))
      -- one event of a shared prefix goes (evicted from a cache, deleted by its author otherwise):
      -- its prefix-mates stay
      local gone, mates
      for _, ev in ipairs(saved) do
        if by_prefix[ev.id:sub(1, 2)] >= 3 then gone = ev break end
      end
      if cache then
        assert.equal(1, (st:evict({ gone.id }, "delete")))
      else
        local k = 0
        for i, pk in ipairs(g.pubkeys) do if pk == gone.pubkey then k = i end end
        assert(st:save_event(layer2.event.sign({ kind = 5, created_at = gone.created_at + 1,
          tags = { { "e", gone.id } }, content = "" }, g.keys[k])))
      end
      mates = 0
      for _, ev in ipairs(saved) do
        local want = ev.id == gone.id and {} or { ev.id }
        assert.same(want, helper.ids(st:query_events({ ids = { ev.id } })))
        if ev.id ~= gone.id and ev.id:sub(1, 2) == gone.id:sub(1, 2) then mates = mates + 1 end
      end
      assert.is_true(mates >= 2)
      checked_close(st, dir)
    end
  end)

  it("events from 2^32 - 1 on share their key's created_at: every query orders, limits and bounds them as the "
    .. "reference does", function()
    local LATER = 4294967295
    local int = math.tointeger or function(x) return x end -- 2^33 is a float in Lua 5.4; LuaJIT has numbers only
    local times = { 5, LATER - 2, LATER - 1, LATER, LATER, LATER + 1, 2 ^ 33, 2 ^ 33, 2 ^ 40, 2 ^ 53 - 1, 1700000000 }
    for _, cache in ipairs({ false, true }) do
      local dir = helper.tmpdir()
      local st = assert(layer2.lmdb.open(dir, { cache = cache }))
      local model, evs = ref.new(), {}
      local secs = { ("0"):rep(63) .. "d", ("0"):rep(63) .. "e" }
      -- saved latest first, so serials run against created_at; two authors, two kinds, a p tag
      local rand = helper.rng(7)
      for i = #times, 1, -1 do
        local ev = layer2.event.sign({ kind = 1 + i % 2, created_at = int(times[i]),
          tags = { { "p", ("ab"):rep(32) } }, content = "at " .. i }, secs[1 + rand(2) % 2])
        assert(st:save_event(ev))
        model:save(ev, 0)
        evs[#evs + 1] = ev
      end
      local bounds = { 0, 5, LATER - 1, LATER, LATER + 1, 2 ^ 33, 2 ^ 40, 2 ^ 53 - 1 }
      local n = 0
      for _, base in ipairs({ {}, { kinds = { 1 } }, { authors = { evs[1].pubkey } }, { ["#p"] = { ("ab"):rep(32) } },
        { authors = { evs[1].pubkey }, kinds = { 2 } } }) do
        for limit = 1, #times do
          for _, since in ipairs({ false, table.unpack(bounds) }) do
            for _, untl in ipairs({ false, table.unpack(bounds) }) do
              local f = { limit = limit }
              for k, v in pairs(base) do f[k] = v end
              if since then f.since = int(since) end
              if untl then f["until"] = int(untl) end
              assert.same(model:query({ f }, 0, 500), helper.ids(st:query_events(f)), cjson.encode(f))
              n = n + 1
            end
          end
        end
      end
      assert.is_true(n > 4000)
      checked_close(st, dir)
    end
  end)

  it("a pubkey or hex value that shares its key prefix with another never reaches the other's answers", function()
    local dir = helper.tmpdir()
    local st = assert(layer2.lmdb.open(dir))
    local sec = ("0"):rep(63) .. "c"
    -- two p values alike in their first 8 bytes (the key prefix), different after
    local a, b = ("ab"):rep(8) .. ("01"):rep(24), ("ab"):rep(8) .. ("02"):rep(24)
    local function note(t, p) return layer2.event.sign({ kind = 1, created_at = t, tags = { { "p", p } },
      content = "for " .. p:sub(-2) }, sec) end
    local ea, eb, ea2 = note(100, a), note(200, b), note(300, a)
    for _, ev in ipairs({ ea, eb, ea2 }) do assert(st:save_event(ev)) end
    assert.same({ ea2.id, ea.id }, helper.ids(st:query_events({ ["#p"] = { a } })))
    assert.same({ eb.id }, helper.ids(st:query_events({ ["#p"] = { b } })))
    assert.same({ ea2.id }, helper.ids(st:query_events({ ["#p"] = { a }, limit = 1 })))
    -- both values at once: each event once
    assert.same({ ea2.id, eb.id, ea.id }, helper.ids(st:query_events({ ["#p"] = { a, b } })))
    assert.equal(2, st:count_events({ ["#p"] = { a } }))
    st:close()
    helper.rmdir(dir)
    -- a bad key prefix is refused clearly
    assert.has_error(function() layer2.lmdb.open(dir, { key_prefix = 33 }) end,
      "layer2.lmdb.open: key_prefix is 1 to 32 bytes")
  end)
end)
