-- Remembered answers of the two-level backend (csrc/backend_answers.c, csrc/answers.c): equal
-- to L2's through every change, and forgotten when they could be wrong.
local layer2 = require("layer2")
local helper = require("spec.helper")
local gen = require("layer2.gen")
local B = require("spec.backend_helper")
local tmpdir, rmdir, ids = helper.tmpdir, helper.rmdir, helper.ids
local NOW, MiB, quiet = B.NOW, B.MiB, B.quiet

describe("layer2.open (two levels): remembered answers", function()
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
    local db = assert(layer2.open(dir, { l2 = shared, nosync = true, log = quiet,
      l1 = { answers_max_ids = 100, size_limit = 64 * 2 ^ 20 } }))
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

  it("an answer kept by id (its events not in L1 then) is kept again by serial once L1 holds all of it",
    function()
    local dir = tmpdir()
    -- size-limited: L1 admits what L2 returns on its second read
    local db = assert(layer2.open(dir, { nosync = true, log = quiet, l1 = { size_limit = 64 * 2 ^ 20 } }))
    local sec = ("%064x"):format(4242)
    local notes = {}
    for i = 1, 5 do notes[i] = layer2.event.encode(note_by(sec, i)) end
    local n = 0
    -- imported: in L2 only, so L2 gives the first answer and L1 admits its events on their second read
    assert(db:import(function()
      n = n + 1
      return notes[n]
    end))
    local f = feed_of(sec)
    local want = ids(db.l2:query_events(f))
    local function ask()
      local res, levels = db:query_events(f)
      assert.same(want, ids(res))
      return db:stats().hits.answers, levels
    end
    local answered, levels = ask()
    assert.same({ 0, 5 }, { answered, levels.l2 }, "L2's answer, kept by id")
    answered, levels = ask()
    assert.same({ 1, 0 }, { answered, levels.l1 }, "served by id from L2, which fills L1")
    answered, levels = ask()
    assert.same({ 2, 5 }, { answered, levels.l1 }, "served by id from L1: kept again by serial")
    answered, levels = ask()
    assert.same({ 3, 5 }, { answered, levels.l1 }, "served by serial")
    -- by serial now: one event leaving L1 ends it (by id, L2 would have filled the gap)
    assert.equal(1, (db.l1:evict({ layer2.event.parse(notes[3]).id }, "delete")))
    answered, levels = ask()
    assert.equal(3, answered)
    assert.equal(5, levels.l2 + levels.l1)
    db:close()
    rmdir(dir)
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
end)
