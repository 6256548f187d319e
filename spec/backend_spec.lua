-- The two-level backend: a small L1 in front of L2 gives L2's answers, stays under its limit,
-- survives an L2 outage, and lets Lua policies choose what to evict.
local layer2 = require("layer2")
local helper = require("spec.helper")
local gen = require("layer2.gen")
local socket = require("socket")

local NOW = 1760000000 -- past the generated events, before the machine's clock (future_limit)
local MiB = 1024 * 1024

local tmpdir = helper.tmpdir

local rmdir = helper.rmdir

local ids = helper.ids

local function quiet() end

-- An L2 that fails while link.down, by raising or by refusing with error:
local function flaky_l2(real, link)
  return setmetatable({}, { __index = function(_, name)
    return function(_, ...)
      if link.down then
        if name == "save_event" then error("connection refused") end
        return nil, "error: L2 is unreachable"
      end
      return real[name](real, ...)
    end
  end })
end

-- random filters drawn from the events themselves (see the LMDB brute-force spec)
local function random_filter(events, rand)
  local function pick() return events[rand(#events)] end
  local f = {}
  for _ = 1, rand(2) do
    local which = rand(7)
    if which == 1 then f.ids = { pick().id, pick().id }
    elseif which == 2 then f.authors = { pick().pubkey }
    elseif which == 3 then f.kinds = { pick().kind }
    elseif which == 4 then f.since = pick().created_at
    elseif which == 5 then f["until"] = pick().created_at
    else
      local e = pick()
      for _, t in ipairs(e.tags) do
        if #t[1] == 1 and t[2] then
          f["#" .. t[1]] = { t[2] }
          break
        end
      end
    end
  end
  if rand(3) > 1 then f.limit = rand(30) end
  return f
end

-- A two-level backend at a new directory over an LMDB L2 beside it, and what closes and removes both.
local function two_levels(l1opts)
  local dir = tmpdir()
  local l2 = assert(layer2.lmdb.open(dir .. "-l2", { nosync = true }))
  local db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet, l1 = l1opts }))
  return db, function()
    db:close()
    l2:close()
    rmdir(dir)
    rmdir(dir .. "-l2")
  end
end

describe("layer2.open (two levels)", function()
  it("what one process learns of L1's horizon, another on the same L1 (an nginx worker) knows too", function()
    local dir = tmpdir()
    local l2 = assert(layer2.lmdb.open(dir .. "-l2", { nosync = true }))
    local opts = { l2 = l2, nosync = true, log = quiet, l1 = { size_limit = 256 * 1024 } }
    local a, b = assert(layer2.open(dir, opts)), assert(layer2.open(dir, opts))
    local sec = ("0"):rep(63) .. "7"
    local small = layer2.event.sign({ kind = 1, created_at = 1000, tags = {}, content = "small" }, sec)
    assert(a:save_event(small))
    local got, levels = b:query_events({ kinds = { 1 }, since = 500 })
    assert.same({ small.id }, ids(got))
    assert.equal(0, levels.l2, "L1 proves this answer")
    -- too big for a 256 KiB L1: L2 takes it, L1 cannot, and `a` stops claiming completeness
    local big = layer2.event.sign({ kind = 1, created_at = 2000, tags = {}, content = ("x"):rep(60000) }, sec)
    assert(a:save_event(big))
    assert.equal(0, a.l1:count_events({ ids = { big.id } }))
    -- `b` never saw that save: it must not answer from L1 alone what L1 no longer proves
    got = b:query_events({ kinds = { 1 }, since = 500 })
    assert.same({ big.id, small.id }, ids(got))
    a:close()
    b:close()
    l2:close()
    rmdir(dir)
    rmdir(dir .. "-l2")
  end)

  helper.each_corpus(pending, "a 1 MiB L1 against L2 alone", function(c)
  it("a 1 MiB L1 answers 500 random filters exactly as L2 alone, before and after eviction cycles (" .. c.name
    .. " events)", function()
    local dir = tmpdir()
    local db = assert(layer2.open(dir, { l1 = { size_limit = MiB }, nosync = true, log = quiet }))
    local lines = helper.lines(c.valid)
    local events, last = {}, nil
    for i, line in ipairs(lines) do
      events[i] = layer2.event.parse(line)
      if db:save_event(line, { now = NOW }) and events[i].kind < 20000 then last = events[i] end
    end
    -- the newest save is whole in L1 and answered from there
    local newest, from = db:query_events({ ids = { last.id } }, { now = NOW })
    assert.same({ last.id }, ids(newest))
    assert.same({ l1 = 1, stubs = 0, l2 = 0 }, from)
    local st = db:stats()
    assert(st.l2.events > #lines * 0.9, "L2 holds the data")
    assert(st.l1.used_bytes <= MiB and st.l1.file_bytes <= MiB, "L1 stays within its limit")
    assert(st.l1.events < st.l2.events / 5, "L1 is far smaller than the data")
    local rand = helper.rng(4242)
    local served = { l1 = 0, stubs = 0, l2 = 0 }
    for round = 1, 2 do
      for i = 1, 250 do
        local f = random_filter(events, rand)
        local got, levels = db:query_events(f, { now = NOW })
        local want = db.l2:query_events(f, { now = NOW })
        assert.same(ids(want), ids(got), ("round %d filter %d: %s"):format(round, i, require("cjson").encode(f)))
        for k in pairs(served) do served[k] = served[k] + levels[k] end
        -- asking again: what the first answer brought into L1, or the remembered answer
        assert.same(ids(want), ids((db:query_events(f, { now = NOW }))))
      end
      db:gc(true) -- an eviction cycle between the rounds
    end
    assert(served.l2 > 0, "L2 answered what L1 could not")
    assert(db:stats().hits.answers > 100, "and remembered answers the rest")
    local ok, problems = db:check()
    assert(ok, table.concat(problems, "\n"))
    db:close()
    rmdir(dir)
  end)
  end)

  it("the cache tester: writes 10x the limit, reads back earlier events, stays within the limit", function()
    local dir = tmpdir()
    local db = assert(layer2.open(dir, { l1 = { size_limit = MiB }, nosync = true, log = quiet }))
    local g = gen.new({ seed = 9, authors = 100, count = 20000 })
    local written, asked, rand = 0, {}, helper.rng(7)
    local saved = {}
    local revived, reads = 0, 0
    while written < 10 * MiB do
      local ev = g:next()
      local wire = layer2.event.encode(ev)
      -- replaceable events may be replaced later: read back the others
      if db:save_event(wire) and (ev.kind == 1 or ev.kind == 6 or ev.kind == 7) then saved[#saved + 1] = ev.id end
      written = written + #wire
      if #saved > 10 and #saved % 5 == 0 then
        -- a reader with a bias toward what it asked before
        local id
        if #asked > 0 and rand(2) == 1 then id = asked[rand(#asked)] else id = saved[rand(#saved)] end
        asked[#asked + 1] = id
        local got, levels = db:query_events({ ids = { id } })
        reads = reads + 1
        assert.equal(1, #got, "every read returns the event")
        assert.equal(id, got[1].id)
        assert.is_true(layer2.event.verify(got[1]), "and the whole of it")
        revived = revived + levels.stubs
      end
      if #saved % 200 == 0 then
        local st = db.l1:stats()
        assert(st.file_bytes <= MiB and st.used_bytes <= MiB, "L1 within its limit at every step")
      end
    end
    assert(reads > 500)
    assert(revived > 0, "stubs were revived from L2")
    assert(db:stats().l1.stubs + db:stats().l1.events > 0)
    local ok, problems = db:check()
    assert(ok, table.concat(problems, "\n"))
    db:close()
    rmdir(dir)
  end)

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
    local gc = db.gc
    db.gc = function(self, force)
      local before = self.l1:stats()
      local report = gc(self, force)
      repacked = repacked + report.repacked
      if report.evicted > 0 then
        passes = passes + 1
        local after = self.l1:stats()
        assert(report.evicted >= math.floor(before.events * 16 / 66) or after.used_bytes <= size / 2,
          ("a pass evicts L1's share or reaches low water: %d of %d evicted, %d bytes used"):format(report.evicted,
            before.events, after.used_bytes))
        assert(report.evicted < before.events * 0.35,
          ("a pass keeps most of L1: %d of %d evicted"):format(report.evicted, before.events))
        assert(after.used_bytes <= size * 0.58, "and leaves used bytes under the middle of the marks")
      end
      return report
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

  it("remembered filter answers equal L2's through saves, replacements, deletions and evictions", function()
    local dir = tmpdir()
    local db = assert(layer2.open(dir, { l1 = { size_limit = MiB }, nosync = true, log = quiet }))
    local g = gen.new({ seed = 31, authors = 30, count = 6000 })
    local key_of = {}
    for i, pk in ipairs(g.pubkeys) do key_of[pk] = g.keys[i] end
    local lines = {}
    for i = 1, 3000 do lines[i] = layer2.event.encode(g:next()) end
    local n = 0
    assert(db:import(function()
      n = n + 1
      return lines[n]
    end, { verify = false }))
    -- a pool of filters asked again and again: feeds, profiles, threads, topics, a global feed
    local rand = helper.rng(77)
    local pool = {}
    for i = 1, 12 do
      local pk = g.pubkeys[i]
      pool[#pool + 1] = { authors = { pk }, kinds = { 1 }, limit = 5 }
      pool[#pool + 1] = { authors = { pk }, kinds = { 0, 3 } }
      pool[#pool + 1] = { authors = { pk, g.pubkeys[i + 12] }, limit = 8 }
    end
    for _, t in ipairs({ "nostr", "bitcoin", "art" }) do pool[#pool + 1] = { ["#t"] = { t }, limit = 10 } end
    pool[#pool + 1] = { kinds = { 1 }, limit = 10 }
    pool[#pool + 1] = { kinds = { 30023 }, since = g.start }
    local function stored_of(pk)
      return db.l2:query_events({ authors = { pk } }, { max_limit = 50 })
    end
    local compared = 0
    for step = 1, 1500 do
      local r = rand(12)
      if r <= 3 then
        assert(db:save_event(g:next()))
      elseif r == 4 then
        -- the author deletes one of their events (NIP-09)
        local pk = g.pubkeys[rand(12)]
        local mine = stored_of(pk)
        if #mine > 0 then
          local target = mine[rand(#mine)]
          local del = layer2.event.sign({ kind = 5, created_at = g.start + 400 * 86400, content = "",
            tags = { { "e", target.id } } }, key_of[pk])
          assert(db:save_event(del))
        end
      elseif r == 5 then
        local mine = stored_of(g.pubkeys[rand(24)])
        if #mine > 0 then db:delete_event(mine[rand(#mine)].id, true) end
      elseif r == 6 then
        db:gc(true)
      else
        local f = pool[rand(#pool)]
        local got = db:query_events(f)
        assert.same(ids(db.l2:query_events(f)), ids(got), ("step %d: %s"):format(step, require("cjson").encode(f)))
        compared = compared + 1
      end
    end
    assert(compared > 500)
    local hits = db:stats().hits
    assert(hits.answers > 100, "remembered answers were used: " .. hits.answers)
    local ok, problems = db:check()
    assert(ok, table.concat(problems, "\n"))
    db:close()
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

  it("a cache fill is not news: L1's change feed (what live subscriptions tail) does not carry it", function()
    local dir = tmpdir()
    local l2 = assert(layer2.lmdb.open(dir .. "-l2", { nosync = true }))
    local g = gen.new({ seed = 41, authors = 5, count = 200 })
    local old = {}
    for i = 1, 200 do
      old[i] = g:next()
      assert(l2:save_event(old[i]) ~= nil)
    end
    local db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet, l1 = { admit = "always" } }))
    local cursor = db.l1:stats().last_seq
    local got = db:query_events({ authors = { g.pubkeys[1] } })
    assert(#got > 0)
    assert.same(ids(got), ids((db:query_events({ authors = { g.pubkeys[1] } }, { l1_only = true }))), "L1 took them")
    assert.same({}, (db.l1:changes_since(cursor)))
    -- a save is news
    local new = g:next()
    assert(db:save_event(new))
    local changes = db.l1:changes_since(cursor)
    assert.equal(1, #changes)
    assert.equal(new.id, changes[1].id)
    db:close()
    l2:close()
    rmdir(dir)
    rmdir(dir .. "-l2")
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

  it("L1's feed carries a saved event replaced or deleted since (live subscribers get every accepted one)", function()
    local db, finish = two_levels()
    local sec = ("0"):rep(63) .. "b"
    local function ev(kind, t, tags, content)
      return layer2.event.sign({ kind = kind, created_at = t, tags = tags or {}, content = content or "" }, sec)
    end
    local v1, v2, note = ev(0, NOW, {}, '{"name":"one"}'), ev(0, NOW + 1, {}, '{"name":"two"}'), ev(1, NOW, {}, "hi")
    local deletion = ev(5, NOW + 2, { { "e", note.id } })
    local began = socket.gettime()
    for _, e in ipairs({ v1, v2, note, deletion }) do assert(db:save_event(e)) end
    local changes = assert(db.l1:changes_since(0, 100, { json = true }))
    local saved = {}
    for _, ch in ipairs(changes) do
      if ch.op == "saved" then saved[#saved + 1] = { ch.id, ch.event and layer2.event.parse(ch.event).id } end
    end
    local expected = { { v1.id, v1.id }, { v2.id, v2.id }, { note.id, note.id }, { deletion.id, deletion.id } }
    if socket.gettime() - began > 1.5 then
      -- a replaced body waits 2 s for the tails: a machine too slow to save four events and read
      -- the feed well within that can check the ids only
      for i = 1, #saved do saved[i][2], expected[i][2] = nil, nil end
    end
    assert.same(expected, saved)
    -- the store itself has let them go
    assert.same({ deletion.id, v2.id }, ids(db:query_events({ authors = { v1.pubkey } })))
    assert.is_true(db:check())
    finish()
  end)

  it("an answer L2 gave while a save it may miss reached L1 is not remembered", function()
    local dir = tmpdir()
    local store = assert(layer2.lmdb.open(dir .. "-l2", { nosync = true }))
    local sec = ("0"):rep(63) .. "9"
    local function note(t) return layer2.event.sign({ kind = 1, created_at = t, tags = {}, content = "at " .. t }, sec) end
    for t = 1, 3 do assert(store:save_event(note(NOW + t))) end
    -- an L2 whose answer is taken, then another worker saves an event it matches, then it returns
    local other, racing
    local l2 = setmetatable({}, { __index = function(_, k)
      local f = store[k]
      return type(f) == "function" and function(_, ...) return f(store, ...) end or f
    end })
    function l2.query_events(_, filters, opts)
      local res, err = store:query_events(filters, opts)
      if racing then
        racing = false
        assert(other:save_event(note(NOW + 100)))
      end
      return res, err
    end
    local db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet }))
    other = assert(layer2.open(dir, { l2 = store, nosync = true, log = quiet }))
    local f = { authors = { note(0).pubkey }, kinds = { 1 }, limit = 5 }
    racing = true
    assert.equal(3, #db:query_events(f), "L2's answer, taken before the save")
    local res, from = db:query_events(f)
    assert.equal(4, #res, "the answer was not kept")
    assert.equal(NOW + 100, res[1].created_at)
    assert.equal(4, from.l2)
    -- asked again with nothing in between, the answer is kept and serves
    res, from = db:query_events(f)
    assert.equal(4, #res)
    assert.equal(0, from.l2)
    assert.equal(1, db:stats().hits.answers)
    db:close()
    other:close()
    store:close()
    rmdir(dir)
    rmdir(dir .. "-l2")
  end)

  it("a remembered answer sees another backend's saves on the same L1 and another writer's after a poll", function()
    local dir = tmpdir()
    local shared = assert(layer2.lmdb.open(dir .. "-l2"))
    local sec = ("0"):rep(63) .. "5"
    local n = 0
    local function note()
      n = n + 1
      return layer2.event.sign({ kind = 1, created_at = NOW + n, tags = {}, content = "n" .. n }, sec)
    end
    -- the newest event in L2 (another author's) puts L1's horizon past everything below
    assert(shared:save_event(layer2.event.sign({ kind = 1, created_at = NOW + 1000, tags = {}, content = "x" },
      ("0"):rep(63) .. "6")))
    local a = assert(layer2.open(dir, { l2 = shared, nosync = true, log = quiet }))
    local b = assert(layer2.open(dir, { l2 = shared, nosync = true, log = quiet })) -- a second worker
    local pk = note().pubkey
    local f = { authors = { pk }, kinds = { 1 }, limit = 3 }
    for _ = 1, 3 do assert(shared:save_event(note())) end -- history L1 never saw
    local function check(db, why)
      assert.same(ids(shared:query_events(f)), ids((db:query_events(f))), why)
    end
    check(a, "from L2")
    check(a, "remembered")
    check(a, "remembered")
    assert.equal(2, a:stats().hits.answers)
    assert(b:save_event(note()))
    check(a, "after the other worker's save")
    check(a, "remembered again")
    assert.equal(3, a:stats().hits.answers)
    assert(shared:save_event(note())) -- another node, straight into L2
    a:poll()
    check(a, "after the poll brought it")
    check(a, "remembered again")
    assert.equal(4, a:stats().hits.answers)
    -- an import goes to L2 only, past L1's change feed: it ends every remembered answer
    local line = layer2.event.encode(note())
    assert(a:import(function()
      local l = line
      line = nil
      return l
    end))
    check(a, "after an import")
    a:close()
    b:close()
    -- l1.answers = false: every ask goes to L2
    local c = assert(layer2.open(dir, { l2 = shared, nosync = true, log = quiet, l1 = { answers = false } }))
    check(c, "answers off")
    check(c, "answers off, again")
    assert.equal(0, c:stats().hits.answers)
    c:close()
    shared:close()
    rmdir(dir)
    rmdir(dir .. "-l2")
  end)

  -- An L2 whose newest event (another author's) puts a new L1's horizon past the notes the tests
  -- below write: their authors' feeds are L2's answers, then remembered ones
  local function l2_ahead(dir)
    local shared = assert(layer2.lmdb.open(dir .. "-l2"))
    assert(shared:save_event(layer2.event.sign({ kind = 1, created_at = NOW + 1000, tags = {}, content = "x" },
      ("0"):rep(63) .. "6")))
    return shared, function(db)
      db:close()
      shared:close()
      rmdir(dir)
      rmdir(dir .. "-l2")
    end
  end
  local function note_by(sec, i)
    return layer2.event.sign({ kind = 1, created_at = NOW + i, tags = {}, content = "n" .. i }, sec)
  end
  local function feed_of(sec) return { authors = { layer2.schnorr.pubkey(sec) }, kinds = { 1 }, limit = 20 } end

  it("remembered answers count what they take in bytes (filter, ids, index entries), not their ids alone", function()
    local dir = tmpdir()
    local shared, finish = l2_ahead(dir)
    -- twelve authors with five notes each, history L1 never saw
    local feeds = {}
    for a = 1, 12 do
      local sec = ("%064x"):format(1000 + a)
      for i = 1, 5 do assert(shared:save_event(note_by(sec, i))) end
      feeds[a] = feed_of(sec)
    end
    -- 100 units of 32 bytes: twenty answers of five ids, but about eight of what such an answer
    -- really takes (its filter's JSON, 5 ids and an index entry: some 370 bytes)
    local db = assert(layer2.open(dir, { l2 = shared, nosync = true, log = quiet, l1 = { answers_max_ids = 100 } }))
    local function ask(a)
      assert.same(ids(shared:query_events(feeds[a])), ids((db:query_events(feeds[a]))))
      return db:stats().hits.answers
    end
    for a = 1, 12 do assert.equal(0, ask(a)) end
    -- the ninth answer passed the bound and the others went: the first is L2's answer again
    assert.equal(0, ask(1))
    -- the newest were kept: one answers
    assert.equal(1, ask(12))
    finish(db)
  end)

  it("an answer of events L1 holds keeps their serials, not their ids; one of them leaving L1 ends it", function()
    local dir = tmpdir()
    local shared, finish = l2_ahead(dir)
    local db = assert(layer2.open(dir, { l2 = shared, nosync = true, log = quiet, l1 = { answers_max_ids = 100 } }))
    -- saved through the backend: L1 holds them, but they lie behind its horizon
    local feeds, newest = {}, nil
    for a = 1, 12 do
      local sec = ("%064x"):format(2000 + a)
      for i = 1, 5 do
        local ev = note_by(sec, i)
        assert(db:save_event(ev))
        if a == 1 then newest = ev end
      end
      feeds[a] = feed_of(sec)
    end
    local function ask(a)
      local res, levels = db:query_events(feeds[a])
      assert.same(ids(shared:query_events(feeds[a])), ids(res))
      return db:stats().hits.answers, levels
    end
    for a = 1, 12 do assert.equal(0, (ask(a))) end
    -- an answer of 5 serials takes about 8 units of the 100: all twelve stay (kept as whole ids,
    -- 12 units each, the ninth cleared the others: the test above), each served from L1's bodies
    for a = 1, 12 do
      local answered, levels = ask(a)
      assert.equal(a, answered)
      assert.same({ 5, 0, 0 }, { levels.l1, levels.stubs, levels.l2 })
    end
    -- feed 1's newest leaves L1: its serial names nothing now, so the answer does not stand
    assert.equal(1, (db.l1:evict({ newest.id }, "delete")))
    assert.equal(12, (ask(1)))
    -- the answer L2 gave again is kept and stands (the event, read often, came back into L1 with it)
    local answered, levels = ask(1)
    assert.equal(13, answered)
    assert.same({ 5, 0 }, { levels.l1 + levels.stubs, levels.l2 })
    finish(db)
  end)

  it("answers an older layer2 kept (whole ids only) are cleared when L1 opens, not misread", function()
    local dir = tmpdir()
    local shared, finish = l2_ahead(dir)
    local sec = ("%064x"):format(3001)
    for i = 1, 3 do assert(shared:save_event(note_by(sec, i))) end
    local feed = feed_of(sec)
    local function open() return assert(layer2.open(dir, { l2 = shared, nosync = true, log = quiet })) end
    local db = open()
    db:query_events(feed)
    db:query_events(feed)
    assert.equal(1, db:stats().hits.answers)
    db:close()
    -- the answer record under the key letter the older layer2 used ('A'), beside today's ('R')
    local l1 = dir .. "/layer1"
    local dump = assert(io.popen("mdb_dump -s answers " .. l1)):read("a")
    local forged = dump:gsub("\n 52(%x+)\n", "\n 41%1\n"):gsub("db_pagesize=%d+\n", "")
    assert.not_equal(dump, forged)
    local load = assert(io.popen("mdb_load -s answers " .. l1, "w"))
    load:write(forged)
    assert(load:close())
    db = open()
    db:query_events(feed)
    assert.equal(0, db:stats().hits.answers) -- cleared: L2 answered, and that answer is kept
    local res = db:query_events(feed)
    assert.equal(1, db:stats().hits.answers)
    assert.same(ids(shared:query_events(feed)), ids(res))
    finish(db)
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
  end)

  it("stubs, horizon, outbox and statistics survive close and reopen", function()
    local dir = tmpdir()
    local real = assert(layer2.lmdb.open(dir .. "/l2", { nosync = true }))
    local down = false
    local l2 = setmetatable({}, { __index = function(_, name)
      return function(_, ...)
        if down then return nil, "error: down" end
        return real[name](real, ...)
      end
    end })
    local db = assert(layer2.open(dir, { l1 = { size_limit = MiB }, l2 = l2, nosync = true, log = quiet }))
    local g = gen.new({ seed = 21, authors = 20, count = 4000 })
    local first
    for i = 1, 4000 do
      local ev = g:next()
      first = first or ev
      db:save_event(ev)
      if i == 100 then db:query_events({ ids = { first.id } }) end
    end
    local cold = db.l1:candidates(10)
    local stubbed = {}
    for i, c in ipairs(cold) do stubbed[i] = c.id end
    assert(db.l1:evict(stubbed) > 0)
    down = true
    local queued = g:next()
    assert(db:save_event(queued))
    local before = db:stats()
    assert(before.l1.stubs > 0 and before.outbox == 1)
    local horizon = before.horizon
    db:close()
    db = assert(layer2.open(dir, { l1 = { size_limit = MiB }, l2 = l2, nosync = true, log = quiet }))
    local after = db:stats()
    assert.equal(before.l1.stubs, after.l1.stubs)
    assert.equal(horizon, after.horizon)
    assert.equal(1, after.outbox)
    -- the read of `first` was counted and written: it survives too
    local hits = 0
    for _, c in ipairs(db.l1:candidates(100000)) do
      if c.id == first.id then hits = c.hits end
    end
    assert(hits >= 1 or db.l1:count_events({ ids = { first.id } }) == 0)
    down = false
    db:poll()
    assert.equal(0, db:stats().outbox)
    assert.equal(1, real:count_events({ ids = { queued.id } }))
    db:close()
    real:close()
    rmdir(dir)
  end)

  it("on_event fires for saved, polled and ephemeral events; a failing handler is reported", function()
    local dir = tmpdir()
    local seen, logged = {}, {}
    local db = assert(layer2.open(dir, { nosync = true, log = function(m) logged[#logged + 1] = m end,
      on_event = function(ev, origin) seen[#seen + 1] = origin .. ":" .. ev.kind end }))
    db:on_event(function() error("handler bug") end)
    local sec = ("0"):rep(63) .. "5"
    assert(db:save_event(layer2.event.sign({ kind = 1, created_at = 1, tags = {}, content = "a" }, sec)))
    assert(db:save_event(layer2.event.sign({ kind = 20001, created_at = 1, tags = {}, content = "e" }, sec)))
    assert.equal(0, db:count_events({ kinds = { 20001 } }))
    -- another writer on the same L2 (as another process would be)
    local other = assert(layer2.lmdb.open(dir .. "/layer2"))
    other:save_event(layer2.event.sign({ kind = 7, created_at = 2, tags = {}, content = "+" }, sec))
    other:close()
    db:poll()
    assert.same({ "local:1", "local:20001", "l2:7" }, seen)
    assert.equal(3, #logged)
    assert.matches("handler failed.*handler bug", logged[1])
    db:close()
    rmdir(dir)
  end)

  -- The C core calls policies and handlers, and a yield cannot cross a C call (LuaJIT never, Lua
  -- 5.4 not without a continuation): inside a coroutine, as under OpenResty, the yield fails as
  -- an error of the policy (lru takes over) or of the handler (reported); the saves go on.
  it("a policy or a handler that yields gets a clear error, and the store goes on", function()
    local dir = tmpdir()
    local logged = {}
    local yielding = { name = "yields", select = function() coroutine.yield() end }
    local db = assert(layer2.open(dir, { nosync = true, policy = yielding, l1 = { size_limit = 256 * 1024 },
      log = function(m) logged[#logged + 1] = m end }))
    db:on_event(function() coroutine.yield() end)
    local sec = ("0"):rep(63) .. "6"
    local co = coroutine.create(function()
      for i = 1, 200 do
        assert(db:save_event(layer2.event.sign({ kind = 1, created_at = i, tags = {}, content = ("y"):rep(1500) },
          sec)))
      end
      return "saved"
    end)
    local ok, res = coroutine.resume(co)
    assert.is_true(ok, res)
    assert.equal("saved", res)
    assert.equal(200, db:count_events({ kinds = { 1 } }))
    local policy_failed, handler_failed = false, false
    for _, m in ipairs(logged) do
      policy_failed = policy_failed or m:match("policy 'yields' failed %(.*yield across.*%); using lru") ~= nil
      handler_failed = handler_failed or m:match("handler failed: .*yield across") ~= nil
    end
    assert(policy_failed, "the policy's yield was reported")
    assert(handler_failed, "the handler's yield was reported")
    db:close()
    rmdir(dir)
  end)

  -- an L2 table over an LMDB store: the store methods pass through; `hide` makes changes
  -- invisible, as a transaction that took its sequence number but has not committed yet is
  local function wrapped_l2(store, with_feed)
    local l2 = { hidden = {} }
    for _, m in ipairs({ "save_event", "query_events", "count_events", "delete_event", "import", "export", "nuke",
      "sync", "path", "close", "stats" }) do
      l2[m] = function(_, ...) return store[m](store, ...) end
    end
    if with_feed then
      l2.changes_since = function(self, cursor, max, opts)
        local all = store:changes_since(cursor, max, opts)
        local out = {}
        for _, ch in ipairs(all) do
          if self.hidden[ch.seq] then break end -- nothing after an uncommitted one is final either
          out[#out + 1] = ch
        end
        return out, out[#out] and out[#out].seq or cursor
      end
    end
    return l2
  end

  it("remembers briefly which ids L2 does not have; a save, a poll or a fill ends that at once", function()
    local dir = tmpdir()
    local shared = assert(layer2.lmdb.open(dir .. "-l2"))
    local l2 = wrapped_l2(shared, true)
    local asked = 0
    local query = l2.query_events
    l2.query_events = function(self, ...)
      asked = asked + 1
      return query(self, ...)
    end
    local sec = ("0"):rep(63) .. "9"
    local function note(content) return layer2.event.sign({ kind = 1, created_at = NOW, tags = {}, content = content }, sec) end
    -- L2 has history this L1 never saw (else L1, complete from the start, answers every id itself)
    assert(shared:save_event(note("old")))
    -- an hour: nothing in the first part may outlive it, however slow the machine (valgrind)
    local db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet, l1 = { missing_ttl = 3600 } }))
    local a, b, c, d = note("a"), note("b"), note("c"), note("d")
    -- nobody has a: L2 is asked once, then the answer stands
    asked = 0
    local got, levels = db:query_events({ ids = { a.id } })
    assert.same({}, got)
    assert.same({ l1 = 0, stubs = 0, l2 = 0 }, levels)
    got, levels = db:query_events({ ids = { a.id } })
    assert.same({}, got)
    assert.same({ l1 = 0, stubs = 0, l2 = 0, missing = 1 }, levels)
    assert.equal(1, asked)
    -- a lookup with more than ids (or an id L1 holds next to it) is answered the same way only
    -- when every id is accounted for
    assert(db:save_event(b))
    got, levels = db:query_events({ { ids = { a.id, b.id } } })
    assert.same({ b.id }, ids(got))
    assert.same({ l1 = 1, stubs = 0, l2 = 0, missing = 1 }, levels)
    assert.equal(1, asked)
    db:query_events({ ids = { a.id }, kinds = { 1 } })
    assert.equal(2, asked, "a filter with more than ids does not say the event does not exist")
    -- saving a through the backend ends it at once
    assert(db:save_event(a))
    assert.same({ a.id }, ids((db:query_events({ ids = { a.id } }))))
    -- another writer puts c into L2: a poll brings it, and with it the end of "missing"
    asked = 0
    db:query_events({ ids = { c.id } })
    assert.same({ l1 = 0, stubs = 0, l2 = 0, missing = 1 }, select(2, db:query_events({ ids = { c.id } })))
    assert(shared:save_event(c))
    db:poll()
    assert.same({ c.id }, ids((db:query_events({ ids = { c.id } }))))
    assert.equal(3, db:stats().hits.missing) -- a, a next to b, c
    db:close()
    -- another writer without a poll: the answer stands for missing_ttl seconds, no more. The
    -- clock counts whole seconds (time(NULL)), so "stands" is certain only when the two queries
    -- fall less than ttl - 1 seconds apart; a machine slower than that cannot tell.
    local ttl = 3
    db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet, l1 = { missing_ttl = ttl } }))
    local asked_at = os.time()
    db:query_events({ ids = { d.id } })
    assert(shared:save_event(d))
    got = db:query_events({ ids = { d.id } })
    if os.time() - asked_at < ttl - 1 then assert.same({}, got) end
    layer2.sleep(ttl + 0.1)
    got, levels = db:query_events({ ids = { d.id } })
    assert.same({ d.id }, ids(got))
    assert.equal(1, levels.l2)
    db:close()
    -- missing_ttl = 0 keeps nothing
    db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet, l1 = { missing_ttl = 0 } }))
    local e = note("e")
    asked = 0
    db:query_events({ ids = { e.id } })
    db:query_events({ ids = { e.id } })
    assert.equal(2, asked)
    db:close()
    shared:close()
    rmdir(dir)
    rmdir(dir .. "-l2")
  end)

  it("polls by cursor with an overlap: a late commit is not missed, nothing is signalled twice", function()
    local dir = tmpdir()
    local shared = assert(layer2.lmdb.open(dir .. "-l2"))
    local l2 = wrapped_l2(shared, true)
    local seen = {}
    local db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet, poll_overlap = 3,
      on_event = function(ev, origin) if origin == "l2" then seen[#seen + 1] = ev.content end end }))
    local sec = ("0"):rep(63) .. "7"
    local function other_writer(content)
      assert(shared:save_event(layer2.event.sign({ kind = 1, created_at = 100, tags = {}, content = content }, sec)))
      return shared:stats().last_seq
    end
    other_writer("a")
    local late = other_writer("late") -- took its seq, commits only later
    other_writer("c")
    l2.changes_since = function(self, cursor, max, opts)
      -- sequence order is not commit order: "c" is visible, "late" (a lower seq) is not yet
      local all = shared:changes_since(cursor, max, opts)
      local out = {}
      for _, ch in ipairs(all) do
        if not self.hidden[ch.seq] then out[#out + 1] = ch end
      end
      return out, all[#all] and all[#all].seq or cursor
    end
    l2.hidden[late] = true
    db:poll()
    assert.same({ "a", "c" }, seen)
    l2.hidden[late] = nil -- it commits
    db:poll()
    db:poll()
    assert.same({ "a", "c", "late" }, seen)
    -- past the overlap window, and across a reopen, nothing comes twice
    other_writer("d")
    for _ = 1, 5 do db:poll() end
    db:close()
    db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet, poll_overlap = 3,
      on_event = function(ev, origin) if origin == "l2" then seen[#seen + 1] = ev.content end end }))
    db:poll()
    assert.same({ "a", "c", "late", "d" }, seen)
    db:close()
    shared:close()
    rmdir(dir)
    rmdir(dir .. "-l2")
  end)

  it("polls an L2 without a change feed by created_at over poll_frequency * poll_overlap seconds", function()
    local dir = tmpdir()
    local shared = assert(layer2.lmdb.open(dir .. "-l2"))
    local seen = {}
    local db = assert(layer2.open(dir, { l2 = wrapped_l2(shared, false), nosync = true, log = quiet,
      poll_frequency = 10, poll_overlap = 1, -- below 2 means 4: a 40 s window
      on_event = function(ev, origin) if origin == "l2" then seen[#seen + 1] = ev.content end end }))
    local sec = ("0"):rep(63) .. "8"
    for _, e in ipairs({ { "recent", NOW - 30 }, { "old", NOW - 50 }, { "newest", NOW } }) do
      assert(shared:save_event(layer2.event.sign({ kind = 1, created_at = e[2], tags = {}, content = e[1] }, sec),
        { now = NOW }))
    end
    local report = db:poll(NOW)
    assert.equal(2, report.received)
    assert.same({ "newest", "recent" }, seen)
    db:poll(NOW) -- again: the same window, nothing new
    assert.same({ "newest", "recent" }, seen)
    db:close()
    shared:close()
    rmdir(dir)
    rmdir(dir .. "-l2")
  end)

  it("admits what L2 returns into L1 on its second fetch (one-off reads stay out); admit = 'always'", function()
    local sec = ("0"):rep(63) .. "9"
    local lines = {}
    for i = 1, 3 do
      lines[i] = layer2.event.encode(layer2.event.sign({ kind = 1, created_at = 1000 + i, tags = {},
        content = "old " .. i }, sec))
    end
    for _, mode in ipairs({ "second", "always" }) do
      local dir = tmpdir()
      local db = assert(layer2.open(dir, { nosync = true, log = quiet, l1 = { admit = mode } }))
      local k = 0
      assert(db:import(function()
        k = k + 1
        return lines[k]
      end))
      local id = layer2.event.parse(lines[2]).id
      local levels = {}
      for r = 1, 3 do
        local res, from = db:query_events({ ids = { id } })
        assert.equal(1, #res)
        levels[r] = from.l1 == 1 and "l1" or "l2"
      end
      assert.same(mode == "second" and { "l2", "l2", "l1" } or { "l2", "l1", "l1" }, levels)
      -- a filter's answer the same way
      local f = { kinds = { 1 }, limit = 3 }
      local _, first = db:query_events(f)
      assert.equal(3, first.l2)
      db:close()
      rmdir(dir)
    end
  end)

  it("raises the admission bar to the recent reads of what eviction lets go (2 to 8); counts age", function()
    local dir = tmpdir()
    local db = assert(layer2.open(dir, { nosync = true, log = quiet, policy = "lfu", l1 = { history = 1000 } }))
    local private = require("layer2.core").backend_private
    local function cand(id, reads)
      for _ = 1, reads do private.count_read(db, id) end
      -- the C core hands the policy each candidate's shared read count
      return { id = id, pubkey = id, kind = 1, created_at = 1, size = 100, last_access = 1, hits = 0,
        reads = private.reads(db, id) }
    end
    -- lfu takes the least read first: those read 2, 3 and 4 times go, the median of those is 3
    local chosen = db:choose({ cand(("1"):rep(64), 2), cand(("2"):rep(64), 3), cand(("3"):rep(64), 9),
      cand(("6"):rep(64), 4) }, 300)
    assert.same({ ("1"):rep(64), ("2"):rep(64), ("6"):rep(64) }, chosen)
    assert.equal(3, private.admit_bar(db))
    local id = ("e"):rep(64)
    assert.is_false(private.admit(db, id))
    assert.is_false(private.admit(db, id))
    assert.is_true(private.admit(db, id))
    db:choose({ cand(("4"):rep(64), 50), cand(("5"):rep(64), 60) }, 200)
    assert.equal(8, private.admit_bar(db))
    -- every 1,000 counted reads, all counts halve
    local before = private.reads(db, ("5"):rep(64))
    assert.equal(60, before)
    for i = 1, 1000 do private.count_read(db, ("%064x"):format(i)) end
    assert.equal(math.floor(before / 2), private.reads(db, ("5"):rep(64)))
    assert.equal(0, private.reads(db, ("%064x"):format(1))) -- read once: gone
    db:close()
    rmdir(dir)
  end)

  it("delete, import, export, nuke and sync act on both levels", function()
    local dir = tmpdir()
    local db = assert(layer2.open(dir, { nosync = true }))
    local g = gen.new({ seed = 5, authors = 10, count = 200 })
    local evs = {}
    for i = 1, 50 do
      evs[i] = g:next()
      assert(db:save_event(evs[i]))
    end
    assert(db:delete_event(evs[1].id))
    assert.equal(0, db.l1:count_events({ ids = { evs[1].id } }))
    assert.equal(0, db.l2:count_events({ ids = { evs[1].id } }))
    local src = os.tmpname()
    local f = io.open(src, "w")
    for _ = 1, 100 do f:write(layer2.event.encode(g:next()), "\n") end
    f:close()
    local c = assert(db:import(src))
    assert.equal(100, c.saved + c.duplicate)
    assert(db:stats().horizon > 0, "the horizon moved past what L1 did not see")
    local n = 0
    assert.equal(db.l2:stats().events, db:export(function() n = n + 1 end))
    assert.equal(n, db:count_events({}))
    assert.is_true(db:sync())
    assert.is_true(db:nuke())
    assert.equal(0, db.l1:stats().events)
    assert.equal(0, db.l2:stats().events)
    db:close()
    db:close()
    rmdir(dir)
    os.remove(src)
  end)

  it("without an L2, eviction deletes and L1 alone answers; l1_only skips L2", function()
    local dir = tmpdir()
    local db = assert(layer2.open(dir, { l2 = false, l1 = { size_limit = MiB }, nosync = true, log = quiet }))
    assert.is_nil(db.l2)
    local g = gen.new({ seed = 31, authors = 20, count = 3000 })
    for _ = 1, 3000 do db:save_event(g:next()) end
    local st = db:stats()
    assert.equal(0, st.l1.stubs, "no stubs without an L2")
    assert(st.l1.events < 3000, "events were evicted")
    assert(st.l1.file_bytes <= MiB)
    local all, levels = db:query_events({}, { max_limit = 100000 })
    assert.equal(st.l1.events, #all)
    assert.equal(0, levels.l2)
    db:close()
    rmdir(dir)
    -- l1_only: an answer from L1 alone, stubs left out, L2 not asked
    db = assert(layer2.open(dir, { nosync = true, log = quiet }))
    local evs = {}
    for i = 1, 5 do
      evs[i] = g:next()
      assert(db:save_event(evs[i]))
    end
    assert(db.l1:evict({ evs[1].id }) == 1)
    local asked, real = 0, db.l2
    db.l2 = setmetatable({ query_events = function(_, ...)
      asked = asked + 1
      return real:query_events(...)
    end }, { __index = real })
    local got, from = db:query_events({ ids = { evs[1].id, evs[2].id } }, { l1_only = true })
    assert.same({ l1 = 1, stubs = 0, l2 = 0 }, { l1 = #got, stubs = from.stubs, l2 = from.l2 })
    assert.equal(evs[2].id, got[1].id)
    assert.equal(0, asked)
    db.l2 = real
    db:close()
    rmdir(dir)
  end)

  it("refuses bad options and a bad L2 clearly", function()
    assert.has_error(function() layer2.open(5) end, "layer2.open: a directory path expected")
    assert.has_error(function() layer2.open("/tmp/x", { l1 = { size_limit = 10 } }) end,
      "layer2.open: l1.size_limit must be a number of bytes, at least 256 KiB")
    assert.has_error(function() layer2.open("/tmp/x", { l1 = { high_water = 40, low_water = 50 } }) end)
    for _, share in ipairs({ -0.1, 1.5, "0.1" }) do
      assert.has_error(function() layer2.open("/tmp/x", { l1 = { stub_share = share } }) end,
        "layer2.open: l1.stub_share is a share of L1's events, from 0 to 1")
    end
    assert.is_nil(io.open("/tmp/x"), "nothing was made for bad options")
    local dir = tmpdir()
    assert.has_error(function() layer2.open(dir, { l2 = {} }) end, "layer2: opts.l2 has no save_event method")
    assert.is_nil(io.open(dir), "nothing was made for a bad L2")
    local db, err = layer2.open("/proc/version/x")
    assert.is_nil(db)
    assert.matches("^error: ", err)
  end)
end)
