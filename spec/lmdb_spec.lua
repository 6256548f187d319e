-- The LMDB store, one rule at a time.
local layer2 = require("layer2")
local helper = require("spec.helper")

local event = layer2.event
local A = ("0"):rep(63) .. "a" -- secret keys
local B = ("0"):rep(63) .. "b"
local PA, PB = layer2.schnorr.pubkey(A), layer2.schnorr.pubkey(B)
local T = 1700000000

local tmpdir = helper.tmpdir

local rmdir = helper.rmdir

local function sign(sec, kind, created_at, tags, content)
  return assert(event.sign({ kind = kind, created_at = created_at, tags = tags or {}, content = content or "" }, sec))
end

local ids = helper.ids

local dir, db
local function fresh()
  if db then db:close() end
  if dir then rmdir(dir) end
  dir = tmpdir()
  db = assert(layer2.lmdb.open(dir, { nosync = true }))
  return db
end

local function saved(ev, opts)
  local ok, msg = db:save_event(ev, opts)
  assert(ok, msg)
end

local function saved_in(store, ev)
  local ok, msg = store:save_event(ev)
  assert(ok, msg)
end

local function refused(ev, prefix, opts)
  local ok, msg = db:save_event(ev, opts)
  assert.is_false(ok)
  assert.matches("^" .. prefix, msg)
  return msg
end

local function clean()
  local ok, problems = db:check()
  assert(ok, table.concat(problems, "\n"))
end

describe("lmdb store", function()
  before_each(fresh)
  teardown(function()
    db:close()
    rmdir(dir)
  end)

  helper.with_real(pending, "the peer suite's 14 events", function(real)
  it("the peer suite's 14 events: the rules' verdicts, and the queries after them", function()
    local lines = helper.lines(real.peer)
    local evs = {}
    -- 8 and 12 are deletions by the wrong author: refused (NIP-09 strictly), the others stored
    for i, line in ipairs(lines) do
      evs[i] = event.parse(line)
      if i == 8 or i == 12 then refused(line, "invalid: a deletion request may only") else saved(line) end
    end
    -- 3 was replaced by 7; 4 deleted by 9 (`a`); 10 replaced by 11; 11 deleted by 13 (`e`)
    local want = {}
    for i, n in ipairs({ 14, 13, 9, 7, 6, 5, 2, 1 }) do want[i] = evs[n].id end
    assert.same(want, ids(db:query_events({})))
    local PA2 = evs[1].pubkey
    assert.same({ evs[7].id }, ids(db:query_events({ kinds = { 32122 }, authors = { PA2 } })))
    assert.same({}, db:query_events({ kinds = { 0 } }))
    assert.same({ evs[14].id }, ids(db:query_events({ ["#p"] = { PA2 } })))
    assert.same({ evs[7].id, evs[6].id, evs[2].id }, ids(db:query_events({ ["#d"] = { "id-1" } })))
    assert.equal(8, db:count_events({}))
    refused(lines[3], "duplicate:") -- an older version of the slot 7 holds
    refused(lines[4], "blocked:")   -- deleted through its address
    refused(lines[11], "blocked:")  -- deleted by id
    refused(lines[1], "duplicate:")
    clean()
  end)
  end)

  it("NIP-09 strictly: refuses a deletion of only other authors' events, or of another pubkey's address", function()
    require("spec.nip09")(function() return db end, assert)
    clean()
  end)

  it("a store made again where one was deleted while still open is a new store, not the old one", function()
    local path = tmpdir()
    local old = assert(layer2.lmdb.open(path, { nosync = true }))
    saved_in(old, sign(A, 1, T, {}, "in the old store"))
    -- its files go (its directory stays: the same inode, as a deleted one's number is often reused)
    os.remove(path .. "/data.mdb")
    os.remove(path .. "/lock.mdb")
    local new = assert(layer2.lmdb.open(path, { nosync = true }))
    assert.equal(0, new:count_events({}))
    assert.equal(1, old:count_events({}))
    new:close()
    old:close()
    rmdir(path)
  end)

  it("duplicates are refused", function()
    local ev = sign(A, 1, T)
    saved(ev)
    assert.equal("duplicate: already have this event", refused(ev, "duplicate:"))
    refused(event.encode(ev), "duplicate:")
    assert.equal(1, db:count_events({}))
  end)

  it("replaceable: newer wins, an older one arriving later is refused", function()
    local old, new = sign(A, 0, T, {}, "old"), sign(A, 0, T + 1, {}, "new")
    saved(old)
    saved(new)
    assert.same({ new.id }, ids(db:query_events({ kinds = { 0 } })))
    assert.equal("duplicate: a newer version of this replaceable event is stored", refused(old, "duplicate:"))
    -- another kind and another author keep their own slots
    saved(sign(A, 3, T))
    saved(sign(B, 0, T))
    saved(sign(A, 10002, T))
    assert.equal(4, db:count_events({}))
    clean()
  end)

  it("replaceable ties go to the lower id, in both arrival orders", function()
    local x, y = sign(A, 10000, T, {}, "x"), sign(A, 10000, T, {}, "y")
    local low, high = x, y
    if y.id < x.id then low, high = y, x end
    saved(high)
    saved(low)
    assert.same({ low.id }, ids(db:query_events({ kinds = { 10000 } })))
    fresh()
    saved(low)
    refused(high, "duplicate:")
    assert.same({ low.id }, ids(db:query_events({ kinds = { 10000 } })))
    clean()
  end)

  it("addressable: one per pubkey, kind and d; a missing d is the empty d", function()
    saved(sign(A, 30023, T, { { "d", "a" } }, "a1"))
    local a2 = sign(A, 30023, T + 1, { { "d", "a" } }, "a2")
    saved(a2)
    local none = sign(A, 30023, T)
    saved(none)
    local empty = sign(A, 30023, T + 1, { { "d", "" } })
    saved(empty) -- replaces the one without a d tag
    saved(sign(B, 30023, T, { { "d", "a" } }))
    local got = ids(db:query_events({ kinds = { 30023 }, authors = { PA } }))
    table.sort(got)
    local want = { a2.id, empty.id }
    table.sort(want)
    assert.same(want, got)
    refused(none, "duplicate:")
    clean()
  end)

  it("ephemeral events are accepted and never stored", function()
    local ev = sign(A, 20001, T)
    assert.is_true(db:save_event(ev))
    assert.same({}, db:query_events({}))
    assert.equal(0, db:stats().events)
  end)

  it("NIP-09 `e`: the author's own events only; a deletion of a deletion does nothing", function()
    local mine, theirs = sign(A, 1, T, {}, "mine"), sign(B, 1, T, {}, "theirs")
    saved(mine)
    saved(theirs)
    local del = sign(A, 5, T + 5, { { "e", mine.id }, { "e", theirs.id } })
    saved(del)
    assert.same({ del.id, theirs.id }, ids(db:query_events({})))
    refused(mine, "blocked:")
    saved(sign(A, 5, T + 6, { { "e", del.id } })) -- deleting a deletion: stored, no effect
    assert.equal(3, db:count_events({}))
    assert.same({ del.id }, ids(db:query_events({ ids = { del.id } })))
    clean()
  end)

  it("NIP-09: a deletion that arrives before its target stops it", function()
    local target = sign(A, 1, T, {}, "later")
    saved(sign(A, 5, T + 1, { { "e", target.id } }))
    refused(target, "blocked:")
    -- it does not stop another author's event with that id... which cannot exist; nor others' events
    saved(sign(B, 1, T))
  end)

  it("NIP-09 `a`: deletes versions up to its created_at; newer versions come back", function()
    local v1 = sign(A, 30023, T, { { "d", "x" } })
    saved(v1)
    saved(sign(A, 5, T + 10, { { "a", "30023:" .. PA .. ":x" } }))
    assert.same({}, db:query_events({ kinds = { 30023 } }))
    refused(sign(A, 30023, T + 10, { { "d", "x" } }), "blocked:") -- at the cutoff
    local v3 = sign(A, 30023, T + 11, { { "d", "x" } })
    saved(v3)
    assert.same({ v3.id }, ids(db:query_events({ kinds = { 30023 } })))
    -- a replaceable kind through `a` (kind:pubkey:), and another author's `a` is refused
    local p0 = sign(A, 0, T)
    saved(p0)
    refused(sign(B, 5, T + 20, { { "a", "0:" .. PA .. ":" } }), "invalid: a deletion request may only name")
    assert.same({ p0.id }, ids(db:query_events({ kinds = { 0 } })))
    saved(sign(A, 5, T + 20, { { "a", "0:" .. PA .. ":" } }))
    assert.same({}, db:query_events({ kinds = { 0 } }))
    refused(sign(A, 0, T + 19), "blocked:")
    saved(sign(A, 0, T + 21))
    clean()
  end)

  it("delete_event with and without a tombstone", function()
    local a, b = sign(A, 1, T, {}, "a"), sign(A, 1, T, {}, "b")
    saved(a)
    saved(b)
    assert.is_true(db:delete_event(a.id))
    refused(a, "blocked:")
    assert.is_true(db:delete_event(b.id, true))
    saved(b) -- no tombstone: it may come back
    local ok, msg = db:delete_event(("0"):rep(64))
    assert.is_false(ok)
    assert.equal("not found: no stored event has this id", msg)
    ok, msg = db:delete_event("xyz")
    assert.is_false(ok)
    assert.equal("invalid: id must be 64 lowercase hex characters", msg)
    clean()
  end)

  it("NIP-40: expired on arrival refused, expired never returned, swept", function()
    local soon = sign(A, 1, T, { { "expiration", tostring(T + 100) } })
    local gone = sign(A, 1, T, { { "expiration", tostring(T - 1) } })
    local bad = sign(A, 1, T, { { "expiration", "soon" } }) -- malformed: no expiration
    saved(soon, { now = T })
    assert.equal("invalid: this event has expired", refused(gone, "invalid:", { now = T }))
    saved(bad, { now = T })
    assert.equal(2, #db:query_events({}, { now = T + 99 }))
    assert.same({ bad.id }, ids(db:query_events({}, { now = T + 100 })))
    assert.equal(1, db:count_events({}, { now = T + 100 }))
    assert.equal(0, db:sweep(T + 99))
    assert.equal(1, db:sweep(T + 100))
    assert.equal(1, db:stats().events)
    clean()
  end)

  it("since/until inclusive, newest first with ties by lower id, limit and max_limit", function()
    local evs = {}
    for i = 1, 12 do evs[i] = sign(A, 1, T + (i % 4), {}, "n" .. i) end
    for _, ev in ipairs(evs) do saved(ev) end
    local all = db:query_events({})
    for i = 2, #all do
      local p, q = all[i - 1], all[i]
      assert(p.created_at > q.created_at or (p.created_at == q.created_at and p.id < q.id))
    end
    assert.equal(6, #db:query_events({ since = T + 2, ["until"] = T + 3 }))
    assert.same({}, db:query_events({ limit = 0 }))
    assert.same({ all[1].id, all[2].id, all[3].id, all[4].id }, ids(db:query_events({ limit = 4 })))
    assert.same({ all[1].id, all[2].id }, ids(db:query_events({ limit = 3 }, { max_limit = 2 })))
    assert.same({ all[1].id }, ids(db:query_events({ limit = 1, kinds = { 1 } })))
    assert.same({}, db:query_events({ since = T + 3, ["until"] = T + 2 }))
    -- a REQ: union without duplicates, each filter's limit
    local got = ids(db:query_events({ { limit = 1 }, { limit = 2 }, { ids = { all[12].id } } }))
    assert.same({ all[1].id, all[2].id, all[12].id }, got)
  end)

  it("refuses absurd and unsupported filters with a message", function()
    local function bad(f, pattern)
      local r, err = db:query_events(f)
      assert.is_nil(r)
      assert.matches(pattern, err)
      local n, err2 = db:count_events(f)
      assert.is_nil(n)
      assert.matches(pattern, err2)
    end
    local many = {}
    for i = 1, 1001 do many[i] = ("%064x"):format(i) end
    bad({ ids = many }, "^invalid: ids has more than 1000 entries")
    bad({ authors = many }, "^invalid: authors has more than 1000")
    bad({ ids = { "abcd" } }, "^invalid: ids%[0%] must be 64 lowercase hex")
    bad({ ["#ab"] = { "x" } }, "^invalid: tag filter '#ab'")
    bad({ search = "x" }, "^unsupported: search")
    bad({ { kinds = { 1 } }, 5 }, "^invalid: filter 2 must be a table")
    bad('[{"kinds":[1]},{"kinds":["x"]}]', "^invalid: kinds%[0%] must be a number")
    local lots = {}
    for i = 1, 501 do lots[i] = { kinds = { 1 } } end
    bad(lots, "^invalid: more than 500 filters")
    assert.has_error(function() db:query_events(5) end)
  end)

  it("answers 100 filters in one call", function()
    for i = 1, 30 do saved(sign(A, i, T + i)) end
    local req = {}
    for i = 1, 100 do req[i] = { kinds = { i } } end
    assert.equal(30, #db:query_events(req))
    local jreq = require("cjson").encode(req)
    assert.equal(30, #db:query_events(jreq, { json = true }))
  end)

  it("JSON mode returns the wire JSON of each event", function()
    local ev = sign(A, 1, T, { { "t", "x" } }, "json \"mode\"\n")
    saved(ev)
    local got = db:query_events({ ids = { ev.id } }, { json = true })
    assert.equal(event.encode(ev), got[1])
  end)

  it("JSON mode gives every stored element as the event's own wire JSON, byte for byte, in a store and a cache",
    function()
      local hex = ("0123456789abcdef"):rep(4)
      local odd = {
        sign(A, 1, T, { { "e", hex }, { "p", PB, "wss://r.example", "mention" }, { "a", "30023:" .. PA .. ":d" } },
          "plain"),
        -- hex strings that are not packed: upper case, 63 and 65 digits, and one in a tag's name place
        sign(A, 1, T + 1, { { "e", hex:upper() }, { "x", hex:sub(2) }, { "y", hex .. "0" }, { hex, "v" } }, ""),
        sign(A, 1, T + 2, { {}, { "t" }, { "t", "" }, { "emoji", "\u{1F600}", "caf\u{E9}" } },
          'quotes " and \\ back\tslash\nnew line \1\31 controls, \u{2028} and \u{10FFFF}'),
        sign(B, 30023, T + 3, { { "d", "a \"title\"" }, { "expiration", ("%d"):format(os.time() + 1e6) } }, ("x"):rep(70000)),
      }
      local g = require("layer2.gen").new({ seed = 19, authors = 20 })
      local all = {}
      for _, e in ipairs(odd) do all[#all + 1] = e end
      -- regular events only: no later version or deletion takes one away
      while #all < 300 do
        local e = g:next()
        if e.kind < 10000 and e.kind ~= 0 and e.kind ~= 3 and e.kind ~= 5 then all[#all + 1] = e end
      end
      local cdir = tmpdir()
      local cache = assert(layer2.lmdb.open(cdir, { cache = true, nosync = true }))
      for _, store in ipairs({ db, cache }) do
        for i, v in ipairs(assert(store:save_events(all, { verify = false }))) do assert.equal(true, v, i) end
        for _, e in ipairs(all) do
          local got = store:query_events({ ids = { e.id } }, { json = true })
          assert.equal(1, #got, e.id)
          assert.equal(event.encode(e), got[1])
        end
        -- and in a scan's answer (hits read from an index, not by id)
        local byid = {}
        for _, j in ipairs(store:query_events({ authors = { PA } }, { json = true, max_limit = 100000 })) do
          byid[event.parse(j).id] = j
        end
        for _, e in ipairs(odd) do
          if e.pubkey == PA then assert.equal(event.encode(e), byid[e.id]) end
        end
      end
      cache:close()
      rmdir(cdir)
    end)

  helper.each_corpus(pending, "JSON mode over a corpus", function(c)
    it("JSON mode gives every stored event of the " .. c.name .. " corpus as its own wire JSON, in a store and a "
      .. "cache", function()
      local cdir = tmpdir()
      for _, opts in ipairs({ { nosync = true }, { nosync = true, cache = true } }) do
        local store = assert(layer2.lmdb.open(cdir .. (opts.cache and "/cache" or "/store"), opts))
        local compared = 0
        for _, line in ipairs(helper.lines(c.valid)) do
          local ev = event.parse(line)
          -- what a later version or a deletion took away is not asked for
          if ev and store:save_event(line, { verify = false }) then
            local got = store:query_events({ ids = { ev.id } }, { json = true })
            if #got == 1 then
              assert.equal(event.encode(ev), got[1])
              compared = compared + 1
            end
          end
        end
        assert(compared > #helper.lines(c.valid) * 0.9, compared)
        store:close()
      end
      rmdir(cdir)
    end)
  end)

  it("bad inputs get a message and change nothing", function()
    local good = sign(A, 1, T, {}, "keep")
    saved(good)
    local before = db:stats()
    local function nothing_changed()
      local after = db:stats()
      assert.equal(before.events, after.events)
      assert.equal(before.last_seq, after.last_seq)
      clean()
    end
    refused("{", "invalid: malformed JSON")
    refused('{"id":1}', "invalid: id must be a string")
    local tampered = sign(A, 1, T, {}, "x")
    tampered.content = "y"
    refused(tampered, "invalid: bad event id")
    local badsig = sign(A, 1, T, {}, "z")
    badsig.sig = ("0"):rep(128)
    refused(badsig, "invalid: bad signature")
    refused(event.encode(good):gsub('"content":"keep"', '"content":"' .. ("x"):rep(300000) .. '"'),
      "invalid: event is %d+ bytes, over the limit")
    assert.has_error(function() db:save_event(42) end)
    assert.has_error(function() db:delete_event({}) end)
    assert.has_error(function() db:changes_since("x") end)
    assert.has_error(function() db:sweep("soon") end)
    local r, err = db:import("/nonexistent/file.jsonl")
    assert.is_nil(r)
    assert.matches("^error: cannot open '/nonexistent/file.jsonl'", err)
    r, err = db:export("/nonexistent/dir/out.jsonl")
    assert.is_nil(r)
    assert.matches("^error: cannot write", err)
    r, err = db:export(function() end, { "nothex" })
    assert.is_nil(r)
    assert.matches("^invalid: pubkeys%[1%]", err)
    nothing_changed()
  end)

  it("close is idempotent; any use after it raises a clear error", function()
    local ev = sign(A, 1, T)
    saved(ev)
    db:close()
    db:close()
    assert.is_true(db:is_closed())
    assert.has_error(function() db:save_event(ev) end, "layer2: attempt to use a closed store")
    assert.has_error(function() db:query_events({}) end, "layer2: attempt to use a closed store")
    assert.matches("closed", tostring(db))
    db = assert(layer2.lmdb.open(dir))
    assert.equal(1, db:count_events({}))
  end)

  if _VERSION == "Lua 5.4" then
    it("closes at the end of a <close> scope", function()
      local chunk = assert(load([[
        local layer2, dir = ...
        local handle
        do
          local s <close> = assert(layer2.lmdb.open(dir))
          handle = s
        end
        return handle:is_closed()
      ]]))
      assert.is_true(chunk(layer2, dir))
    end)
  end

  it("persists: close, reopen, same answers; a second handle on the same path shares it", function()
    for i = 1, 50 do saved(sign(i % 2 == 0 and A or B, i % 3, T + i, { { "t", "n" .. (i % 5) } }, "p" .. i)) end
    local filters = { {}, { kinds = { 1 } }, { authors = { PB }, limit = 7 }, { ["#t"] = { "n1", "n2" } } }
    local before = {}
    for i, f in ipairs(filters) do before[i] = ids(db:query_events(f)) end
    local other = assert(layer2.lmdb.open(dir))
    assert.same(before[2], ids(other:query_events(filters[2])))
    other:close()
    db:close()
    db = assert(layer2.lmdb.open(dir))
    for i, f in ipairs(filters) do assert.same(before[i], ids(db:query_events(f))) end
    clean()
  end)

  helper.each_corpus(pending, "import and export", function(c)
  it("import from a path, a handle and a function; reports refused lines; export streams back (" .. c.name
    .. " events)", function()
    local path = c.invalid
    local refusals, progress = {}, 0
    local counts = assert(db:import(path, {
      on_refused = function(line, msg) refusals[#refusals + 1] = { line, msg } end,
      progress = function(n) progress = n end,
    }))
    assert.equal(c.counts.invalid, counts.invalid)
    assert.equal(c.counts.invalid, #refusals)
    assert.equal(c.counts.invalid, progress)
    assert.equal(1, refusals[1][1])
    assert.matches("^invalid: ", refusals[1][2])
    assert.equal(0, db:count_events({}))
    local lines = helper.lines(c.valid)
    local fh = assert(io.open(c.valid))
    counts = assert(db:import(fh, { batch = 1000, now = 1800000000 }))
    fh:close()
    assert.equal(#lines, counts.lines)
    assert.equal(#lines, counts.saved + counts.duplicate + counts.invalid + counts.blocked + counts.ephemeral)
    local n = db:count_events({}, { now = 1800000000 })
    -- export -> import into a fresh store: the same events
    local out = os.tmpname()
    assert.equal(db:stats().events, db:export(out))
    local copy_dir = tmpdir()
    local copy = assert(layer2.lmdb.open(copy_dir))
    local c2 = assert(copy:import(out, { verify = false, now = 1 }))
    assert.equal(db:stats().events, c2.saved)
    local a = db:query_events({}, { max_limit = 100000, now = 1 })
    local b = copy:query_events({}, { max_limit = 100000, now = 1 })
    assert.same(ids(a), ids(b))
    assert(n <= #a)
    -- export by pubkeys: their events and the events that tag them
    local pk = a[1].pubkey
    local picked = {}
    assert(db:export(function(line) picked[#picked + 1] = event.parse(line) end, { pk }))
    assert(#picked > 0)
    for _, ev in ipairs(picked) do
      local tagged = false
      for _, t in ipairs(ev.tags) do tagged = tagged or (t[1] == "p" and t[2] == pk) end
      assert(ev.pubkey == pk or tagged)
    end
    copy:close()
    rmdir(copy_dir)
    os.remove(out)
    clean()
  end)
  end)

  it("import checks the next batch while it saves one: every batch reported in order; a source that fails ends it "
    .. "after every line it gave is saved", function()
    -- 50 lines, batches of 7: every fifth line is refused (its id is wrong)
    local lines, valid = {}, 0
    for i = 1, 50 do
      local line = event.encode(sign(A, 1, T + i, {}, "n" .. i))
      if i % 5 == 0 then line = line:gsub('"id":"%x', '"id":"z') else valid = valid + 1 end
      lines[i] = line
    end
    local function source(upto, fail)
      local k = 0
      return function()
        k = k + 1
        if k == upto then return fail() end
        return lines[k]
      end
    end
    local reported, refusals = {}, {}
    local c = assert(db:import(source(51, function() return nil end), {
      batch = 7,
      progress = function(n) reported[#reported + 1] = n end,
      on_refused = function(line) refusals[#refusals + 1] = line end,
    }))
    assert.same({ 7, 14, 21, 28, 35, 42, 49, 50 }, reported)
    assert.same({ 5, 10, 15, 20, 25, 30, 35, 40, 45, 50 }, refusals)
    assert.equal(valid, c.saved)
    assert.equal(valid, db:count_events({}))
    -- a source that raises at line 30: lines 1 to 29 are saved (four batches and a part), then
    -- its error is raised
    fresh()
    local ok, err = pcall(db.import, db, source(30, function() error("the source broke") end), { batch = 7 })
    assert.is_false(ok)
    assert.matches("the source broke", err)
    assert.equal(29 - 5, db:count_events({}))
    -- one that returns something other than a line at line 12: lines 1 to 11
    fresh()
    ok, err = pcall(db.import, db, source(12, function() return {} end), { batch = 7 })
    assert.is_false(ok)
    assert.matches("the import source returned a table, not a line", err, 1, true)
    assert.equal(11 - 2, db:count_events({}))
    assert.is_true(db:check())
    -- a callback that raises stops the import at once: what was saved before stays, indexed
    fresh()
    ok, err = pcall(db.import, db, source(51, function() return nil end), { batch = 7,
      progress = function(n) if n == 14 then error("enough at " .. n) end end })
    assert.is_false(ok)
    assert.matches("enough at 14", err)
    assert.equal(14 - 2, db:count_events({}))
    assert.is_true(db:check())
    fresh()
    ok, err = pcall(db.import, db, source(51, function() return nil end), { batch = 7,
      on_refused = function(line) error("refused line " .. line) end })
    assert.is_false(ok)
    assert.matches("refused line 5", err)
    assert.equal(7 - 1, db:count_events({}))
    assert.is_true(db:check())
  end)

  it("import without verification takes trusted dumps as they are", function()
    local ev = sign(A, 1, T)
    local forged = event.encode(ev):gsub('"sig":"%x+"', '"sig":"' .. ("0"):rep(128) .. '"')
    local k = 0
    local c = assert(db:import(function()
      k = k + 1
      return k == 1 and forged or nil
    end, { verify = false }))
    assert.equal(1, c.saved)
    fresh()
    k = 0
    c = assert(db:import(function()
      k = k + 1
      return k == 1 and forged or nil
    end))
    assert.equal(1, c.invalid)
  end)

  it("the change feed: saved, replaced, deleted, in commit order, from any cursor", function()
    local p1, p2 = sign(A, 0, T), sign(A, 0, T + 1)
    local note = sign(A, 1, T)
    saved(p1)
    saved(p2)
    saved(note)
    db:delete_event(note.id)
    local ch, cursor = db:changes_since(0)
    local ops = {}
    for i, c in ipairs(ch) do ops[i] = c.op .. ":" .. (c.id or "gone") end
    -- a save whose event is gone since carries no id: the later change names it
    assert.same({ "saved:gone", "replaced:" .. p1.id, "saved:" .. p2.id, "saved:gone", "deleted:" .. note.id }, ops)
    assert.equal(p2.id, ch[3].event.id)
    assert.is_nil(ch[1].event) -- no longer stored
    local more, c2 = db:changes_since(cursor)
    assert.same({}, more)
    assert.equal(cursor, c2)
    local two = db:changes_since(1, 2, { json = true })
    assert.equal(2, #two)
    assert.equal(event.encode(p2), two[2].event)
  end)

  it("nuke empties the store and keeps it usable", function()
    for i = 1, 10 do saved(sign(A, 1, T + i)) end
    assert.is_true(db:nuke())
    assert.equal(0, db:count_events({}))
    assert.equal(0, db:stats().events)
    saved(sign(A, 1, T + 1)) -- tombstones and heads went too
    assert.equal(1, db:count_events({}))
    clean()
  end)

  it("a cache counts each event's reads between two writes, however many events and reads, and writes them with "
    .. "the next write", function()
    local cdir = tmpdir()
    local cache = assert(layer2.lmdb.open(cdir, { cache = true, nosync = true }))
    local g = require("layer2.gen").new({ seed = 3, authors = 5, count = 1000 })
    local evs = {}
    for i = 1, 700 do
      local e = g:next()
      e.kind, e.tags = 1, {}
      evs[i] = layer2.event.sign(e, g.keys[1])
    end
    assert(cache:save_events(evs, { verify = false }))
    -- three rounds of lookups, seven ids each: a third of the events read once, a third twice, a
    -- third three times, interleaved (more events than the count table starts with)
    local want = {}
    for round = 1, 3 do
      for i = 1, 700, 7 do
        local asked = {}
        for k = i, math.min(i + 6, 700) do
          if k % 3 >= round - 1 then
            asked[#asked + 1] = evs[k].id
            want[evs[k].id] = (want[evs[k].id] or 0) + 1
          end
        end
        assert.equal(#asked, #cache:query_events({ ids = asked }))
      end
    end
    local e = g:next()
    e.kind = 1
    assert(cache:save_event(layer2.event.sign(e, g.keys[2]), { verify = false }))
    local got = {}
    for _, c in ipairs(cache:candidates(100000)) do
      if want[c.id] then got[c.id] = c.hits end
    end
    assert.same(want, got)
    cache:close()
    helper.rmdir(cdir)
  end)

  it("repack rewrites a cache's half-empty trees: the same events, stubs and answers in fewer bytes", function()
    local cdir = tmpdir()
    local cache = assert(layer2.lmdb.open(cdir, { cache = true, nosync = true }))
    local g = require("layer2.gen").new({ seed = 41, authors = 50 })
    local evs = {}
    for i = 1, 6000 do evs[i] = g:next() end
    assert(cache:save_events(evs, { verify = false }))
    -- a cache's churn: a third of the events lose their body, another third go
    local all, stub, gone = cache:query_events({}, { max_limit = 100000 }), {}, {}
    for i = 1, #all, 3 do stub[#stub + 1] = all[i].id end
    for i = 2, #all, 3 do gone[#gone + 1] = all[i].id end
    assert(cache:evict(stub, "stub") == #stub and cache:evict(gone, "delete") == #gone)
    local pk, some = evs[7].pubkey, { table.unpack(stub, 1, 900) }
    local function answers()
      local out = {}
      for _, f in ipairs({ {}, { kinds = { 1 } }, { authors = { pk } }, { ["#t"] = { "nostr" } }, { ids = some } }) do
        out[#out + 1] = assert(cache:query_events(f, { json = true, max_limit = 100000 }))
      end
      local st = cache:stats()
      out[#out + 1] = { st.events, st.stubs, cache:count_events({}) }
      return out, st.used_bytes
    end
    local before, used_before = answers()
    local freed = cache:repack()
    assert.is_true(freed > 0)
    local after, used_after = answers()
    assert.same(before, after)
    assert.is_true(used_after < used_before, ("used bytes %d then %d"):format(used_before, used_after))
    local ok, problems = cache:check()
    assert(ok, table.concat(problems or {}, "\n"))
    assert.equal(0, cache:repack()) -- full enough now: nothing to rewrite
    -- the index trees were rewritten with room in each page, which later inserts take: little to
    -- give back after 500 more events (packed full, nearly every page they touched would split)
    local more = {}
    while #more < 500 do
      local ev = g:next()
      if ev.kind == 1 then more[#more + 1] = ev end -- notes: they replace and delete nothing
    end
    assert(cache:save_events(more, { verify = false }))
    local again = cache:repack()
    assert.is_true(again < freed / 20, ("repacked %d bytes, then %d"):format(freed, again))
    -- and the cache goes on: evictions, revivals and saves after repacking
    local byid, back = {}, {}
    for _, ev in ipairs(evs) do byid[ev.id] = ev end
    for _, id in ipairs(stub) do back[#back + 1] = byid[id] end
    assert.equal(#stub, cache:revive(back))
    assert.equal(#some, #assert(cache:query_events({ ids = some }, { max_limit = 100000 })))
    for i = 1, 500 do more[i] = g:next() end
    assert(cache:save_events(more, { verify = false }))
    ok, problems = cache:check()
    assert(ok, table.concat(problems or {}, "\n"))
    for _, bad in ipairs({ 0, 101, "x" }) do
      local ok2, err = pcall(cache.repack, cache, bad)
      assert.is_false(ok2)
      assert.matches("a percent %(1 to 100%) expected", err)
    end
    cache:close()
    assert.has_error(function() cache:repack() end, "layer2: attempt to use a closed store")
    rmdir(cdir)
  end)

  it("a tiny map grows by itself; a fixed one refuses cleanly and keeps what it had", function()
    db:close()
    rmdir(dir)
    db = assert(layer2.lmdb.open(dir, { map_size = 256 * 1024 }))
    local data = helper.corpora()[1]
    local c = assert(db:import(data.valid, { now = 1 }))
    assert(c.saved > data.counts.valid * 0.9)
    assert(db:stats().map_bytes > 256 * 1024)
    clean()
    db:close()
    rmdir(dir)
    db = assert(layer2.lmdb.open(dir, { map_size = 256 * 1024, fixed_map = true }))
    local first = sign(A, 1, T)
    saved(first)
    local r, err = db:import(data.valid, { now = 1 })
    assert.is_nil(r)
    assert.matches("^error: the store is full", err)
    assert.same({ first.id }, ids(db:query_events({})))
    clean()
  end)

  it("refuses a path it cannot use", function()
    local s, err = layer2.lmdb.open("/proc/version")
    assert.is_nil(s)
    assert.matches("^error: ", err)
    assert.has_error(function() layer2.lmdb.open(nil) end)
  end)

  it("two processes write and read one path at once: no error, exact count", function()
    local lua = jit and "luajit" or "lua5.4"
    local child = ([[
      local layer2 = require("layer2")
      local db = assert(layer2.lmdb.open(%q))
      local sec = %q
      for i = 1, 300 do
        local ev = assert(layer2.event.sign({ kind = 1, created_at = %d + i, tags = {}, content = "child " .. i }, sec))
        assert(db:save_event(ev))
        if i %% 50 == 0 then assert(db:query_events({ kinds = { 1 }, limit = 20 })) end
      end
      print("done")
    ]]):format(dir, B, T)
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(child)
    f:close()
    local proc = assert(io.popen(lua .. " " .. script))
    for i = 1, 300 do
      saved(sign(A, 1, T + i, {}, "parent " .. i))
      if i % 50 == 0 then assert(db:query_events({ authors = { PB } })) end
    end
    local out = proc:read("a")
    proc:close()
    os.remove(script)
    assert.equal("done\n", out)
    assert.equal(600, db:count_events({}))
    assert.equal(300, db:count_events({ authors = { PB } }))
    clean()
  end)
end)
