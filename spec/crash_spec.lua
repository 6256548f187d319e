-- Crash consistency: a writer (import, saves, eviction, an outbox while L2 fails) is killed with
-- SIGKILL at random moments. After each kill the store reopens clean, every save that returned
-- true is there, and no half-written replace or delete is visible.
local helper = require("spec.helper")
local layer2 = require("layer2")

local LUA = jit and "luajit" or "lua5.4"

local WRITER = [=[
local layer2 = require("layer2")
local dir, logpath, seed, import_file = arg[1], arg[2], tonumber(arg[3]), arg[4]
local real = assert(layer2.lmdb.open(dir .. "/shared-l2"))
local down = false
local l2 = setmetatable({}, { __index = function(_, name)
  return function(_, ...)
    if down and name ~= "stats" and name ~= "changes_since" then return nil, "error: L2 is down" end
    return real[name](real, ...)
  end
end })
local db = assert(layer2.open(dir, { l1 = { size_limit = 1024 * 1024 }, l2 = l2, log = function() end }))
local log = assert(io.open(logpath, "a"))
io.stdout:write("ready\n")
io.stdout:flush()
assert(db:import(import_file))
local g = require("layer2.gen").new({ seed = seed, authors = 25, count = 100000 })
local mine = {}
for i = 1, 1e9 do
  local ev = g:next()
  if i % 40 == 0 then down = not down end
  if db:save_event(ev) and (ev.kind == 1 or ev.kind == 6 or ev.kind == 7) then
    log:write("S ", ev.id, "\n")
    log:flush()
    mine[#mine + 1] = ev
  end
  if i % 9 == 0 and #mine > 0 then
    -- a NIP-09 deletion of an earlier event of the same author
    local target = mine[#mine]
    local key = g.keys[1]
    for k, pk in ipairs(g.pubkeys) do if pk == target.pubkey then key = g.keys[k] end end
    local del = layer2.event.sign({ kind = 5, created_at = target.created_at + 1, tags = { { "e", target.id } },
      content = "" }, key)
    -- the intent goes first: a kill right after the deletion commits must not make it look lost
    log:write("d ", target.id, "\n")
    log:flush()
    if db:save_event(del) then
      log:write("D ", target.id, "\n")
      log:flush()
    end
  end
  if i % 25 == 0 then db:gc() end
end
]=]

describe("crash consistency", function()
  it("a writer that dies between L2's commit and L1's: its event is answered, here and in a new process", function()
    local dir = helper.tmpdir()
    local sec = ("0"):rep(63) .. "7"
    local now = os.time()
    local function note(t) return layer2.event.sign({ kind = 1, created_at = t, tags = {}, content = "at " .. t }, sec) end
    local store = assert(layer2.lmdb.open(dir .. "-l2", { nosync = true }))
    local db = assert(layer2.open(dir, { l2 = store, nosync = true, log = function() end }))
    for t = 1, 3 do assert(db:save_event(note(now - 10 + t))) end
    local f = { kinds = { 1 } }
    local res, from = db:query_events(f)
    assert.same({ 3, 0 }, { #res, from.l2 }, "L1 proves the answer alone")
    -- another process saves: L2 commits, and the process is gone before L1's commit
    local lost = note(now - 5)
    local p = helper.spawn(([[
      local layer2 = require("layer2")
      local store = assert(layer2.lmdb.open(%q, { nosync = true }))
      local l2 = setmetatable({}, { __index = function(_, k)
        local fn = store[k]
        return type(fn) == "function" and function(_, ...) return fn(store, ...) end or fn
      end })
      local function save_then_die(_, ...)
        assert(store:save_events(...))
        os.exit(0, false)
      end
      l2.save_events, l2.save_event = save_then_die, function(self, ev, ...) return save_then_die(self, { ev }, ...) end
      local db = assert(layer2.open(%q, { l2 = l2, nosync = true, log = function() end }))
      db:save_event(layer2.event.parse(%q))
      print("not reached")
    ]]):format(dir .. "-l2", dir, layer2.event.encode(lost)))
    assert.equal("", p:read("a"))
    p:close()
    assert.equal(1, store:count_events({ ids = { lost.id } }), "L2 has it")
    -- this process, open all along, answers with it...
    res = db:query_events(f)
    assert.same({ 4, lost.id }, { #res, res[1].id })
    -- ...and so does a new one
    db:close()
    db = assert(layer2.open(dir, { l2 = store, nosync = true, log = function() end }))
    res = db:query_events(f)
    assert.same({ 4, lost.id }, { #res, res[1].id })
    db:close()
    store:close()
    helper.rmdir(dir)
    helper.rmdir(dir .. "-l2")
  end)

  it("survives SIGKILL at 20 random moments of import, saves, eviction and outbox draining", function()
    local dir = helper.tmpdir()
    local script, logpath, import_file = dir .. "-writer.lua", dir .. "-saved.log", dir .. "-import.jsonl"
    local f = assert(io.open(script, "w"))
    f:write(WRITER)
    f:close()
    local g = require("layer2.gen").new({ seed = 77, authors = 40, count = 3000 })
    f = assert(io.open(import_file, "w"))
    for _ = 1, 3000 do f:write(layer2.event.encode(g:next()), "\n") end
    f:close()
    local rand = helper.rng(2026)
    local expected, deleted, maybe_deleted = {}, {}, {}
    for round = 1, 20 do
      local pidfile = dir .. "-pid"
      local delay = 0.05 + rand(400) / 1000
      -- start the writer, wait for it to work a while, kill it without warning
      os.execute(("%s %s %s %s %d %s > %s.out 2>&1 & echo $! > %s; sleep %.3f; kill -9 $(cat %s) 2>/dev/null; "
        .. "wait 2>/dev/null; sleep 0.05"):format(LUA, script, dir, logpath, round, import_file, dir, pidfile,
        delay, pidfile))
      for line in io.lines(logpath) do
        local op, id = line:match("^(%a) (%x+)$")
        if op == "S" then
          expected[id] = true
        elseif op == "d" then
          maybe_deleted[id] = true
        elseif op == "D" then
          deleted[id] = true
        end
      end
      -- reopen: consistent, and nothing accepted is lost
      local l2 = assert(layer2.lmdb.open(dir .. "/shared-l2"))
      local db = assert(layer2.open(dir, { l1 = { size_limit = 1024 * 1024 }, l2 = l2, log = function() end }))
      local ok, problems = db:check()
      assert(ok, ("round %d: %s"):format(round, table.concat(problems, "\n")))
      db:poll() -- drains what the outbox held when the writer died
      assert.equal(0, db:stats().outbox)
      for id in pairs(expected) do
        local n = l2:count_events({ ids = { id } })
        assert(n == 1 or maybe_deleted[id], ("round %d: a saved event is missing: %s"):format(round, id))
      end
      -- a deletion that is stored has taken its target with it
      for id in pairs(deleted) do assert.equal(0, l2:count_events({ ids = { id } })) end
      -- one head per replaceable slot
      local seen = {}
      for _, ev in ipairs(l2:query_events({ kinds = { 0, 3, 10002 } }, { max_limit = 1e9 })) do
        local slot = ev.pubkey .. ":" .. ev.kind
        assert(not seen[slot], "two heads for " .. slot)
        seen[slot] = true
      end
      ok, problems = l2:check()
      assert(ok, table.concat(problems, "\n"))
      db:close()
      l2:close()
    end
    local n = 0
    for _ in pairs(expected) do n = n + 1 end
    assert(n > 100, "the writer did real work: " .. n .. " saves")
    helper.rmdir(dir)
    for _, p in ipairs({ script, logpath, import_file, dir .. "-pid", dir .. ".out" }) do os.remove(p) end
  end)

  -- An import into an empty store leaves its indexes to its end (store_maint.c): killed before, the
  -- next process to open the store builds them.
  describe("an import into an empty store", function()
    local file = helper.tmpdir() .. ".jsonl"
    local events = {}
    setup(function()
      local g = require("layer2.gen").new({ seed = 78, authors = 60 })
      local f = assert(io.open(file, "w"))
      for i = 1, 30000 do
        events[i] = g:next()
        f:write(layer2.event.encode(events[i]), "\n")
      end
      f:close()
    end)
    teardown(function() os.remove(file) end)

    -- the store's answers against the reference built from what it holds
    local function answers_match(db, why)
      local ok, problems = db:check()
      assert(ok, why .. ": " .. table.concat(problems or {}, "\n"))
      local model, now = require("spec.ref").new(), os.time()
      local export = helper.tmpdir()
      assert(db:export(export))
      local n = 0
      for line in io.lines(export) do
        model:save(layer2.event.parse(line), now)
        n = n + 1
      end
      os.remove(export)
      local pk = events[3].pubkey
      for _, filters in ipairs({ { {} }, { { kinds = { 1 } } }, { { authors = { pk } } }, { { kinds = { 0, 3 } } },
        { { ["#t"] = { "nostr" } } }, { { kinds = { 1 }, since = events[9000].created_at } } }) do
        assert.same(model:query(filters, now, 100000),
          helper.ids(assert(db:query_events(filters, { max_limit = 100000 }))), why .. " " .. require("cjson").encode(filters))
      end
      return n
    end

    it("builds all indexes in one pass, or one index a pass when index_memory is short: the same answers", function()
      local totals = {}
      for _, memory in ipairs({ 0, 1 }) do
        local dir = helper.tmpdir()
        local db = assert(layer2.lmdb.open(dir, { index_memory = memory }))
        assert(db:import(file, { verify = false, batch = 5000 }))
        local n = answers_match(db, "index_memory " .. memory)
        assert.is_true(n > 26000, "the import saved " .. n)
        totals[#totals + 1] = n .. " events, " .. db:stats().index_entries .. " index entries"
        db:close()
        helper.rmdir(dir)
      end
      assert.equal(totals[1], totals[2])
      assert.has_error(function() layer2.lmdb.open(helper.tmpdir(), { index_memory = -1 }) end,
        "layer2: option 'index_memory' must be a non-negative integer")
    end)

    it("killed part way: the next open builds the indexes, and every answer matches the reference", function()
      local rand, partial = helper.rng(31), 0
      for round = 1, 6 do
        local dir = helper.tmpdir()
        local delay = 0.02 * round + rand(50) / 1000
        os.execute(("%s -e \"local s = require('layer2').lmdb.open('%s') s:import('%s', {verify = false, batch = 1000})\" "
          .. "& pid=$!; sleep %.3f; kill -9 $pid 2>/dev/null; wait 2>/dev/null"):format(LUA, dir, file, delay))
        local db = assert(layer2.lmdb.open(dir))
        -- (the whole file leaves 26,994 events)
        local n = answers_match(db, "round " .. round)
        if n > 0 and n < 26000 then partial = partial + 1 end
        db:close()
        helper.rmdir(dir)
      end
      assert.is_true(partial >= 1, "no kill landed during an import")
    end)

    it("saves by another process meanwhile get their indexes, and the importer's are built at its end", function()
      local dir = helper.tmpdir()
      local db = assert(layer2.lmdb.open(dir))
      local p = io.popen(("%s -e \"local s = require('layer2').lmdb.open('%s') "
        .. "assert(s:import('%s', {verify = false, batch = 500})) print(s:stats().events)\""):format(LUA, dir, file))
      -- once the import is under way, this process saves events of its own into the same store
      while db:stats().events == 0 do os.execute("sleep 0.01") end
      local g = require("layer2.gen").new({ seed = 79, authors = 5 })
      local mine = {}
      for i = 1, 200 do mine[i] = g:next() end
      assert(db:save_events(mine))
      local ok, problems = db:check()
      local during = db:stats().events
      local final = tonumber(p:read("a"))
      p:close()
      assert.is_true(during < final, "the saves and the check came while the import ran")
      -- a check meanwhile says that the import builds its index keys at its end, and only that
      assert.is_false(ok)
      assert.equal(1, #problems)
      assert.matches("^an import %(process %d+%) is under way: its events get their index keys when it ends$",
        problems[1])
      -- (replaceable ones may have been replaced by the import's: the authors are the generator's)
      local plain = 0
      for _, ev in ipairs(mine) do
        if ev.kind == 1 or ev.kind == 6 or ev.kind == 7 then
          plain = plain + 1
          assert.equal(1, db:count_events({ ids = { ev.id }, kinds = { ev.kind }, authors = { ev.pubkey } }))
        end
      end
      assert.is_true(plain > 100)
      answers_match(db, "after the import")
      db:close()
      helper.rmdir(dir)
    end)
  end)
end)

-- A process killed inside a read transaction leaves its reader slot in L1's lock file, pinning
-- every page freed since its snapshot: a size-limited L1 cannot reuse them and fills.
local PIN_AND_DIE = [=[
local ffi = require("ffi")
ffi.cdef([[
typedef struct MDB_env MDB_env;
typedef struct MDB_txn MDB_txn;
int mdb_env_create(MDB_env **env);
int mdb_env_set_maxdbs(MDB_env *env, unsigned dbs);
int mdb_env_open(MDB_env *env, const char *path, unsigned flags, int mode);
int mdb_txn_begin(MDB_env *env, MDB_txn *parent, unsigned flags, MDB_txn **txn);
int kill(int pid, int sig);
int getpid(void);
]])
local lmdb = ffi.load("lmdb")
local RDONLY = 0x20000
local env, txn = ffi.new("MDB_env *[1]"), ffi.new("MDB_txn *[1]")
assert(lmdb.mdb_env_create(env) == 0)
lmdb.mdb_env_set_maxdbs(env[0], 64)
assert(lmdb.mdb_env_open(env[0], arg[1], RDONLY, 0) == 0)
assert(lmdb.mdb_txn_begin(env[0], nil, RDONLY, txn) == 0)
ffi.C.kill(ffi.C.getpid(), 9)
]=]

describe("a reader killed inside a read transaction", function()
  it("is freed without a restart: a size-limited L1 keeps evicting and stays under its limit", function()
    local dir = helper.tmpdir()
    local logged = {}
    local limit = 1024 * 1024
    local db = assert(layer2.open(dir, { l1 = { size_limit = limit }, log = function(m) logged[#logged + 1] = m end }))
    local g = require("layer2.gen").new({ seed = 71, authors = 50 })
    local function save(n)
      local batch = {}
      for i = 1, n do
        local ev = g:next()
        ev.content = ("c"):rep(1500)
        batch[i] = assert(layer2.event.sign({ kind = 1, created_at = ev.created_at, tags = {}, content = ev.content },
          g.keys[(i % #g.keys) + 1]))
      end
      local verdicts = assert(db:save_events(batch))
      for _, v in ipairs(verdicts) do assert.is_true(v) end
    end
    save(200)
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(PIN_AND_DIE)
    f:close()
    os.execute(("luajit '%s' '%s/layer1' 2>/dev/null"):format(script, dir))
    os.remove(script)
    -- 6 MB more through a 1 MiB L1, a gc step every batch as a relay's timer does
    for _ = 1, 40 do
      save(100)
      db:gc()
    end
    local st = db:stats()
    assert.is_true(st.l1.used_bytes <= limit, ("L1 uses %d bytes, over its limit of %d"):format(st.l1.used_bytes, limit))
    for _, m in ipairs(logged) do assert.is_nil(m:match("full") or m:match("could not take"), m) end
    local freed = 0
    for _, m in ipairs(logged) do if m:match("^freed 1 reader slot") then freed = freed + 1 end end
    assert.equal(1, freed, table.concat(logged, "\n"))
    -- and L1 answers as L2
    local want = helper.ids(assert(db.l2:query_events({ kinds = { 1 }, limit = 300 })))
    assert.same(want, helper.ids(assert(db:query_events({ kinds = { 1 }, limit = 300 }))))
    db:close()
    helper.rmdir(dir)
  end)
end)
