-- Eviction and the outbox of the two-level backend (csrc/backend_gc.c): L1 stays under its
-- limit, keeps what it promises, survives an L2 outage, and lets Lua policies choose.
local layer2 = require("layer2")
local helper = require("spec.helper")
local gen = require("layer2.gen")
local socket = require("socket")
local B = require("spec.backend_helper")
local tmpdir, rmdir, ids = helper.tmpdir, helper.rmdir, helper.ids
local NOW, MiB, quiet, flaky_l2, two_levels = B.NOW, B.MiB, B.quiet, B.flaky_l2, B.two_levels

describe("layer2.open (two levels): eviction and the outbox", function()
  it("an eviction pass repacks L1 to its low water mark, or lets go of (high - low) / high of its events; never half", function()
    -- a read-heavy L1 (what L2 returns fills it), where LMDB keeps the pages evictions thin out;
    -- 2 MiB: in a 1 MiB map one write's copied pages are a tenth of it, and an eviction can find
    -- no free page left (the README says so)
    local size = 2 * MiB
    local dir = tmpdir()
    local l2 = assert(layer2.lmdb.open(dir .. "/l2", { nosync = true }))
    local g = gen.new({ seed = 12, authors = 200, count = 6000 })
    local all = {}
    for i = 1, 6000 do
      local ev = g:next()
      if ev.kind == 1 or ev.kind == 7 then all[#all + 1] = ev.id end
      assert(l2:save_event(ev, { verify = false }) ~= nil)
      if i % 1000 == 0 then l2:sync() end
    end
    local logged = {}
    local db = assert(layer2.open(dir .. "/db", { l1 = { size_limit = size, evict = "delete", admit = "always",
      high_water = 66, low_water = 50 }, l2 = l2, nosync = true, log = function(msg) logged[#logged + 1] = msg end }))
    local passes, repacked = 0, 0
    -- the passes the C core starts as L1 fills (evict = "delete": an evicted event leaves no stub,
    -- so L1 held its events now and those the pass let go of)
    db.observe_gc = function(report)
      repacked = repacked + report.repacked
      if report.evicted > 0 then
        passes = passes + 1
        local after = db.l1:stats()
        local before = after.events + report.evicted
        assert(report.evicted >= math.floor(before * 16 / 66) or after.used_bytes <= size / 2,
          ("a pass evicts L1's share or reaches low water: %d of %d evicted, %d bytes used"):format(report.evicted,
            before, after.used_bytes))
        assert(report.evicted < before * 0.35, ("a pass keeps most of L1: %d of %d evicted"):format(report.evicted, before))
        assert(after.used_bytes <= size * 0.58, "and leaves used bytes under the middle of the marks")
      end
    end
    local rand = helper.rng(5)
    for _ = 1, 6000 do
      local id = all[rand(#all)]
      assert.same({ id }, ids((db:query_events({ ids = { id } }))))
    end
    assert(passes >= 3, "several passes ran")
    assert(repacked > 0, "the passes rewrote the trees evictions had thinned out")
    assert.same({}, logged) -- no eviction or repacking step failed for want of free pages
    local ok, problems = db:check()
    assert(ok, table.concat(problems, "\n"))
    db:close()
    l2:close()
    rmdir(dir)
  end)

  it("L1 holds an entry for every event at or past its horizon, however eviction went (to the last stub)", function()
    local dir = tmpdir()
    local db = assert(layer2.open(dir, { l1 = { size_limit = 256 * 1024 }, nosync = true, log = quiet }))
    local g = gen.new({ seed = 17, authors = 20, count = 3000 })
    local saved = {}
    for round = 1, 12 do
      for _ = 1, round <= 4 and 20 or 100 do
        local ev = g:next()
        if db:save_event(ev) then saved[#saved + 1] = ev end
      end
      -- "full": as after a write L1 refused, down from where L1 is (to its last stub when it is small)
      for _ = 1, round % 4 do db:gc(round % 2 == 0 and "full" or true) end
      local h = db:stats().horizon
      for _, ev in ipairs(saved) do
        if ev.created_at >= h and #db.l2:query_events({ ids = { ev.id } }) == 1 then
          -- a body, or a stub's id
          assert(#db.l1:query_events({ ids = { ev.id } }, { info = true }) == 1,
            ("round %d: event at %d missing from L1 under horizon %d"):format(round, ev.created_at, h))
        end
      end
    end
    assert(db:stats().l1.stubs >= 0)
    db:close()
    rmdir(dir)
  end)

  it("L1 keeps no body for a tail when the event it replaces was saved long before (its save is old news)",
    function()
    local db, finish = two_levels()
    local sec = ("0"):rep(63) .. "c"
    local function ev(t, name)
      return layer2.event.sign({ kind = 0, created_at = t, tags = {}, content = '{"name":"' .. name .. '"}' }, sec)
    end
    local old, new = ev(NOW, "old"), ev(NOW + 1, "new")
    assert(db:save_event(old))
    -- well past the 2 s a replaced event's body waits for the tails (a busy machine only adds to it)
    os.execute("sleep 2.2")
    assert(db:save_event(new))
    local feed = {}
    for _, ch in ipairs(assert(db.l1:changes_since(0, 100, { json = true }))) do
      feed[#feed + 1] = { ch.op, ch.id or false, ch.event and layer2.event.parse(ch.event).id or false }
    end
    assert.same({ { "saved", false, false }, { "replaced", old.id, false }, { "saved", new.id, new.id } }, feed)
    assert.same({ new.id }, ids(db:query_events({ authors = { old.pubkey } })))
    assert.is_true(db:check())
    finish()
  end)

  it("L1 keeps the bodies of at most a sixty-fourth of its size in replaced events (1 KiB each), the newest",
    function()
    -- 8 MiB: 128 ghosts
    local db, finish = two_levels({ size_limit = 8 * 1048576 })
    local sec = ("0"):rep(63) .. "d"
    local versions = {}
    for i = 1, 300 do
      versions[i] = layer2.event.sign({ kind = 0, created_at = NOW + i, tags = {}, content = '{"v":' .. i .. '}' }, sec)
    end
    local began = socket.gettime()
    for _, v in ipairs(versions) do assert(db:save_event(v)) end
    local bodies = {}
    for _, ch in ipairs(assert(db.l1:changes_since(0, 1000, { json = true }))) do
      if ch.op == "saved" and ch.event then bodies[#bodies + 1] = layer2.event.parse(ch.event).id end
    end
    -- the last version is stored; the replaced ones' bodies are ghosts, the oldest dropped first
    -- (a machine too slow to save them within 2 s drops more by their age)
    assert.equal(versions[300].id, bodies[#bodies])
    assert(#bodies - 1 <= 128, #bodies - 1 .. " ghosts")
    if socket.gettime() - began < 1.5 then
      local newest = {}
      for i = 300 - 128, 300 do newest[#newest + 1] = versions[i].id end
      assert.same(newest, bodies)
    end
    assert.same({ versions[300].id }, ids(db:query_events({ authors = { versions[1].pubkey } })))
    assert.is_true(db:check())
    finish()
  end)

  it("L2 failing for a while: every event saved meanwhile reaches it after", function()
    local dir = tmpdir()
    local real = assert(layer2.lmdb.open(dir .. "/shared-l2", { nosync = true }))
    local link = { down = false }
    local flaky = flaky_l2(real, link)
    local logged = {}
    local db = assert(layer2.open(dir, { l2 = flaky, nosync = true, log = function(m) logged[#logged + 1] = m end }))
    local g = gen.new({ seed = 3, authors = 10, count = 300 })
    local before = {}
    for i = 1, 20 do
      before[i] = g:next()
      assert(db:save_event(before[i]))
    end
    link.down = true
    local during = {}
    for i = 1, 100 do
      during[i] = g:next()
      local ok, err = db:save_event(during[i])
      assert(ok or err:match("^duplicate:"), err)
    end
    assert(db:stats().outbox > 0)
    assert(#logged > 0 and logged[1]:match("outbox"))
    -- reads are served from L1 meanwhile
    local got = db:query_events({ ids = { during[50].id } })
    assert.equal(during[50].id, got[1].id)
    assert(db:delete_event(during[2].id)) -- a delete while down is queued too
    db:gc() -- L2 still down: nothing drains
    assert(db:stats().outbox > 0)
    link.down = false
    local report = db:poll()
    assert(report.sent > 0)
    assert.equal(0, db:stats().outbox)
    for _, ev in ipairs(during) do
      -- what L1 holds of it (nothing when deleted, or replaced by a later one), L2 holds too
      assert.equal(db.l1:count_events({ ids = { ev.id } }), real:count_events({ ids = { ev.id } }))
    end
    assert.equal(0, real:count_events({ ids = { during[2].id } }))
    assert.equal(db.l1:count_events({}), real:count_events({}))
    db:close()
    real:close()
    rmdir(dir)
  end)

  it("a slot's head leaves L1 with its event (L2 refuses older versions); a cache with nothing behind keeps it", function()
    local dir = tmpdir()
    local g = gen.new({ seed = 41, authors = 1500, count = 1 })
    local function profile(i, t)
      return assert(layer2.event.sign({ created_at = NOW + t, kind = 0, tags = {},
        content = ('{"name":"u%d","about":"%s"}'):format(i, ("x"):rep(600)) }, g.keys[i]))
    end
    for _, mode in ipairs({ "delete", "stub" }) do
      local db = assert(layer2.open(dir .. "/" .. mode, { l1 = { size_limit = MiB, evict = mode }, nosync = true,
        log = quiet }))
      for i = 1, 1500 do assert(db:save_event(profile(i, 10), { verify = false })) end
      local st = db.l1:stats()
      assert(st.events < 1500, "L1 evicted")
      assert(st.heads <= st.events, ("%s: %d heads for %d events"):format(mode, st.heads, st.events))
      -- an author L1 no longer holds: L2 still refuses the older version, takes a newer one
      local gone
      for i = 1, 1500 do
        if db.l1:count_events({ authors = { g.pubkeys[i] } }) == 0 then gone = i break end
      end
      assert(gone, "an author left L1")
      local ok, err = db:save_event(profile(gone, 5), { verify = false })
      assert.same({ false, "duplicate: a newer version of this replaceable event is stored" }, { ok, err })
      assert.equal(0, db.l1:count_events({ authors = { g.pubkeys[gone] } }))
      local newer = profile(gone, 20)
      assert(db:save_event(newer, { verify = false }))
      assert.same({ newer.id }, ids((db:query_events({ authors = { g.pubkeys[gone] }, kinds = { 0 } }))))
      assert.same({ newer.id }, ids((db.l2:query_events({ authors = { g.pubkeys[gone] }, kinds = { 0 } }))))
      local okc, problems = db:check()
      assert(okc, table.concat(problems, "\n"))
      db:close()
    end
    -- a cache alone: evicting an event keeps its head, which goes on refusing older versions
    local cache = assert(layer2.lmdb.open(dir .. "/cache", { cache = true, nosync = true }))
    local saved = {}
    for i = 1, 10 do
      saved[i] = profile(i, 10)
      assert(cache:save_event(saved[i], { verify = false }))
    end
    assert.equal(10, (cache:evict(ids(saved), "delete")))
    local st = cache:stats()
    assert.same({ 0, 10 }, { st.events, st.heads })
    assert.same({ false, "duplicate: a newer version of this replaceable event is stored" },
      { cache:save_event(profile(3, 5), { verify = false }) })
    cache:close()
    rmdir(dir)
  end)

  it("an L1 without a size limit keeps bodies in their records; opened with a limit it evicts those and writes slots,"
    .. " and each kind of record reads, revives and checks", function()
    local dir = tmpdir()
    local g = gen.new({ seed = 23, authors = 60, count = 3000 })
    local saved, rand, db = {}, helper.rng(9), nil
    local function save(n)
      for _ = 1, n, 100 do
        local batch = {}
        for _ = 1, 100 do
          local ev = g:next()
          saved[#saved + 1], batch[#batch + 1] = ev, ev
        end
        for _, v in ipairs(assert(db:save_events(batch, { verify = false }))) do assert(v == true, tostring(v)) end
      end
    end
    -- the entries of L1's tree of body slots (lmdb-utils' mdb_stat)
    local function slot_bodies()
      local p = io.popen(("mdb_stat -s bodies %s/layer1"):format(dir))
      local n = tonumber(p:read("a"):match("Entries: (%d+)"))
      p:close()
      return n
    end
    -- every answer the backend gives is L2's, and L1 itself checks clean
    local function agrees(what)
      for _ = 1, 200 do
        local f = B.random_filter(saved, rand)
        assert.same(ids((db.l2:query_events(f))), ids((db:query_events(f))), what .. ": " .. require("cjson").encode(f))
      end
      local ok, problems = db:check()
      assert(ok, what .. ": " .. table.concat(problems, "\n"))
    end
    db = assert(layer2.open(dir, { nosync = true, log = quiet }))
    save(1000)
    assert.equal(0, slot_bodies())
    assert.equal(db.l2:stats().events, db.l1:stats().events)
    agrees("bodies in their records")
    db:close()
    -- a limit: new bodies take slots, and eviction turns the oldest (inline) events into stubs
    db = assert(layer2.open(dir, { nosync = true, log = quiet, l1 = { size_limit = MiB, evict = "stub" } }))
    save(1500)
    assert(db:gc())
    local st = db.l1:stats()
    assert(st.stubs > 0, "L1 evicted to stubs")
    assert(slot_bodies() > 0, "bodies in slots")
    agrees("records of both kinds and stubs")
    local stubbed = {}
    for i = 1, 1000 do
      local ev = saved[i]
      local f = { ids = { ev.id } }
      if #db.l1:query_events(f) == 0 and #db.l2:query_events(f) == 1 then stubbed[#stubbed + 1] = ev.id end
    end
    assert(#stubbed > 0, "an inline body was evicted")
    db:close()
    -- no limit again: what reads bring back (admit always) and new saves go inline beside the slots
    db = assert(layer2.open(dir, { nosync = true, log = quiet, l1 = { admit = "always" } }))
    local slots = slot_bodies()
    for i = 1, math.min(#stubbed, 50) do assert.equal(1, #db:query_events({ ids = { stubbed[i] } })) end
    save(500)
    -- none taken (a replacement frees one)
    assert(slot_bodies() <= slots, ("%d slots, %d before"):format(slot_bodies(), slots))
    assert.equal(1, #db.l1:query_events({ ids = { stubbed[1] } }))
    agrees("revived and new inline bodies beside slots")
    db:close()
    rmdir(dir)
  end)

  it("a version L1 took alone while L2 was down, older than what L2 holds, leaves L1 when the outbox drains", function()
    local dir = tmpdir()
    local real = assert(layer2.lmdb.open(dir .. "/l2", { nosync = true }))
    local link = { down = false }
    local db = assert(layer2.open(dir .. "/db", { l2 = flaky_l2(real, link), nosync = true, log = quiet }))
    local g = gen.new({ seed = 43, authors = 1, count = 1 })
    local function profile(t)
      return assert(layer2.event.sign({ created_at = NOW + t, kind = 0, tags = {}, content = "v" .. t }, g.keys[1]))
    end
    local newer, older = profile(20), profile(10)
    assert(db:save_event(newer))
    db:poll() -- L1 has heard of every change of L2's: none brings the newer version back
    assert.equal(1, (db.l1:evict({ newer.id }, "delete")))
    assert.equal(0, db.l1:stats().heads) -- L2 holds the slot's head
    link.down = true
    assert(db:save_event(older)) -- L1 decides alone: it has no head for the slot
    assert.equal(1, db:stats().outbox)
    link.down = false
    db:poll()
    assert.equal(0, db:stats().outbox)
    assert.equal(0, db.l1:count_events({ ids = { older.id } }))
    assert.same({ newer.id }, ids((db:query_events({ authors = { newer.pubkey }, kinds = { 0 } }))))
    assert.same({ newer.id }, ids((real:query_events({ authors = { newer.pubkey } }))))
    db:close()
    real:close()
    rmdir(dir)
  end)

  describe("policies", function()
    local function cands()
      return {
        { id = "a", kind = 0, size = 100, hits = 9, last_access = 1, created_at = 50 },
        { id = "b", kind = 1, size = 100, hits = 1, last_access = 2, created_at = 40 },
        { id = "c", kind = 3, size = 100, hits = 0, last_access = 3, created_at = 30 },
        { id = "d", kind = 7, size = 100, hits = 5, last_access = 4, created_at = 20 },
        { id = "e", kind = 10002, size = 100, hits = 2, last_access = 5, created_at = 10 },
      }
    end
    local lru, lfu, oldest = require("layer2.policy.lru"), require("layer2.policy.lfu"), require("layer2.policy.oldest")

    it("lru: coldest first, kinds 0, 3 and 10002 that are read only when nothing else frees enough", function()
      -- c (kind 3) was never read: it goes like any other
      assert.same({ "b", "c" }, lru:select(cands(), 200))
      assert.same({ "b", "c", "d", "a" }, lru:select(cands(), 400))
      -- the backend's recent reads count over L1's hits
      local cs = cands()
      for _, c in ipairs(cs) do c.reads = c.id == "c" and 3 or 0 end
      assert.same({ "a", "b", "d", "e" }, lru:select(cs, 400))
      assert.equal("access", lru.order)
    end)

    it("lfu: fewest reads first", function()
      assert.same({ "c", "b", "e" }, lfu:select(cands(), 300))
    end)

    it("oldest: in the order given, which is created_at", function()
      assert.same({ "a", "b" }, oldest:select(cands(), 150))
      assert.equal("created_at", oldest.order)
    end)

    it("a custom policy keeps one author's events; a failing one falls back to lru", function()
      local dir = tmpdir()
      local g = gen.new({ seed = 11, authors = 20, count = 3000 })
      local keep = { [g.pubkeys[20]] = true }
      -- the README's example
      local calls = 0
      local never_these = {
        name = "never-these-pubkeys",
        order = "access",
        select = function(_, candidates, bytes_needed)
          calls = calls + 1
          local picked, freed = {}, 0
          for _, c in ipairs(candidates) do
            if freed >= bytes_needed then break end
            if not keep[c.pubkey] then
              picked[#picked + 1] = c.id
              freed = freed + c.size
            end
          end
          return picked
        end,
      }
      local db = assert(layer2.open(dir, { l1 = { size_limit = MiB }, policy = never_these, nosync = true,
        log = quiet }))
      local mine = {}
      for _ = 1, 3000 do
        local ev = g:next()
        db:save_event(ev)
        if keep[ev.pubkey] then mine[#mine + 1] = ev.id end
      end
      assert(calls > 0, "eviction ran")
      assert(db:stats().l1.events < 3000)
      -- the kept author's events are all still whole in L1
      local whole, info = db.l1:query_events({ authors = { g.pubkeys[20] } }, { max_limit = 100000, info = true })
      assert(#mine > 10)
      assert.equal(0, #info.stubs)
      -- all of them that L2 holds (some were replaced by newer versions) are whole in L1
      assert.equal(db.l2:count_events({ authors = { g.pubkeys[20] } }), #whole)
      db:close()
      rmdir(dir)
      -- a policy that raises: reported, lru used, the store consistent
      local logged = {}
      db = assert(layer2.open(dir, { l1 = { size_limit = MiB }, nosync = true,
        policy = { name = "broken", select = function() error("boom") end },
        log = function(m) logged[#logged + 1] = m end }))
      local g2 = gen.new({ seed = 12, authors = 5, count = 3000 })
      for _ = 1, 3000 do db:save_event(g2:next()) end
      local found = false
      for _, m in ipairs(logged) do found = found or m:match("policy 'broken' failed.*boom") ~= nil end
      assert(found, "the failure was reported")
      assert(db:stats().l1.events < 3000, "the default evicted instead")
      local ok, problems = db:check()
      assert(ok, table.concat(problems, "\n"))
      db:close()
      rmdir(dir)
      assert.has_error(function() layer2.open(dir, { policy = "nope" }) end, "layer2: unknown eviction policy 'nope'")
      assert.has_error(function() layer2.open(dir, { policy = {} }) end)
      rmdir(dir)
    end)

    it("a policy from a file (its path: what crosses into nginx's thread pool); one that cannot be loaded"
      .. " stops the open with its error", function()
      local dir = tmpdir()
      local file = dir .. "-policy.lua"
      local function write(text)
        local f = assert(io.open(file, "w"))
        f:write(text)
        f:close()
      end
      write([[
local lru = require("layer2.policy.lru")
return { name = "from-file", select = function(self, candidates, need)
  self.calls = (self.calls or 0) + 1
  return lru.select(self, candidates, need)
end }
]])
      local db = assert(layer2.open(dir, { l1 = { size_limit = MiB }, nosync = true, policy = file, log = quiet }))
      local g = gen.new({ seed = 25, authors = 20, count = 3000 })
      for _ = 1, 3000 do db:save_event(g:next()) end
      assert.equal("from-file", db:stats().policy)
      assert(db.policy.calls > 0, "the file's policy chose")
      assert(db:stats().l1.file_bytes <= MiB)
      db:close()
      rmdir(dir)
      local function refused(policy, says)
        local ok, err = pcall(layer2.open, dir, { policy = policy })
        assert.is_false(ok)
        assert(err:find(says, 1, true), err)
      end
      refused(dir .. "-none.lua", ("the policy file '%s-none.lua' cannot be loaded: cannot open %s-none.lua"):format(dir,
        dir))
      write("return {")
      refused(file, ("the policy file '%s' cannot be loaded: "):format(file))
      write("error('no policy today')")
      refused(file, "no policy today")
      write("return 5")
      assert.has_error(function() layer2.open(dir, { policy = file }) end,
        ("layer2: the policy file '%s' returns no table"):format(file))
      write("return { accept_event = function() return true end }")
      assert.has_error(function() layer2.open(dir, { policy = file }) end,
        ("layer2: the policy file '%s' returns no policy (a table with a select function)"):format(file))
      assert.is_nil(io.open(dir), "nothing was made")
      os.remove(file)
    end)

    it("the contract: only candidates are evicted; an empty or useless answer falls back to lru; complaints come"
      .. " once a minute; a policy that asks sees the candidates' tags", function()
      local function run(policy, seed)
        local dir = tmpdir()
        local logged = {}
        local db = assert(layer2.open(dir, { l1 = { size_limit = MiB }, nosync = true, policy = policy,
          log = function(m) logged[#logged + 1] = m end }))
        local g = gen.new({ seed = seed, authors = 20, count = 3000 })
        local saved = {}
        for _ = 1, 3000 do
          local ev = g:next()
          saved[ev.id] = ev
          db:save_event(ev)
        end
        local st = db:stats()
        local ok, problems = db:check()
        assert(ok, table.concat(problems or {}, "\n"))
        db:close()
        rmdir(dir)
        return logged, st, saved
      end
      local function matching(logged, pattern)
        local n = 0
        for _, m in ipairs(logged) do if m:match(pattern) then n = n + 1 end end
        return n
      end
      -- an empty answer: lru evicts instead (L1 under its limit, never emptied), said once
      local calls = 0
      local logged, st = run({ name = "empty", select = function()
        calls = calls + 1
        return {}
      end }, 21)
      assert(calls > 1, "eviction ran more than once")
      assert(st.l1.events < 3000 and st.l1.events > 0)
      assert(st.l1.file_bytes <= MiB)
      assert.equal(1, matching(logged, "^the eviction policy 'empty' failed %(it chose nothing%); using lru$"))
      assert.equal(0, matching(logged, "emptying"))
      -- ids that are not candidates (garbage, an id L1 does not offer) are left out, the rest evicted
      local foreign = { "zz", ("0"):rep(64), 42 }
      logged, st = run({ name = "sloppy", select = function(self, candidates, need)
        local picked = lru.select(self, candidates, need)
        for _, id in ipairs(foreign) do picked[#picked + 1] = id end
        return picked
      end }, 22)
      assert(st.l1.events < 3000 and st.l1.file_bytes <= MiB)
      assert.equal(1, matching(logged, "^the eviction policy 'sloppy': 3 of the ids it returned are not candidates"
        .. " %(left out%)$"))
      -- an answer of nothing but strangers: lru instead
      logged = run({ name = "strangers", select = function() return foreign end }, 23)
      assert.equal(1, matching(logged, "^the eviction policy 'strangers' failed %(3 of the ids it returned are not"
        .. " candidates%); using lru$"))
      -- a policy that asks for tags gets each candidate's, as saved
      local seen = {}
      local saved
      local _
      logged, _, saved = run({ name = "tagged", tags = true, select = function(self, candidates, need)
        for _, c in ipairs(candidates) do seen[c.id] = c.tags end
        return lru.select(self, candidates, need)
      end }, 24)
      local n = 0
      for id, tags in pairs(seen) do
        n = n + 1
        assert.same(saved[id].tags, tags)
      end
      assert(n > 100, "candidates were seen")
      assert.equal(0, #logged)
    end)
  end)
end)
