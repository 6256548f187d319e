-- The two-level backend (csrc/backend.c): what one process learns another knows, state that
-- survives reopening, on_event, hooks that yield, the methods that act on both levels, L1 alone,
-- bad options.
local layer2 = require("layer2")
local helper = require("spec.helper")
local gen = require("layer2.gen")
local B = require("spec.backend_helper")
local tmpdir, rmdir, ids = helper.tmpdir, helper.rmdir, helper.ids
local NOW, MiB, quiet, two_levels, wrapped_l2 = B.NOW, B.MiB, B.quiet, B.two_levels, B.wrapped_l2

describe("layer2.open (two levels): open, lifecycle, hooks and options", function()
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

  it("on_event handlers can be removed, also by themselves while they are called", function()
    local dir = tmpdir()
    local db = assert(layer2.open(dir, { nosync = true, log = quiet }))
    local heard = {}
    local function hear(name) return function(ev) heard[#heard + 1] = name .. ":" .. ev.content end end
    local a, c = hear("a"), hear("c")
    assert.equal(a, db:on_event(a))
    local once
    once = function(ev)
      heard[#heard + 1] = "once:" .. ev.content
      assert.is_true(db:off_event(once))
    end
    db:on_event(once)
    db:on_event(c)
    local sec = ("0"):rep(63) .. "7"
    local function save(content)
      assert(db:save_event(layer2.event.sign({ kind = 1, created_at = #heard + 1, tags = {}, content = content }, sec)))
    end
    save("1")
    assert.same({ "a:1", "once:1", "c:1" }, heard)
    heard = {}
    save("2")
    assert.same({ "a:2", "c:2" }, heard)
    assert.is_true(db:off_event(a))
    assert.is_false(db:off_event(a), "removed already")
    assert.is_false(db:off_event(function() end), "never a handler")
    heard = {}
    save("3")
    assert.same({ "c:3" }, heard)
    assert.has_error(function() db:off_event(5) end, "layer2: off_event takes a function")
    db:close()
    assert.has_error(function() db:off_event(c) end, "layer2: attempt to use a closed store")
    rmdir(dir)
  end)

  it("on_removed hears replaced and deleted events: saved here, deleted here, or removed by another writer",
    function()
    local dir = tmpdir()
    local heard, logged = {}, {}
    local function hear(id, how, origin) heard[#heard + 1] = table.concat({ id, how, origin }, " ") end
    local db = assert(layer2.open(dir, { nosync = true, on_removed = hear,
      log = function(m) logged[#logged + 1] = m end }))
    local sec = ("0"):rep(63) .. "9"
    local function save(t)
      local ev = layer2.event.sign({ kind = t.kind or 1, created_at = t.created_at or 100, tags = t.tags or {},
        content = t.content or "" }, sec)
      assert(db:save_event(ev))
      return ev
    end
    local v1 = save({ kind = 30023, created_at = 100, tags = { { "d", "post" } } })
    local v2 = save({ kind = 30023, created_at = 101, tags = { { "d", "post" } } })
    local note, note2 = save({ content = "a" }), save({ content = "b" })
    assert.same({ v1.id .. " replaced local" }, heard)
    -- a deletion naming two events and an address: each that was there is heard once
    save({ kind = 5, created_at = 200, tags = { { "e", note.id }, { "e", note2.id }, { "e", ("f"):rep(64) },
      { "a", "30023:" .. layer2.schnorr.pubkey(sec) .. ":post" } } })
    assert.same({ v1.id .. " replaced local", note.id .. " deleted local", note2.id .. " deleted local",
      v2.id .. " deleted local" }, heard)
    -- a save that removes nothing, a deletion by id, one of nothing
    heard = {}
    local keep = save({ content = "kept" })
    assert.is_true(db:delete_event(keep.id))
    assert.is_false(db:delete_event(keep.id))
    assert.same({ keep.id .. " deleted local" }, heard)
    -- another writer on the same L2 deletes an event L1 holds: the poll tells of it
    heard = {}
    local theirs = save({ content = "theirs" })
    local other = assert(layer2.lmdb.open(dir .. "/layer2"))
    assert(other:delete_event(theirs.id))
    other:close()
    db:poll()
    assert.same({ theirs.id .. " deleted l2" }, heard)
    -- taken off, it hears nothing; a failing handler is logged, and the save stands
    assert.is_true(db:off_removed(hear))
    assert.is_false(db:off_removed(hear))
    db:on_removed(function() error("handler bug") end)
    local doomed = save({ content = "doomed" })
    assert.is_true(db:delete_event(doomed.id))
    assert.same({ theirs.id .. " deleted l2" }, heard)
    assert.matches("an on_removed handler failed: .*handler bug", logged[#logged])
    assert.equal(0, db:count_events({ ids = { doomed.id } }))
    assert.has_error(function() db:on_removed(1) end, "layer2: on_removed takes a function")
    db:close()
    assert.has_error(function() db:off_removed(hear) end, "layer2: attempt to use a closed store")
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

  it("sweep removes expired events from both levels; a Lua L2's own sweep is asked, or there is none", function()
    local sec = ("0"):rep(63) .. "7"
    local function note(expiration, content)
      local tags = expiration and { { "expiration", tostring(expiration) } } or {}
      return layer2.event.sign({ kind = 1, created_at = NOW, tags = tags, content = content }, sec)
    end
    local soon, later, never = note(NOW + 100, "soon"), note(NOW + 200, "later"), note(nil, "never")
    local db, done = two_levels()
    for _, ev in ipairs({ soon, later, never }) do assert(db:save_event(ev, { now = NOW })) end
    assert.equal(0, db:sweep(NOW + 99))
    assert.equal(1, db:sweep(NOW + 100))
    local left = { later.id, never.id }
    table.sort(left)
    for _, level in ipairs({ db.l1, db.l2 }) do
      local got = ids(level:query_events({ { ids = { soon.id, later.id, never.id } } }, { now = NOW }))
      table.sort(got)
      assert.same(left, got)
    end
    assert.has_error(function() db:sweep("soon") end)
    done()
    -- an L2 written in Lua: its sweep is asked with the time; one without a sweep keeps nothing
    -- that expires, and L1 still drops its own copies
    local dir = tmpdir()
    local store = assert(layer2.lmdb.open(dir .. "-l2", { nosync = true }))
    local l2 = wrapped_l2(store, true)
    local asked
    l2.sweep = function(_, now)
      asked = now
      return store:sweep(now)
    end
    local lua_db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet }))
    assert(lua_db:save_event(soon, { now = NOW }))
    assert(lua_db:save_event(later, { now = NOW }))
    assert.equal(1, lua_db:sweep(NOW + 150))
    assert.equal(NOW + 150, asked)
    l2.sweep = nil
    assert.equal(0, lua_db:sweep(NOW + 300))
    assert.equal(0, lua_db.l1:count_events({ ids = { later.id } }, { now = NOW }))
    lua_db:close()
    store:close()
    rmdir(dir)
    rmdir(dir .. "-l2")
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

  it("one class for every handle, whose methods are not replaced; a delegating handle answers what L1 proves"
    .. " and passes the rest to its delegate", function()
    local dir = tmpdir()
    local store = assert(layer2.lmdb.open(dir .. "-l2", { nosync = true }))
    -- the delegate's side: a backend of its own over the same L1 and L2 (layer2.resty's pool thread)
    local direct = assert(layer2.open(dir, { l2 = store, nosync = true, log = quiet }))
    local l2, reads = wrapped_l2(store), 0
    for _, m in ipairs({ "query_events", "count_events" }) do
      local pass = l2[m]
      l2[m] = function(...)
        reads = reads + 1
        return pass(...)
      end
    end
    local delegated = {}
    local db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = quiet, delegate = function(method, ...)
      delegated[#delegated + 1] = method
      return direct[method](direct, ...)
    end }))
    assert.equal(getmetatable(direct), getmetatable(db))
    assert.has_error(function() db.query_events = function() end end,
      "layer2: query_events is a method of the store and cannot be replaced")
    db.observe_gc = quiet -- the Lua side's fields are the handle's own
    assert.equal(quiet, db.observe_gc)
    assert.is_nil(direct.observe_gc)
    local g = gen.new({ seed = 7, authors = 5, count = 20 })
    local evs = {}
    for i = 1, 10 do
      evs[i] = g:next()
      assert(db:save_event(evs[i], { now = NOW }))
    end
    -- what L1 holds by id: answered here
    local got, levels = db:query_events({ ids = { evs[1].id } }, { now = NOW })
    assert.same({ evs[1].id, 1 }, { got[1].id, levels.l1 })
    assert.same({}, delegated)
    -- what only L2 holds: the delegate's answer, the same as the direct backend's
    assert.equal(1, db.l1:evict({ evs[2].id }))
    got = db:query_events({ ids = { evs[2].id } }, { now = NOW })
    assert.same({ evs[2].id }, ids(got))
    db.l1:evict({ evs[2].id }) -- the delegate's read may have brought it back into L1
    local f = { authors = { evs[2].pubkey } } -- the evicted one among them
    local answer = ids(db:query_events(f, { now = NOW }))
    assert.same(ids(direct:query_events(f, { now = NOW })), answer)
    assert.equal(direct:count_events(f, { now = NOW }), db:count_events(f, { now = NOW }))
    assert.same({ "query_events", "query_events", "count_events" }, delegated)
    -- L2's figures asked from Lua; the core never read L2 itself
    assert.equal(10, db:stats().l2.events)
    assert.equal(0, reads)
    db:close()
    assert.has_error(function() db:count_events(f) end, "layer2: attempt to use a closed store")
    assert.has_error(function() db:query_events(f) end, "layer2: attempt to use a closed store")
    direct:close()
    store:close()
    assert.has_error(function() layer2.open(dir, { delegate = 5 }) end,
      "layer2.open: delegate must be a function(method, ...)")
    rmdir(dir)
    rmdir(dir .. "-l2")
  end)

  it("query_frames gives query_events' answer as websocket frames, in one string, from either level and through a"
    .. " delegate", function()
    local dir = tmpdir()
    local store = assert(layer2.lmdb.open(dir .. "-l2", { nosync = true }))
    local direct = assert(layer2.open(dir, { l2 = store, nosync = true, log = quiet }))
    local delegated = {}
    local db = assert(layer2.open(dir, { l2 = store, nosync = true, log = quiet, delegate = function(method, ...)
      delegated[#delegated + 1] = method
      return direct[method](direct, ...)
    end }))
    local sec = ("0"):rep(63) .. "7"
    local evs = { layer2.event.sign({ kind = 1, created_at = NOW - 5, tags = {}, content = ("y"):rep(70000) }, sec) }
    for i = 2, 40 do
      evs[i] = layer2.event.sign({ kind = 1, created_at = NOW - 10 - i, tags = { { "t", "x" } },
        content = "note " .. i }, sec)
    end
    assert(direct:save_events(evs, { now = NOW }))
    local prefix = '["EVENT","sub \"1\"",'
    local function same_as_query(handle, f, why)
      local frames, n, levels = handle:query_frames(f, prefix, { now = NOW })
      assert.is_string(frames, why)
      local want = assert(handle:query_events(f, { json = true, now = NOW }))
      local got = helper.ws_frames(frames)
      assert.equal(#want, n, why)
      assert.equal(#want, #got, why)
      for i, json in ipairs(want) do assert.equal(prefix .. json .. "]", got[i], why) end
      return n, levels
    end
    -- L1 proves it: one frame of each size form, in the answer's order
    local n, levels = same_as_query(direct, { kinds = { 1 }, limit = 20 }, "from L1")
    assert.same({ 20, 20 }, { n, levels.l1 })
    same_as_query(direct, { ids = { evs[1].id } }, "a frame of more than 65,535 bytes")
    -- L2 answers what L1 no longer holds
    assert.equal(3, db.l1:evict({ evs[2].id, evs[3].id, evs[4].id }, "delete"))
    local _, l2_levels = same_as_query(direct, { ids = { evs[2].id, evs[3].id, evs[5].id } }, "from L2")
    assert(l2_levels.l2 > 0, "L2 answered")
    -- a delegating handle: what L1 proves here, the rest by its delegate, the same frames
    assert.equal(1, db.l1:evict({ evs[6].id }, "delete"))
    same_as_query(db, { ids = { evs[10].id, evs[11].id } }, "delegating, from L1")
    assert.same({}, delegated)
    same_as_query(db, { ids = { evs[6].id } }, "delegating, by its delegate")
    -- the delegate's answer filled L1 (no size limit: admitted at once), so query_events is L1's
    assert.same({ "query_frames" }, delegated)
    -- nothing matches: no frame
    local none, count = direct:query_frames({ kinds = { 7 } }, prefix)
    assert.same({ "", 0 }, { none, count })
    -- bad input
    assert.same({ nil, "invalid: unknown filter field 'knds'" }, { direct:query_frames({ knds = { 1 } }, prefix) })
    assert.has_error(function() direct:query_frames({}, prefix, { json = true }) end)
    assert.has_error(function() direct:query_frames({}) end)
    direct:close()
    assert.has_error(function() direct:query_frames({}, prefix) end, "layer2: attempt to use a closed store")
    db:close()
    store:close()
    rmdir(dir)
    rmdir(dir .. "-l2")
  end)

  it("verifies every event it saves, unless its caller says it has (verify = false), and never a malformed one",
    function()
    local db, done = two_levels()
    local sec = ("0"):rep(63) .. "9"
    local function tampered(content)
      local ev = layer2.event.sign({ kind = 1, created_at = NOW, tags = {}, content = "signed" }, sec)
      ev.content = content -- the id and the signature are the signed event's
      return ev
    end
    local ok, err = db:save_event(tampered("a"), { now = NOW })
    assert.is_false(ok)
    assert.matches("^invalid: bad event id", err)
    assert.matches("^invalid: bad event id", db:save_events({ tampered("b") }, { now = NOW })[1])
    assert.equal(0, db:count_events({}))
    -- a relay that verified it (layer2.relay, for its policy) says so: not checked again
    assert.is_true(db:save_event(tampered("c"), { now = NOW, verify = false }))
    local second = layer2.event.sign({ kind = 1, created_at = NOW, tags = {}, content = "d" }, sec)
    assert.same({ true }, db:save_events({ second }, { now = NOW, verify = false }))
    -- a malformed id is refused whatever the caller says
    local malformed = tampered("e")
    malformed.id = "zz"
    assert.is_false((db:save_event(malformed, { now = NOW, verify = false })))
    assert.is_string(db:save_events({ malformed }, { now = NOW, verify = false })[1])
    assert.equal(2, db:count_events({}))
    done()
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
    for _, admit in ipairs({ "sometimes", true, 2 }) do
      assert.has_error(function() layer2.open("/tmp/x", { l1 = { admit = admit } }) end,
        'layer2.open: l1.admit is "second", "always" or "never"')
    end
    -- a misspelled option raises and names the nearest known one; so do the stores' and resty's
    assert.has_error(function() layer2.open("/tmp/x", { l1 = { size_limt = 1024 * 1024 }, policy = "lfu" }) end,
      "layer2.open: l1: unknown option 'size_limt' (did you mean 'size_limit'?)")
    assert.has_error(function() layer2.open("/tmp/x", { polcy = "lfu" }) end,
      "layer2.open: unknown option 'polcy' (did you mean 'policy'?)")
    assert.has_error(function() layer2.open("/tmp/x", { colour = "red" }) end, "layer2.open: unknown option 'colour'")
    assert.has_error(function() layer2.open("/tmp/x", { "lfu" }) end,
      "layer2.open: an option's name is a string, not a number")
    assert.has_error(function() layer2.open("/tmp/x", { l1 = 5 }) end, "layer2.open: l1 must be a table of options")
    assert.has_error(function() layer2.lmdb.open("/tmp/x", { nosink = true }) end,
      "layer2.lmdb.open: unknown option 'nosink' (did you mean 'nosync'?)")
    assert.has_error(function() layer2.postgres.open("dbname=x", { max_limt = 5 }) end,
      "layer2.postgres.open: unknown option 'max_limt' (did you mean 'max_limit'?)")
    assert.is_nil(io.open("/tmp/x"), "nothing was made for bad options")
    -- every method's options, on the two-level handle and on each store: a misspelling raises,
    -- names the method, and nothing is stored
    local mdir = tmpdir()
    local store = assert(layer2.open(mdir, { nosync = true }))
    local ev = layer2.event.sign({ kind = 1, created_at = 100, tags = {}, content = "x" }, ("0"):rep(63) .. "3")
    local calls = {
      { "save_event", { ev, { verfy = false } }, "save_event: unknown option 'verfy' (did you mean 'verify'?)" },
      { "save_events", { { ev }, { treads = 2 } }, "save_events: unknown option 'treads' (did you mean 'threads'?)" },
      { "query_events", { { {} }, { jsno = true } }, "query_events: unknown option 'jsno' (did you mean 'json'?)" },
      { "count_events", { { {} }, { nw = 1 } }, "count_events: unknown option 'nw' (did you mean 'now'?)" },
      { "negentropy_items", { { {} }, { mx = 5 } }, "negentropy_items: unknown option 'mx' (did you mean 'max'?)" },
      { "import", { function() return nil end, { progres = print } },
        "import: unknown option 'progres' (did you mean 'progress'?)" },
      { "export", { function() end, nil, { progess = print } },
        "export: unknown option 'progess' (did you mean 'progress'?)" },
      { "changes_since", { 0, 10, { jason = true } }, "changes_since: unknown option 'jason' (did you mean 'json'?)" },
    }
    for _, handle in ipairs({ store, store.l1, store.l2 }) do
      for _, c in ipairs(calls) do
        local method, args, says = c[1], c[2], c[3]
        local ok, err = pcall(handle[method], handle, table.unpack(args, 1, 3))
        assert.is_false(ok, method)
        assert.matches("layer2: " .. says:gsub("%p", "%%%0") .. "$", err)
      end
    end
    assert.has_error(function() store:query_events({ {} }, 5) end)
    assert.has_error(function() store.l1:delete_event(ev.id, false, { outbx = true }) end)
    assert.has_error(function() store.l2:copy(mdir .. "/copy", { compct = false }) end)
    assert.equal(0, store.l2:count_events({}))
    store:close()
    rmdir(mdir)
    local dir = tmpdir()
    assert.has_error(function() layer2.open(dir, { l2 = {} }) end, "layer2: opts.l2 has no save_event method")
    assert.is_nil(io.open(dir), "nothing was made for a bad L2")
    local db, err = layer2.open("/proc/version/x")
    assert.is_nil(db)
    assert.matches("^error: ", err)
  end)
end)
