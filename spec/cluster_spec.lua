-- Three relay nodes, each with its own L1 directory, sharing one PostgreSQL L2 (one node in a
-- separate OS process): what any node saves reaches every other node's L1 and fires its
-- on_event after one poll; backdated events arrive; concurrent replacements leave one head
-- everywhere; deletions propagate; an L2 outage loses nothing.
local layer2 = require("layer2")
local helper = require("spec.helper")
local pg = require("spec.pg")

local NOW = os.time()
local KEYS = { A = ("a"):rep(63) .. "1", B = ("b"):rep(63) .. "2", C = ("c"):rep(63) .. "3" }
local SHARED = ("d"):rep(63) .. "4" -- the author every node writes replaceable events for

local function quiet() end

local function sign(sec, t)
  return assert(layer2.event.sign({ created_at = t.created_at or NOW - 1000, kind = t.kind or 1, tags = t.tags or {},
    content = t.content or "" }, sec))
end

local function wait_for(path, what)
  for _ = 1, 600 do
    local f = io.open(path)
    if f then
      f:close()
      return
    end
    os.execute("sleep 0.05")
  end
  error("timed out waiting for " .. what)
end

local function touch(path) assert(io.open(path, "w")):close() end

-- a node in this process: its backend and what its on_event saw from L2
local function node(conninfo)
  local n = { dir = helper.tmpdir(), from_l2 = {}, from_l2_count = 0 }
  n.db = assert(layer2.open(n.dir, { l2 = conninfo, nosync = true, log = quiet, on_event = function(ev, origin)
    if origin == "l2" then
      n.from_l2[ev.id] = (n.from_l2[ev.id] or 0) + 1
      n.from_l2_count = n.from_l2_count + 1
    end
  end }))
  n.close = function()
    n.db:close()
    helper.rmdir(n.dir)
  end
  return n
end

local function l1_has(db, id) return #assert(db.l1:query_events({ ids = { id } })) == 1 end

describe("a cluster of three nodes on one PostgreSQL L2", function()
  local conninfo, sync, a, b

  before_each(function()
    conninfo = pg.fresh()
    sync = helper.tmpdir()
    os.execute("mkdir -p '" .. sync .. "'")
    a, b = node(conninfo), node(conninfo)
  end)

  after_each(function()
    a.close()
    b.close()
    helper.rmdir(sync)
  end)

  -- node C: another OS process. It opens, saves its events, waits for A and B to save theirs,
  -- polls once, writes the replaceable versions it is told to, and reports what it saw.
  local function start_c()
    return helper.spawn(([[
      local layer2 = require("layer2")
      local sync, dir = %q, os.tmpname()
      os.remove(dir)
      local seen, count = {}, 0
      local db = assert(layer2.open(dir, { l2 = %q, nosync = true, log = function() end,
        on_event = function(ev, origin) if origin == "l2" then seen[ev.id] = true count = count + 1 end end }))
      local function wait_for(name)
        for _ = 1, 600 do
          local f = io.open(sync .. "/" .. name)
          if f then f:close() return end
          os.execute("sleep 0.05")
        end
        error("C timed out waiting for " .. name)
      end
      local function touch(name) assert(io.open(sync .. "/" .. name, "w")):close() end
      touch("c_open")
      local mine = {}
      for i = 1, 20 do
        local ev = assert(layer2.event.sign({ created_at = %d + i, kind = 1, tags = {}, content = "C" .. i }, %q))
        assert(db:save_event(ev))
        mine[#mine + 1] = ev.id
      end
      touch("c_saved")
      wait_for("ab_saved")
      local report = db:poll()
      local out = {}
      for id in pairs(seen) do out[#out + 1] = id end
      table.sort(out)
      print("received " .. report.received .. " signals " .. count)
      print("seen " .. table.concat(out, ","))
      local l1 = 0
      for _, id in ipairs(out) do l1 = l1 + #db.l1:query_events({ ids = { id } }) end
      print("in_l1 " .. l1)
      -- concurrent replacements of one address, interleaved with A and B
      touch("c_replacing")
      for i = 1, 30 do
        db:save_event(layer2.event.sign({ created_at = 5000 + 3 * i, kind = 10002, tags = {}, content = "C" .. i }, %q))
      end
      touch("c_replaced")
      wait_for("ab_replaced")
      db:poll()
      local heads = db.l1:query_events({ kinds = { 10002 } })
      print("head " .. #heads .. " " .. (heads[1] and heads[1].id or "none"))
      print("mine " .. table.concat(mine, ","))
      db:close()
      os.execute("rm -rf '" .. dir .. "'")
    ]]):format(sync, conninfo, NOW - 5000, KEYS.C, SHARED))
  end

  it("delivers every node's events to every other node's L1 and on_event after one poll; one head each", function()
    local c = start_c()
    wait_for(sync .. "/c_open", "C to open")
    local saved = { A = {}, B = {} }
    for i = 1, 20 do
      for name, n in pairs({ A = a, B = b }) do
        local ev = sign(KEYS[name], { created_at = NOW - 4000 + i, content = name .. i })
        assert.is_true(n.db:save_event(ev))
        saved[name][#saved[name] + 1] = ev.id
      end
    end
    wait_for(sync .. "/c_saved", "C to save")
    touch(sync .. "/ab_saved")
    a.db:poll()
    b.db:poll()
    -- concurrent replacements: A and B interleave theirs with C's
    wait_for(sync .. "/c_replacing", "C to start replacing")
    for i = 1, 30 do
      a.db:save_event(sign(SHARED, { kind = 10002, created_at = 5000 + 3 * i + 1, content = "A" .. i }))
      b.db:save_event(sign(SHARED, { kind = 10002, created_at = 5000 + 3 * i + 2, content = "B" .. i }))
    end
    wait_for(sync .. "/c_replaced", "C to finish replacing")
    a.db:poll()
    b.db:poll()
    touch(sync .. "/ab_replaced")
    local out = c:read("a")
    c:close()
    local c_seen = out:match("seen ([%x,]*)")
    local c_mine = {}
    for id in out:match("mine ([%x,]*)"):gmatch("%x+") do c_mine[#c_mine + 1] = id end
    assert(c_seen, out)
    assert.equal(20, #c_mine, out)
    -- C saw exactly A's and B's events, once each, and holds them in its L1
    local want_c = {}
    for _, id in ipairs(saved.A) do want_c[#want_c + 1] = id end
    for _, id in ipairs(saved.B) do want_c[#want_c + 1] = id end
    table.sort(want_c)
    assert.equal(table.concat(want_c, ","), c_seen)
    assert.matches("received 40 signals 40", out)
    assert.matches("in_l1 40", out)
    -- A saw B's and C's, B saw A's and C's: once each, in L1
    for _, case in ipairs({ { a, saved.B }, { b, saved.A } }) do
      local n, others = case[1], case[2]
      for _, list in ipairs({ others, c_mine }) do
        for _, id in ipairs(list) do
          assert.equal(1, n.from_l2[id], "signalled once: " .. id)
          assert(l1_has(n.db, id), "in L1: " .. id)
        end
      end
    end
    -- one head for the shared address: the same in PostgreSQL and in every L1
    local l2_heads = assert(a.db.l2:query_events({ kinds = { 10002 } }))
    assert.equal(1, #l2_heads)
    assert.equal(5000 + 90 + 2, l2_heads[1].created_at) -- B's last was the newest
    assert.matches("head 1 " .. l2_heads[1].id, out)
    for _, n in ipairs({ a, b }) do
      local heads = n.db.l1:query_events({ kinds = { 10002 } })
      assert.equal(1, #heads)
      assert.equal(l2_heads[1].id, heads[1].id)
    end
    assert.equal("1", pg.psql("SELECT count(*) FROM layer2_heads WHERE kind = 10002", conninfo:match("dbname=(%S+)"))
      :match("%d+"))
  end)

  it("delivers 1,000 backdated events, and deletions, to the other node", function()
    local backdated = {}
    for i = 1, 1000 do
      -- years old, in no particular order: a created_at window would miss them all
      local ev = sign(KEYS.A, { created_at = 1500000000 + (i * 7919) % 100000, content = "old " .. i })
      assert.is_true(a.db:save_event(ev))
      backdated[i] = ev
    end
    local report = b.db:poll()
    assert.equal(1000, report.received)
    assert.equal(1000, b.from_l2_count)
    for _, ev in ipairs(backdated) do assert(l1_has(b.db, ev.id)) end
    -- a NIP-09 deletion and a deletion through the API, both on A, reach B's L1
    local del = sign(KEYS.A, { kind = 5, created_at = NOW, tags = { { "e", backdated[1].id } } })
    assert.is_true(a.db:save_event(del))
    assert.is_true(a.db:delete_event(backdated[2].id))
    assert.is_nil(b.db:poll().error)
    assert.is_false(l1_has(b.db, backdated[1].id))
    assert.is_false(l1_has(b.db, backdated[2].id))
    assert(l1_has(b.db, backdated[3].id))
    -- the deleted events cannot come back through B
    assert.same({ false, "blocked: this event was deleted by its author" }, { b.db:save_event(backdated[1]) })
    -- a second poll changes nothing and signals nothing again
    local before = b.from_l2_count
    b.db:poll()
    assert.equal(before, b.from_l2_count)
  end)

  it("tells on_removed of replacements and deletions: on the node that saved them, on another after its poll",
    function()
      local heard = { a = {}, b = {} }
      for name, n in pairs({ a = a, b = b }) do
        n.db:on_removed(function(id, how, origin) heard[name][#heard[name] + 1] = table.concat({ id, how, origin }, " ") end)
      end
      local old = sign(KEYS.A, { kind = 0, created_at = NOW - 10, content = "old profile" })
      local note, other = sign(KEYS.A, { content = "to delete" }), sign(KEYS.A, { content = "deleted by API" })
      for _, ev in ipairs({ old, note, other }) do assert.is_true(a.db:save_event(ev)) end
      b.db:poll()
      assert(l1_has(b.db, old.id) and l1_has(b.db, note.id))
      assert.is_true(a.db:save_event(sign(KEYS.A, { kind = 0, created_at = NOW, content = "new profile" })))
      assert.is_true(a.db:save_event(sign(KEYS.A, { kind = 5, created_at = NOW, tags = { { "e", note.id } } })))
      assert.is_true(a.db:delete_event(other.id))
      assert.same({ old.id .. " replaced local", note.id .. " deleted local", other.id .. " deleted local" }, heard.a)
      assert.same({}, heard.b)
      assert.is_nil(b.db:poll().error)
      assert.same({ old.id .. " replaced l2", note.id .. " deleted l2", other.id .. " deleted l2" }, heard.b)
      -- A's own poll reads its own removals in the feed: none is told again
      a.db:poll()
      assert.equal(3, #heard.a)
    end)

  it("gets a change whose transaction took its sequence number first and commits after 20 polls of another node",
    function()
      local name = conninfo:match("dbname=(%S+)")
      local late = sign(KEYS.C, { created_at = NOW - 30, content = "late" })
      local hex = function(s) return ("decode('%s', 'hex')"):format(s) end
      assert.equal("", pg.psql("CREATE TABLE late_go (x integer)", name))
      -- another writer's transaction: layer2_save takes its change's sequence number, then it
      -- waits (for late_go) with the transaction open
      local sql = ("BEGIN; SELECT layer2_save(%s, %s, 1, %d, NULL, false, ''::bytea, '{}'::bytea[], '%s', "
        .. "'{}'::bytea[], '{}'::integer[], '{}'::bytea[], %d); DO 'BEGIN WHILE NOT EXISTS (SELECT 1 FROM late_go) "
        .. "LOOP PERFORM pg_sleep(0.02); END LOOP; END'; COMMIT;"):format(hex(late.id), hex(late.pubkey),
        late.created_at, layer2.event.encode(late), NOW)
      local done = sync .. "/late_done"
      os.execute(("(%s; touch '%s') > /dev/null 2>&1 &"):format(pg.psql_command(sql, name), done))
      local waiting = function()
        return pg.psql(("SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND wait_event = 'PgSleep'")
          :format(name), name):match("%d+") == "1"
      end
      for _ = 1, 600 do
        if waiting() then break end
        os.execute("sleep 0.05")
      end
      assert(waiting(), "the late transaction is open")
      local after = {}
      for i = 1, 25 do
        after[i] = sign(KEYS.B, { created_at = NOW - 20 + i % 5, content = "meanwhile " .. i })
        assert.is_true(b.db:save_event(after[i]))
        assert.is_nil(a.db:poll().error)
      end
      for _, ev in ipairs(after) do assert(l1_has(a.db, ev.id)) end
      assert.is_false(l1_has(a.db, late.id))
      assert.equal("", pg.psql("INSERT INTO late_go VALUES (1)", name))
      wait_for(done, "the late transaction to commit")
      -- it took its sequence number before every event B saved meanwhile
      local seq = function(id)
        return tonumber(pg.psql(("SELECT seq FROM layer2_changes WHERE id = %s"):format(hex(id)), name):match("%d+"))
      end
      assert(seq(late.id) < seq(after[1].id), "the late change's sequence number comes first")
      assert.is_nil(a.db:poll().error)
      assert(l1_has(a.db, late.id), "the late commit reached the other node's L1")
      assert.equal(1, a.from_l2[late.id])
      for _, f in ipairs({ { kinds = { 1 }, limit = 10 }, { authors = { late.pubkey } }, { since = NOW - 40 } }) do
        assert.same(helper.ids(a.db.l2:query_events(f)), helper.ids(a.db:query_events(f)))
      end
    end)

  it("loses nothing while PostgreSQL is down: 1,000 saves queue, then reach it exactly once", function()
    local events = {}
    for i = 1, 1000 do events[i] = sign(KEYS.B, { created_at = NOW - 2000 + i, content = "outage " .. i }) end
    pg.stop()
    local ok, err = pcall(function()
      for _, ev in ipairs(events) do assert.is_true(a.db:save_event(ev)) end
      assert.equal(1000, a.db:stats().outbox)
      -- reads are served from L1 meanwhile
      local got, from = a.db:query_events({ authors = { events[1].pubkey } }, { max_limit = 1000 })
      assert.equal(1000, #got)
      assert.equal(1000, from.l1)
    end)
    pg.start()
    assert(ok, err)
    local report = a.db:poll()
    assert.equal(1000, report.sent)
    assert.equal(0, a.db:stats().outbox)
    local name = conninfo:match("dbname=(%S+)")
    assert.equal("1000", pg.psql("SELECT count(*) FROM layer2_events", name):match("%d+"))
    assert.equal("1000", pg.psql("SELECT count(*) FROM layer2_changes WHERE op = 1", name):match("%d+"))
    assert.equal(1000, #a.db.l1:query_events({ authors = { events[1].pubkey } }, { max_limit = 2000 }))
    -- and the other node receives each once
    assert.equal(1000, b.db:poll().received) -- its first call after the restart reconnects
    assert.equal(1000, b.from_l2_count)
    a.db:poll()
    assert.equal(0, a.from_l2_count) -- A's own events do not come back to it as news
  end)
end)
