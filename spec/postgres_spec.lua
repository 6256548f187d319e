-- The PostgreSQL store on its own, against the throwaway server of the test run: the store
-- methods, its schema and version, bad input, bad connections, concurrency of writers, the change
-- feed and its signal. (Its answers to random filters: postgres_bruteforce_spec.)
local layer2 = require("layer2")
local helper = require("spec.helper")
local pg = require("spec.pg")

local SEC = ("1"):rep(63) .. "3"
local SEC2 = ("2"):rep(63) .. "5"
local NOW = 1800000000

local function sign(t, sec)
  return assert(layer2.event.sign({ created_at = t.created_at or NOW - 100, kind = t.kind or 1, tags = t.tags or {},
    content = t.content or "hello" }, sec or SEC))
end

local ids = helper.ids

describe("layer2.postgres store", function()
  local db, conninfo

  before_each(function()
    conninfo = pg.fresh()
    db = assert(layer2.postgres.open(conninfo))
  end)

  after_each(function() db:close() end)

  it("saves, refuses with NIP-01 prefixes, queries, counts, deletes and keeps tombstones", function()
    local a = sign({ content = "a", created_at = NOW - 10 })
    local b = sign({ content = "b", created_at = NOW - 5, tags = { { "t", "x" } } })
    assert.is_true(db:save_event(a))
    assert.is_true(db:save_event(layer2.event.encode(b)))
    local ok, msg = db:save_event(a)
    assert.is_false(ok)
    assert.equal("duplicate: already have this event", msg)
    assert.same({ b.id, a.id }, ids(db:query_events({ kinds = { 1 } })))
    assert.same({ b.id }, ids(db:query_events({ ["#t"] = { "x" } })))
    assert.same(b, db:query_events({ ids = { b.id } })[1])
    assert.equal(layer2.event.encode(b), db:query_events({ ids = { b.id } }, { json = true })[1])
    assert.equal(2, db:count_events({ kinds = { 1 } }))
    assert.equal(1, db:count_events({ { ids = { a.id } }, { ids = { a.id } } }))
    assert.is_true(db:delete_event(a.id))
    assert.same({ false, "not found: no stored event has this id" }, { db:delete_event(a.id) })
    ok, msg = db:save_event(a)
    assert.is_false(ok)
    assert.equal("blocked: this event was deleted by its author", msg)
    -- no_tombstone: it may come back
    assert.is_true(db:delete_event(b.id, true))
    assert.is_true(db:save_event(b))
    assert.equal(1, db:stats().events)
  end)

  it("refuses every bad input with a message and stores nothing", function()
    local good = sign({})
    local bad_sig = layer2.event.encode(good):gsub('"sig":"(%x)', function(c)
      return '"sig":"' .. (c == "a" and "b" or "a")
    end)
    local cases = {
      { "not json", "^invalid:" },
      { "{}", "^invalid:" },
      { bad_sig, "^invalid: bad signature" },
      { layer2.event.encode(good):gsub(good.id, ("0"):rep(64)), "^invalid: bad event id" },
      { sign({ tags = { { "expiration", tostring(NOW - 1) } } }), "^invalid: this event has expired" },
    }
    for _, c in ipairs(cases) do
      local ok, msg = db:save_event(c[1], { now = NOW })
      assert.is_false(ok)
      assert.matches(c[2], msg)
    end
    assert.same({ nil, "invalid: unknown filter field 'bogus'" }, { db:query_events({ bogus = 1 }) })
    assert.same({ nil, "invalid: more than 500 filters" }, { db:query_events(('[' .. ('{},'):rep(501) .. '{}]')) })
    local ok, msg = db:query_events({ search = "x" })
    assert.is_nil(ok)
    assert.matches("^unsupported: search", msg)
    assert.same({ false, "invalid: id must be 64 lowercase hex characters" }, { db:delete_event("xyz") })
    assert.equal(0, db:stats().events)
    -- ephemeral: accepted, never stored
    assert.is_true(db:save_event(sign({ kind = 20001 })))
    assert.equal(0, db:stats().events)
    assert.same({ true, {} }, { db:check() })
  end)

  it("keeps one head per address, the newest (a tie to the lower id), and NIP-09 a-tag deletions", function()
    local old = sign({ kind = 0, created_at = NOW - 50, content = "old" })
    local new = sign({ kind = 0, created_at = NOW - 40, content = "new" })
    assert.is_true(db:save_event(new))
    assert.same({ false, "duplicate: a newer version of this replaceable event is stored" }, { db:save_event(old) })
    local art1 = sign({ kind = 30023, created_at = NOW - 30, tags = { { "d", "x" } } })
    local art2 = sign({ kind = 30023, created_at = NOW - 20, tags = { { "d", "x" } } })
    local other = sign({ kind = 30023, created_at = NOW - 20, tags = { { "d", "y" } } })
    assert.is_true(db:save_event(art1))
    assert.is_true(db:save_event(art2))
    assert.is_true(db:save_event(other))
    local both = { art2.id, other.id }
    table.sort(both) -- same created_at: the lower id first
    assert.same(both, ids(db:query_events({ kinds = { 30023 } })))
    -- a deletion of the address at NOW - 25 keeps the newer head and blocks older versions
    local del = sign({ kind = 5, created_at = NOW - 25, tags = { { "a", "30023:" .. art1.pubkey .. ":x" } } })
    assert.is_true(db:save_event(del))
    assert.same(both, ids(db:query_events({ kinds = { 30023 } })))
    local older = sign({ kind = 30023, created_at = NOW - 26, tags = { { "d", "x" } }, content = "older" })
    assert.same({ false, "blocked: this event was deleted by its author" }, { db:save_event(older) })
    local del2 = sign({ kind = 5, created_at = NOW - 10, tags = { { "a", "30023:" .. art1.pubkey .. ":x" } } })
    assert.is_true(db:save_event(del2))
    assert.same({ other.id }, ids(db:query_events({ kinds = { 30023 } })))
    -- another author's deletion is refused, and deletes nothing
    local foreign = sign({ kind = 5, created_at = NOW - 5, tags = { { "e", other.id } } }, SEC2)
    assert.is_false(db:save_event(foreign))
    assert.same({ other.id }, ids(db:query_events({ kinds = { 30023 } })))
    assert.same({ true, {} }, { db:check() })
  end)

  it("feeds its changes in order: saved, replaced, deleted", function()
    local cursor0 = db:stats().last_seq
    local v1 = sign({ kind = 3, created_at = NOW - 9 })
    local v2 = sign({ kind = 3, created_at = NOW - 8 })
    local note = sign({})
    assert.is_true(db:save_event(v1))
    assert.is_true(db:save_event(v2))
    assert.is_true(db:save_event(note))
    assert.is_true(db:delete_event(note.id))
    local changes, cursor = db:changes_since(cursor0)
    local seen = {}
    for i, c in ipairs(changes) do seen[i] = c.op .. ":" .. c.id:sub(1, 8) .. ":" .. tostring(c.event ~= nil) end
    local s8 = function(e) return e.id:sub(1, 8) end
    assert.same({ "saved:" .. s8(v1) .. ":false", "replaced:" .. s8(v1) .. ":false", "saved:" .. s8(v2) .. ":true",
      "saved:" .. s8(note) .. ":false", "deleted:" .. s8(note) .. ":false" }, seen)
    assert.equal(changes[#changes].seq, cursor)
    assert.same({}, (db:changes_since(cursor)))
    local two = db:changes_since(cursor0, 2, { json = true })
    assert.equal(2, #two)
  end)

  it("imports through COPY in batches, exports through a cursor, by pubkey too, like the LMDB store", function()
    local dir = helper.tmpdir()
    local lmdb = assert(layer2.lmdb.open(dir))
    local path = helper.corpora()[1].valid
    local c1 = assert(db:import(path, { now = NOW, batch = 700 }))
    local c2 = assert(lmdb:import(path, { now = NOW }))
    assert.same(c2, c1)
    local function export(store, keys)
      local out = {}
      assert(store:export(function(line) out[#out + 1] = line end, keys))
      table.sort(out)
      return out
    end
    assert.same(export(lmdb), export(db))
    local some = db:query_events({ kinds = { 3 } }, { max_limit = 3 })
    local keys = { some[1].pubkey, some[2].pubkey }
    local a, b = export(lmdb, keys), export(db, keys)
    assert(#a > 2)
    assert.same(a, b)
    assert.same({}, export(db, {}))
    local counted = 0
    assert.equal(#export(db), db:export(function() counted = counted + 1 end, nil, { progress = function() end }))
    lmdb:close()
    helper.rmdir(dir)
  end)

  it("nukes its own tables only; sweeps expired events", function()
    pg.psql("CREATE TABLE not_ours (x int); INSERT INTO not_ours VALUES (1)", conninfo:match("dbname=(%S+)"))
    assert.is_true(db:save_event(sign({ tags = { { "expiration", tostring(NOW + 10) } } }), { now = NOW }))
    assert.is_true(db:save_event(sign({ content = "stays" })))
    assert.equal(1, db:sweep(NOW + 10))
    assert.equal(1, db:stats().events)
    assert.is_true(db:nuke())
    assert.equal(0, db:stats().events)
    assert.equal("1", pg.psql("SELECT count(*) FROM not_ours", conninfo:match("dbname=(%S+)")):match("%d+"))
  end)

  it("NIP-09 strictly: refuses a deletion of only other authors' events, or of another pubkey's address", function()
    require("spec.nip09")(function() return db end, assert)
  end)

  it("creates and versions its schema; refuses a newer one and leaves it alone", function()
    local name = conninfo:match("dbname=(%S+)")
    local function version() return pg.psql("SELECT value FROM layer2_meta WHERE key = 'schema_version'", name):match("%S+") end
    assert.equal("3", version())
    local again = assert(layer2.postgres.open(conninfo)) -- opening again changes nothing
    again:close()
    pg.psql("UPDATE layer2_meta SET value = '4' WHERE key = 'schema_version'", name)
    local s, err = layer2.postgres.open(conninfo)
    assert.is_nil(s)
    assert.equal("error: PostgreSQL: the database holds layer2 schema version '4'; this layer2 knows version 3 " ..
      "and leaves it alone", err)
    assert.equal("4", version())
  end)

  it("migrates a version-1 schema: its save function is replaced, its events stay", function()
    local name = conninfo:match("dbname=(%S+)")
    local a = sign({ content = "kept", created_at = NOW - 10 })
    assert.is_true(db:save_event(a))
    -- version 1's save stored a deletion of only another author's event: its function, as it was
    pg.psql("UPDATE layer2_meta SET value = '1' WHERE key = 'schema_version'", name)
    pg.psql("ALTER TABLE layer2_changes DROP COLUMN xid", name) -- versions 1 and 2 had none
    pg.psql("CREATE OR REPLACE FUNCTION layer2_save(p_id bytea, p_pubkey bytea, p_kind integer, p_created bigint, "
      .. "p_expiration bigint, p_addr boolean, p_d bytea, p_tags bytea[], p_json text, p_del_ids bytea[], "
      .. "p_del_kinds integer[], p_del_ds bytea[], p_now bigint, OUT status integer, OUT replaced integer, "
      .. "OUT deleted integer) LANGUAGE plpgsql AS 'BEGIN status := 0; replaced := 0; deleted := 0; END'", name)
    local again = assert(layer2.postgres.open(conninfo))
    assert.equal("3", pg.psql("SELECT value FROM layer2_meta WHERE key = 'schema_version'", name):match("%S+"))
    -- the changes made before keep transaction id 1, older than any position; new ones get theirs
    assert.equal("1", pg.psql("SELECT DISTINCT xid FROM layer2_changes", name):match("%S+"))
    assert.same({ a.id }, ids(again:query_events({ ids = { a.id } })))
    local other = layer2.event.sign({ kind = 5, created_at = NOW, tags = { { "e", a.id } }, content = "" },
      ("0"):rep(63) .. "e")
    local ok, msg = again:save_event(other)
    assert.is_false(ok)
    assert.matches("^invalid: a deletion request may only delete its author's own events", msg)
    again:close()
  end)

  it("says clearly what is wrong with a connection, and reconnects after losing one", function()
    local s, err = layer2.postgres.open("garbage")
    assert.is_nil(s)
    assert.equal('error: PostgreSQL: cannot connect: missing "=" after "garbage" in connection info string', err)
    s, err = layer2.postgres.open("host=/nonexistent dbname=x")
    assert.is_nil(s)
    assert.matches('^error: PostgreSQL: cannot connect: connection to server on socket "/nonexistent/.s.PGSQL.5432" ' ..
      'failed: No such file or directory', err)
    s, err = layer2.postgres.open((pg.conninfo():gsub("user=%S+", "user=layer2_pw password=wrong")))
    assert.is_nil(s)
    assert.matches('password authentication failed for user "layer2_pw"', err)
    -- dropped mid-query: a lock makes the next query wait; the server then ends its session
    local name = conninfo:match("dbname=(%S+)")
    local victim = assert(layer2.postgres.open(conninfo .. " application_name=layer2_victim"))
    assert.is_true(victim:save_event(sign({})))
    local locker = io.popen(pg.psql_command("BEGIN; LOCK TABLE layer2_events; SELECT pg_sleep(3); COMMIT;", name) ..
      " >/dev/null 2>&1")
    for _ = 1, 100 do -- until the lock is held
      local n = pg.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation " ..
        "WHERE c.relname = 'layer2_events' AND l.mode = 'AccessExclusiveLock' AND l.granted", name)
      if tonumber(n:match("%d+")) > 0 then break end
      os.execute("sleep 0.05")
    end
    local killer = io.popen("sleep 1; " .. pg.psql_command(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'layer2_victim'") ..
      " >/dev/null 2>&1")
    local res, qerr = victim:query_events({ kinds = { 1 } })
    assert.is_nil(res)
    assert.equal("error: PostgreSQL: terminating connection due to administrator command", qerr)
    killer:close()
    locker:close()
    -- the next call reconnects
    assert.equal(1, #assert(victim:query_events({ kinds = { 1 } })))
    assert.equal(1, victim:stats().reconnects)
    victim:close()
  end)

  it("raises on a closed handle; path names the server without a password", function()
    assert.matches("^postgresql://postgres@localhost:5432/l2_", db:path())
    local s = assert(layer2.postgres.open(conninfo))
    s:close()
    s:close()
    assert.is_true(s:is_closed())
    assert.has_error(function() s:query_events({}) end, "layer2: attempt to use a closed store")
    assert.has_error(function() s:save_event(sign({})) end, "layer2: attempt to use a closed store")
    assert.matches("closed", tostring(s))
  end)

  it("signals changes to a listener (LISTEN/NOTIFY) at once", function()
    assert.is_true(db:listen())
    assert.is_false(db:wait(0))
    local other = assert(layer2.postgres.open(conninfo))
    local t0 = layer2.monotonic()
    local child = helper.spawn(("local l = require('layer2') local s = assert(l.postgres.open(%q)) " ..
      "assert(s:save_event(l.event.sign({created_at = 1, kind = 1, tags = {}, content = 'x'}, %q)))"):format(
      conninfo, SEC))
    assert.is_true(db:wait(10))
    assert(layer2.monotonic() - t0 < 10)
    child:close()
    other:close()
    assert.is_false(db:wait(0.05))
  end)

  it("carries ephemeral payloads to every listener (NOTIFY), in order; refuses one too large to carry", function()
    assert.is_true(db:listen())
    db:wait(0)
    local other = assert(layer2.postgres.open(conninfo))
    assert.is_true(other:publish("a1 first"))
    assert.is_true(other:publish("a1 second"))
    local notified, ephemeral = db:wait(5)
    for _ = 1, 50 do
      if #ephemeral >= 2 then break end
      local more
      notified, more = db:wait(0.1)
      for _, p in ipairs(more) do ephemeral[#ephemeral + 1] = p end
    end
    assert.is_false(notified, "no change was committed")
    assert.same({ "a1 first", "a1 second" }, ephemeral)
    assert.same({}, select(2, db:wait(0)), "each payload once")
    local ok, err = other:publish(("x"):rep(8000))
    assert.is_nil(ok)
    assert.equal("blocked: an ephemeral event of more than 7999 bytes does not cross the cluster", err)
    assert.is_true(other:publish(("x"):rep(7999)))
    local _, big = db:wait(5)
    assert.equal(7999, #big[1])
    -- a connection that does not listen keeps nothing
    assert.same({}, select(2, other:wait(0)))
    other:close()
  end)

  it("leaves exactly one head when processes replace the same address at once", function()
    local procs = {}
    for p = 1, 4 do
      -- each process saves 25 versions of one kind-0 and one kind-30000 address, times interleaved
      procs[p] = helper.spawn(([[
        local l = require('layer2')
        local s = assert(l.postgres.open(%q))
        for i = 1, 25 do
          local t = 1000 + i * 4 + %d
          s:save_event(l.event.sign({created_at = t, kind = 0, tags = {}, content = 'p%d-' .. i}, %q))
          s:save_event(l.event.sign({created_at = t, kind = 30000, tags = {{'d', 'same'}}, content = 'x' .. i}, %q))
        end]]):format(conninfo, p, p, SEC, SEC))
    end
    for _, p in ipairs(procs) do
      local out = p:read("a")
      assert.equal("", out)
      p:close()
    end
    local heads = db:query_events({ kinds = { 0, 30000 } })
    assert.equal(2, #heads)
    for _, h in ipairs(heads) do assert.equal(1000 + 25 * 4 + 4, h.created_at) end
    local name = conninfo:match("dbname=(%S+)")
    assert.equal("2", pg.psql("SELECT count(*) FROM layer2_heads", name):match("%d+"))
    assert.same({ true, {} }, { db:check() })
  end)
end)
