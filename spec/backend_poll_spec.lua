-- Polling and the change feeds of the two-level backend (csrc/backend_poll.c): what L1's feed
-- carries, and polls of L2 by cursor or by created_at.
local layer2 = require("layer2")
local helper = require("spec.helper")
local gen = require("layer2.gen")
local socket = require("socket")
local B = require("spec.backend_helper")
local tmpdir, rmdir, ids = helper.tmpdir, helper.rmdir, helper.ids
local NOW, quiet, two_levels, wrapped_l2 = B.NOW, B.quiet, B.two_levels, B.wrapped_l2

describe("layer2.open (two levels): polling and the change feed", function()
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

  it("poll_wait sleeps the given seconds, or waits for L2's signal when notify asked for it, then polls", function()
    local dir = tmpdir()
    local db = assert(layer2.open(dir, { nosync = true, log = quiet }))
    -- another writer puts an event into L2 (the same LMDB environment, another handle)
    local writer = assert(layer2.lmdb.open(dir .. "/layer2"))
    local sec = ("0"):rep(63) .. "6"
    local ev = layer2.event.sign({ kind = 1, created_at = NOW, tags = {}, content = "from another writer" }, sec)
    assert(writer:save_event(ev))
    local t0 = layer2.monotonic()
    local report = db:poll_wait(0.2)
    assert(layer2.monotonic() - t0 >= 0.19, "it slept before polling")
    assert.equal(1, report.received)
    assert.equal(1, db.l1:count_events({ ids = { ev.id } }))
    assert.has_error(function() db:poll_wait("soon") end)
    writer:close()
    db:close()
    assert.has_error(function() db:poll_wait(0) end, "layer2: attempt to use a closed store")
    rmdir(dir)
    -- with notify, an L2 that can wait is asked to (here it returns at once: no 30 s sleep follows)
    dir = tmpdir()
    local store = assert(layer2.lmdb.open(dir .. "-l2", { nosync = true }))
    local l2 = wrapped_l2(store, true)
    local waited
    l2.listen = function() return true end
    l2.wait = function(_, seconds) waited = seconds end
    db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet, notify = true }))
    t0 = layer2.monotonic()
    assert(db:poll_wait(30))
    assert.equal(30, waited)
    assert(layer2.monotonic() - t0 < 30, "the signal's wait stood in for the sleep")
    db:close()
    store:close()
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
end)
