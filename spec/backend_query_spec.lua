-- Reads of the two-level backend (csrc/backend_query.c): a small L1 gives L2's answers, fills
-- and admission, the ids L2 does not have.
local layer2 = require("layer2")
local helper = require("spec.helper")
local gen = require("layer2.gen")
local B = require("spec.backend_helper")
local tmpdir, rmdir, ids = helper.tmpdir, helper.rmdir, helper.ids
local NOW, MiB, quiet, random_filter, wrapped_l2 = B.NOW, B.MiB, B.quiet, B.random_filter, B.wrapped_l2

describe("layer2.open (two levels): reads", function()
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

  it("an L2's refusal of a read is the answer; its failure falls back to what L1 holds", function()
    local dir = tmpdir()
    local shared = assert(layer2.lmdb.open(dir .. "-l2"))
    local l2 = wrapped_l2(shared, true)
    local instead -- nil: L2 answers; else the message it gives in place of an answer
    for _, method in ipairs({ "query_events", "count_events" }) do
      local through = l2[method]
      l2[method] = function(self, ...)
        if instead then return nil, instead end
        return through(self, ...)
      end
    end
    local sec = ("0"):rep(63) .. "8"
    local function note(content) return layer2.event.sign({ kind = 1, created_at = NOW, tags = {}, content = content }, sec) end
    -- L2 has history this L1 never saw, so L1 alone proves no answer of this author's notes (and
    -- a size-limited L1 admits what L2 returns on its second read only: L2 is asked again)
    assert(shared:save_event(note("before this L1")))
    local db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet, l1 = { size_limit = 64 * 2 ^ 20 } }))
    local mine = note("saved through the backend")
    assert(db:save_event(mine))
    local filter = { kinds = { 1 }, authors = { mine.pubkey } }
    assert.equal(2, #db:query_events(filter))
    assert.equal(2, db:count_events(filter))
    instead = "blocked: this relay serves no reads of that author"
    for _, method in ipairs({ "query_events", "count_events" }) do
      local got, err = db[method](db, filter)
      assert.is_nil(got, method)
      assert.equal(instead, err, method)
    end
    instead = "error: L2 is unreachable"
    assert.same({ mine.id }, ids((db:query_events(filter))))
    assert.equal(1, db:count_events(filter))
    db:close()
    shared:close()
    rmdir(dir)
    rmdir(dir .. "-l2")
  end)

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

  it("admits what L2 returns into a size-limited L1 on its second fetch (one-off reads stay out); at once with "
    .. "admit = 'always' or no size limit in front of a given L2; never with admit = 'never', and by default for an "
    .. "L1 without a size limit in front of the embedded LMDB L2", function()
    local sec = ("0"):rep(63) .. "9"
    local lines = {}
    for i = 1, 3 do
      lines[i] = layer2.event.encode(layer2.event.sign({ kind = 1, created_at = 1000 + i, tags = {},
        content = "old " .. i }, sec))
    end
    for _, mode in ipairs({ "second", "always", "unlimited", "never", "embedded" }) do
      local dir = tmpdir()
      local l1 = (mode == "unlimited" or mode == "embedded") and {} or mode == "never" and { admit = "never" }
        or { admit = mode, size_limit = 64 * 2 ^ 20 }
      -- "unlimited": an L2 given as a store object (as a PostgreSQL L2 is given by its conninfo)
      local given = mode == "unlimited" and assert(layer2.lmdb.open(dir .. "-l2", { nosync = true })) or nil
      local db = assert(layer2.open(dir, { nosync = true, log = quiet, l1 = l1, l2 = given }))
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
      local want = { second = { "l2", "l2", "l1" }, never = { "l2", "l2", "l2" }, embedded = { "l2", "l2", "l2" } }
      assert.same(want[mode] or { "l2", "l1", "l1" }, levels)
      -- a filter's answer the same way
      local f = { kinds = { 1 }, limit = 3 }
      local _, first = db:query_events(f)
      assert.equal(3, first.l2)
      if mode == "never" or mode == "embedded" then
        local _, again = db:query_events(f)
        assert.equal(3, again.l2)
        local st = db:stats()
        assert.same({ 0, 0 }, { st.l1.events, st.hits.answers }, "nothing copied into L1, no answer kept")
      end
      db:close()
      if given then
        given:close()
        rmdir(dir .. "-l2")
      end
      rmdir(dir)
    end
  end)

  -- a host whose event loop must not wait for L1's write lock (layer2.resty) has its handle keep a
  -- read's L1 writes, and a handle in the thread pool write them
  local private = require("layer2.core").backend_private
  local function signed(n, template, sec)
    local lines, evs = {}, {}
    for i = 1, n do
      evs[i] = layer2.event.sign(template(i), sec or ("0"):rep(63) .. "7")
      lines[i] = layer2.event.encode(evs[i])
    end
    return lines, evs
  end
  local function import(db, lines)
    local k = 0
    assert(db:import(function()
      k = k + 1
      return lines[k]
    end))
  end

  it("keeps a read's L1 writes when told to: another handle on the same L1 writes them, and L1 then answers as if "
    .. "it had filled itself; the reads it served reach eviction's order; malformed records are refused", function()
    local lines, evs = signed(30, function(i) return { kind = 1, created_at = 1000 + i, tags = {}, content = "e" .. i } end)
    local dir = tmpdir()
    local opts = { nosync = true, log = quiet, l1 = { size_limit = 64 * 2 ^ 20 } }
    local db, pool = assert(layer2.open(dir, opts)), assert(layer2.open(dir, opts))
    import(db, lines)
    assert.is_nil((private.take_deferred(db, true)), "nothing kept by a handle that writes")
    assert.is_true(private.defer_writes(db, true), "a size-limited L1 may keep writes")
    -- the default L1 (no size limit, in front of the embedded L2) copies nothing: nothing to keep
    local plain_dir = tmpdir()
    local plain = assert(layer2.open(plain_dir, { nosync = true, log = quiet }))
    assert.is_false(private.defer_writes(plain, true))
    plain:close()
    rmdir(plain_dir)
    local f, one = { kinds = { 1 }, limit = 10 }, { ids = { evs[3].id } }
    local want = ids(db.l2:query_events(f))
    for _ = 1, 3 do
      local got, from = db:query_events(f)
      assert.same(want, ids(got))
      assert.equal(10, from.l2)
      assert.equal(1, select(2, db:query_events(one)).l2)
    end
    assert.same({ 0, 0 }, { db:stats().l1.events, db:stats().hits.answers }, "nothing written while kept")
    local records, dropped = private.take_deferred(db, true)
    assert.equal(0, dropped)
    assert.is_nil((private.take_deferred(db, true)), "taken once")
    -- malformed records: refused whole, saying where
    for bad, msg in pairs({ X = "the record at byte 1 of 1 is malformed", ["F\0"] = "the record at byte 1 of 2 is",
      [records:sub(1, -2)] = (" of %d is malformed"):format(#records - 1),
      ["R\0\0\0\5abcde"] = "the record at byte 1 of 10 is malformed" }) do
      local ok, err = private.apply_deferred(pool, bad)
      assert.is_nil(ok)
      assert.truthy(err:find(msg, 1, true), err)
    end
    assert.equal(0, db:stats().l1.events)
    assert.is_true(private.apply_deferred(pool, records))
    -- the ten events of the filter, read three times, admitted (evs[3] among them? it is older)
    local held = 10 + (evs[3].created_at > 1020 and 0 or 1)
    assert.equal(held, db:stats().l1.events)
    local got, from = db:query_events(f)
    assert.same(want, ids(got))
    assert.same({ 10, 0 }, { from.l1, from.l2 }, "the remembered answer, from L1")
    assert.same({ 1, 0 }, { select(2, db:query_events(one)).l1, select(2, db:query_events(one)).l2 })
    -- the reads L1 served, counted by the handle that does not write, reach the access statistics
    local function hits(id)
      for _, c in ipairs(pool.l1:candidates(100)) do if c.id == id then return c.hits end end
    end
    local before = hits(evs[3].id)
    for _ = 1, 4 do db:query_events(one) end
    assert.equal(before, hits(evs[3].id))
    assert.is_true(private.apply_deferred(pool, (private.take_deferred(db, true))))
    assert.is_true(hits(evs[3].id) >= before + 4, hits(evs[3].id) .. " after " .. before)
    assert.is_true(db:check())
    db:close()
    pool:close()
    rmdir(dir)
  end)

  it("drops a read's kept L1 writes past 16 MiB, and says how many", function()
    local lines = signed(300, function(i)
      return { kind = 2, created_at = 1000 + i, tags = {}, content = ("%d "):format(i) .. ("z"):rep(2000) }
    end)
    local dir = tmpdir()
    local opts = { nosync = true, log = quiet, l1 = { size_limit = 256 * 2 ^ 20, admit = "always" } }
    local db, pool = assert(layer2.open(dir, opts)), assert(layer2.open(dir, opts))
    import(db, lines)
    private.defer_writes(db, true)
    -- each answer's bodies (about 600 KB) kept: 40 of them pass the bound
    for i = 1, 40 do assert.equal(300 - i, #db:query_events({ kinds = { 2 }, ["until"] = 1300 - i, limit = 300 })) end
    local records, dropped = private.take_deferred(db)
    assert.is_true(#records <= 16 * 2 ^ 20 and #records > 15 * 2 ^ 20, #records)
    assert.is_true(dropped > 10 and dropped < 20, dropped)
    assert.is_true(private.apply_deferred(pool, records))
    assert.equal(299, db:stats().l1.events)
    assert.is_true(db:check())
    db:close()
    pool:close()
    rmdir(dir)
  end)

  it("a kept fill written after L2 changed leaves L1 answering as L2 does: a newer version, a deletion, an "
    .. "operator's deletion (no tombstone)", function()
    local sec = ("0"):rep(63) .. "8"
    local lines, evs = signed(3, function(i) return { kind = i == 1 and 0 or 1, created_at = 1000 + i, tags = {},
      content = "v1 " .. i } end, sec)
    local dir = tmpdir()
    local opts = { nosync = true, log = quiet, l1 = { size_limit = 64 * 2 ^ 20, admit = "always" } }
    local db, pool = assert(layer2.open(dir, opts)), assert(layer2.open(dir, opts))
    import(db, lines)
    private.defer_writes(db, true)
    local filters = { { kinds = { 0 }, authors = { evs[1].pubkey } }, { ids = { evs[2].id } }, { ids = { evs[3].id } },
      { authors = { evs[1].pubkey } } }
    for _, f in ipairs(filters) do assert.same(ids(db.l2:query_events(f)), ids(db:query_events(f))) end
    -- while the fills wait: a newer profile, and a deletion of the note, saved through the other handle
    local v2 = layer2.event.sign({ kind = 0, created_at = 1010, tags = {}, content = "v2" }, sec)
    local del = layer2.event.sign({ kind = 5, created_at = 1011, tags = { { "e", evs[2].id } }, content = "" }, sec)
    assert(pool:save_event(v2))
    assert(pool:save_event(del))
    assert.is_true(pool:delete_event(evs[3].id, true))
    assert.is_true(private.apply_deferred(pool, (private.take_deferred(db))))
    assert.same({}, ids(db.l1:query_events({ ids = { evs[1].id, evs[2].id, evs[3].id } })), "L1 took none back")
    for _, f in ipairs(filters) do
      assert.same(ids(db.l2:query_events(f)), ids(db:query_events(f)), require("cjson").encode(f))
    end
    assert.is_true(db:check())
    db:close()
    pool:close()
    rmdir(dir)
  end)

  it("raises the admission bar to the recent reads of what eviction lets go (2 to 8); counts age", function()
    local dir = tmpdir()
    local db = assert(layer2.open(dir, { nosync = true, log = quiet, policy = "lfu",
      l1 = { history = 1000, size_limit = 64 * 2 ^ 20 } }))
    local testing = require("layer2.core").testing.backend
    local function cand(id, reads)
      for _ = 1, reads do testing.count_read(db, id) end
      -- the C core hands the policy each candidate's shared read count
      return { id = id, pubkey = id, kind = 1, created_at = 1, size = 100, last_access = 1, hits = 0,
        reads = testing.reads(db, id) }
    end
    -- lfu takes the least read first: those read 2, 3 and 4 times go, the median of those is 3
    local chosen = db:choose({ cand(("1"):rep(64), 2), cand(("2"):rep(64), 3), cand(("3"):rep(64), 9),
      cand(("6"):rep(64), 4) }, 300)
    assert.same({ ("1"):rep(64), ("2"):rep(64), ("6"):rep(64) }, chosen)
    assert.equal(3, private.admit_bar(db))
    local id = ("e"):rep(64)
    assert.is_false(testing.admit(db, id))
    assert.is_false(testing.admit(db, id))
    assert.is_true(testing.admit(db, id))
    db:choose({ cand(("4"):rep(64), 50), cand(("5"):rep(64), 60) }, 200)
    assert.equal(8, private.admit_bar(db))
    -- every 1,000 counted reads, all counts halve
    local before = testing.reads(db, ("5"):rep(64))
    assert.equal(60, before)
    for i = 1, 1000 do testing.count_read(db, ("%064x"):format(i)) end
    assert.equal(math.floor(before / 2), testing.reads(db, ("5"):rep(64)))
    assert.equal(0, testing.reads(db, ("%064x"):format(1))) -- read once: gone
    db:close()
    rmdir(dir)
  end)
end)
