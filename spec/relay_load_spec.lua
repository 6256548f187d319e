-- The example relay against hostile clients (real nginx, raw websocket clients): readers that
-- read nothing pin a bounded amount of a worker's memory and are closed as documented while
-- other clients are answered; fragments, pings and a failed REQ reusing an id behave as the
-- websocket and NIP-01 say.
local layer2 = require("layer2")
local harness = require("spec.relay.harness")
-- Lua 5.3+ (its bit operators): loaded only where the relay specs run
local rawws = harness.runs and require("spec.relay.rawws")

local SEC = ("5"):rep(63) .. "3"
local NOW = os.time()
-- small bounds, so the run shows them quickly (relay.lua's defaults are larger)
local LIMITS = { max_queued_bytes = 256 * 1024, max_unsent_bytes = 1024 * 1024, send_timeout = 5 }

local function limit_args(changed)
  local out = {}
  for name, value in pairs(LIMITS) do
    out[#out + 1] = ("--limit %s=%d"):format(name, changed and changed[name] or value)
  end
  return table.concat(out, " ")
end

local function note(i, content_bytes, kind)
  return assert(layer2.event.sign({ created_at = NOW - 1000 + i, kind = kind or 1, tags = {},
    content = ("n%d "):format(i) .. ("x"):rep(content_bytes) }, SEC))
end

-- Reads connection c until n OKs have come, each true.
local function await_oks(c, n)
  local oks = 0
  assert(c:read_until(function(msg)
    if msg[1] == "OK" then
      assert.is_true(msg[3], tostring(msg[4]))
      oks = oks + 1
    end
    return oks == n
  end))
end

-- Publishes events over one connection and returns once every OK has come, each true.
local function publish(port, events)
  local c = assert(rawws.connect(port))
  for _, ev in ipairs(events) do assert(c:send_text('["EVENT",' .. layer2.event.encode(ev) .. "]")) end
  await_oks(c, #events)
  c:close()
end

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

-- Each worker's resident memory now and at its peak (kB), by pid.
local function worker_memory(prefix)
  local master = read(prefix .. "/logs/nginx.pid"):match("%d+")
  local out = {}
  local p = io.popen("pgrep -P " .. master)
  for pid in p:lines() do
    local status = read("/proc/" .. pid .. "/status")
    out[pid] = { rss = tonumber(status:match("VmRSS:%s*(%d+)")), peak = tonumber(status:match("VmHWM:%s*(%d+)")) }
  end
  p:close()
  return out
end

-- Waits until `cond()` holds, up to `seconds`; returns whether it did.
local function eventually(seconds, cond)
  local deadline = os.time() + seconds
  while os.time() <= deadline do
    if cond() then return true end
    os.execute("sleep 0.2")
  end
  return cond()
end

(harness.runs and describe or pending)("the example relay against hostile clients", function()
  local port, stop, prefix

  setup(function()
    local _
    port, _, stop, prefix = harness.start_relay(limit_args())
  end)
  teardown(function() stop() end)

  it("readers that read nothing pin a bounded amount of memory, are closed after send_timeout, and never hold "
    .. "up others", function()
    -- 400 stored notes of 2 KB: a REQ for them is an answer of about 900 KB
    local events = {}
    for i = 1, 400 do events[i] = note(i, 2000) end
    publish(port, events)
    local function full_answer(c, subid)
      assert(c:send_json({ "REQ", subid, { kinds = { 1 }, limit = 500 } }))
      local got = assert(c:read_until(function(msg) return msg[1] == "EOSE" end))
      for i = 1, #got - 1 do assert.same({ "EVENT", subid }, { got[i][1], got[i][2] }) end
      return #got - 1
    end
    -- a reader that does read: the workers' baseline is taken after it warmed them
    local reader = assert(rawws.connect(port))
    for i = 1, 4 do assert.equal(400, full_answer(reader, "warm" .. i)) end
    local before = worker_memory(prefix)

    -- 10 clients each ask for the 400 notes 100 times over 15 subscription ids, and read nothing
    -- (100 answers are 90 MB a client: without backpressure the worker would hold them)
    local slow = {}
    for i = 1, 10 do
      local c = assert(rawws.connect(port))
      local batch = {}
      for r = 1, 100 do batch[r] = rawws.frame(rawws.TEXT, ('["REQ","s%d",{"kinds":[1],"limit":500}]'):format(r % 15)) end
      assert(c:send_raw(table.concat(batch)))
      slow[i] = c
    end
    -- meanwhile the reader is answered, in full, again and again
    for i = 1, 5 do assert.equal(400, full_answer(reader, "again" .. i)) end

    -- the slow connections are closed by the relay once their writes made no progress for
    -- send_timeout: only the reader's is left
    assert.is_true(eventually(LIMITS.send_timeout + 60, function() return #harness.connections(port) == 1 end),
      ("connections still open: %d"):format(#harness.connections(port)))
    local after = worker_memory(prefix)
    -- each slow connection may pin max_unsent_bytes twice (the frames, nginx's copy) and one
    -- answer (its JSON strings and their frames); 32 MB more for what the garbage collector
    -- keeps before it runs
    local answer = 2 * 400 * 2100
    local bound = math.floor(10 * (2 * LIMITS.max_unsent_bytes + answer) / 1024) + 32 * 1024
    for pid, m in pairs(after) do
      local grew = m.peak - (before[pid] and before[pid].rss or m.peak)
      assert.is_true(grew < bound, ("worker %s grew by %d kB at its peak, over the bound of %d kB"):format(pid, grew,
        bound))
    end
    assert.equal(400, full_answer(reader, "after"))
    reader:close()
    for _, c in ipairs(slow) do c:close() end
  end)

  it("closes a subscriber that lets live events pile up past max_unsent_bytes, with a NOTICE saying so", function()
    -- a relay whose writes wait longer than the publishing below takes: the client reads once
    -- it is done, and the relay's last write (the NOTICE) reaches it
    local port2, _, stop2 = harness.start_relay(limit_args({ send_timeout = 120 }))
    finally(stop2)
    local idle = assert(rawws.connect(port2))
    assert(idle:send_json({ "REQ", "live", { kinds = { 7 } } }))
    assert(idle:read_until(function(msg) return msg[1] == "EOSE" end))
    -- 24 MB of live events: more than the kernel's socket buffers take, and max_unsent_bytes
    local events = {}
    for i = 1, 400 do events[i] = note(i, 60000, 7) end
    publish(port2, events)
    -- the client reads now: what reached it ends with the NOTICE, then the connection closes
    local got, why, seen = idle:read_until(function() return false end)
    assert.is_nil(got)
    local notices = {}
    for _, msg in ipairs(seen or {}) do if msg[1] == "NOTICE" then notices[#notices + 1] = msg[2] end end
    assert.is_true(why == "closed" or why == "timeout", tostring(why))
    assert.same({ ("closed: more than %d bytes unsent, the connection reads too slowly"):format(
      LIMITS.max_unsent_bytes) }, notices)
    idle:close()
  end)

  it("reassembles fragmented messages, answers pings between them and during a large answer", function()
    local c = assert(rawws.connect(port))
    local req = '["REQ","frag",{"kinds":[1],"limit":500}]'
    assert(c:send_raw(rawws.frame(rawws.TEXT, req:sub(1, 10), false) .. rawws.frame(rawws.PING, "p1")
      .. rawws.frame(rawws.CONTINUATION, req:sub(11, 20), false) .. rawws.frame(rawws.CONTINUATION, req:sub(21), true)))
    for i = 2, 21 do assert(c:send_raw(rawws.frame(rawws.PING, "p" .. i))) end
    local got = assert(c:read_until(function(msg) return msg[1] == "EOSE" end))
    assert.equal(401, #got)
    -- the pongs, each with its ping's payload, in order (one writer: none lost to a collision)
    local pongs = {}
    assert(c:send_json({ "REQ", "sync", { kinds = { 1 }, limit = 1 } }))
    assert(c:read_until(function(msg) return msg[1] == "EOSE" and msg[2] == "sync" end))
    for _, f in ipairs(c.control or {}) do
      if f.opcode == rawws.PONG then pongs[#pongs + 1] = f.payload end
    end
    local want = {}
    for i = 1, 21 do want[i] = "p" .. i end
    assert.same(want, pongs)
    -- a continuation with no message begun is a protocol error: closed with status 1002
    assert(c:send_raw(rawws.frame(rawws.CONTINUATION, "x", true)))
    local _, why = c:recv_json()
    assert.equal("closed", why)
    assert.equal(1002, string.unpack(">I2", c.control[#c.control].payload))
    c:close()
  end)

  it("a REQ that reuses a live subscription's id and is refused ends that subscription too", function()
    local c = assert(rawws.connect(port))
    assert(c:send_json({ "REQ", "a", { kinds = { 9 } } }))
    assert(c:read_until(function(msg) return msg[1] == "EOSE" end))
    assert(c:send_json({ "REQ", "a", { kinds = "nine" } }))
    local got = assert(c:read_until(function(msg) return msg[1] == "CLOSED" end))
    assert.equal("a", got[#got][2])
    assert.matches("^invalid:", got[#got][3])
    -- a witness subscription on the same connection: the event reaches both in one delivery
    assert(c:send_json({ "REQ", "witness", { kinds = { 9 } } }))
    assert(c:read_until(function(msg) return msg[1] == "EOSE" end))
    publish(port, { note(1, 10, 9) })
    got = assert(c:read_until(function(msg) return msg[1] == "EVENT" and msg[2] == "witness" end))
    assert(c:send_json({ "REQ", "z", { kinds = { 9 }, limit = 0 } }))
    local rest = assert(c:read_until(function(msg) return msg[1] == "EOSE" and msg[2] == "z" end))
    for _, msg in ipairs(got) do assert.are_not.equal("a", msg[2]) end
    for _, msg in ipairs(rest) do assert.are_not.equal("a", msg[2]) end
    c:close()
  end)

  it("holds a worker's negentropy sessions to one budget: refused before any scan once it is spent", function()
    local port1, _, stop1 = harness.start_relay("--workers 1 --limit max_negentropy_records=300 "
      .. "--limit max_negentropy_worker_records=500")
    finally(stop1)
    local events = {}
    for i = 1, 350 do events[i] = note(i, 10, 30) end
    publish(port1, events)
    local function initial()
      local s = layer2.negentropy()
      assert(s:seal())
      return assert(s:initiate())
    end
    -- 200 events; all 350 are more than a session may cover
    local some = { kinds = { 30 }, since = NOW - 1000 + 151 }
    local function neg_open(c, subid, filter)
      assert(c:send_json({ "NEG-OPEN", subid, filter, initial() }))
      local got = assert(c:read_until(function(msg) return msg[2] == subid end))
      return got[#got]
    end
    local a, b, c = assert(rawws.connect(port1)), assert(rawws.connect(port1)), assert(rawws.connect(port1))
    assert.equal("NEG-MSG", neg_open(a, "na", some)[1])
    assert.equal("NEG-MSG", neg_open(b, "nb", some)[1])
    -- 400 of 500 held: 100 left, fewer than the filter's 200
    local busy = "blocked: this relay is reconciling as much as it can now; try again later"
    assert.same({ "NEG-ERR", "nc", busy }, neg_open(c, "nc", some))
    assert.same({ "NEG-ERR", "nd", busy }, neg_open(c, "nd", { kinds = { 30 } }))
    -- a session ended gives its records back
    assert(a:send_json({ "NEG-CLOSE", "na" }))
    assert.equal("NEG-MSG", neg_open(c, "nc", some)[1])
    -- a connection that goes away gives them back too
    b:close()
    assert.is_true(eventually(30, function()
      local d = assert(rawws.connect(port1))
      local reply = neg_open(d, "ne", some)
      d:close()
      return reply[1] == "NEG-MSG"
    end))
    -- past a session's own limit, the filter is too wide whatever the budget
    local e = assert(rawws.connect(port1))
    assert(c:send_json({ "NEG-CLOSE", "nc" }))
    assert.same({ "NEG-ERR", "nf", "blocked: the filters match more than 300 events; narrow them" },
      neg_open(e, "nf", { kinds = { 30 } }))
    -- COUNT over overlapping filters counts each event once
    assert(e:send_json({ "COUNT", "k", { kinds = { 30 } }, some, { kinds = { 30 }, ["until"] = NOW - 1000 + 10 } }))
    local got = assert(e:read_until(function(msg) return msg[1] == "COUNT" or msg[1] == "CLOSED" end))
    assert.same({ "COUNT", "k", { count = 350 } }, got[#got])
    for _, x in ipairs({ a, c, e }) do x:close() end
  end)

  it("a size-limited L1 behind the relay takes what L2 answers (written from the thread pool): answers equal L2's "
    .. "during a flood, and what was read twice is in L1 after", function()
    -- 40 events in L2 only (an import leaves L1 empty, its horizon past them)
    local data, imported = require("spec.helper").tmpdir(), {}
    for i = 1, 40 do imported[i] = note(i - 3000, 50, 30) end
    local db = assert(layer2.open(data, { l1 = { size_limit = 64 * 2 ^ 20 }, log = function() end }))
    local k = 0
    assert(db:import(function()
      k = k + 1
      return imported[k] and layer2.event.encode(imported[k])
    end))
    assert.same({ 0, 40 }, { db:stats().l1.events, db:stats().l2.events })
    db:close()
    -- one worker: the flood's batches and the reads share its event loop and its pool
    local port1, _, stop1 = harness.start_relay("--workers 1 --l1-limit 67108864", data)
    finally(stop1)
    local flood, reader = assert(rawws.connect(port1)), assert(rawws.connect(port1))
    local frames = {}
    for i = 1, 2000 do frames[i] = rawws.frame(rawws.TEXT, '["EVENT",' .. layer2.event.encode(note(i - 6000, 100, 40)) .. "]") end
    assert(flood:send_raw(table.concat(frames)))
    local newest_first, some = {}, {}
    for i = 40, 1, -1 do newest_first[#newest_first + 1] = imported[i].id end
    for i = 1, 40, 3 do some[#some + 1] = imported[i].id end
    local function ask(subid, filter)
      assert(reader:send_json({ "REQ", subid, filter }))
      local got = {}
      assert(reader:read_until(function(msg)
        if msg[1] == "EVENT" and msg[2] == subid then got[#got + 1] = msg[3].id end
        return msg[1] == "EOSE" and msg[2] == subid
      end))
      return got
    end
    -- each read twice while the flood is saved: the second makes L1 admit them
    for round = 1, 3 do
      assert.same(newest_first, ask("k" .. round, { kinds = { 30 }, limit = 40 }), "round " .. round)
      local got = ask("i" .. round, { ids = some })
      table.sort(got)
      table.sort(some)
      assert.same(some, got, "round " .. round)
    end
    await_oks(flood, 2000)
    local function l1_events()
      local m = io.popen(("curl -s http://127.0.0.1:%d/metrics"):format(port1)):read("a")
      return tonumber(m:match('layer2_events{level="l1"} (%d+)'))
    end
    -- the pool wrote the fills: the flood's events and the 40 read twice
    assert(eventually(10, function() return l1_events() == 2040 end), "L1 holds " .. tostring(l1_events()))
    assert.same(newest_first, ask("after", { kinds = { 30 }, limit = 40 }))
    flood:close()
    reader:close()
  end)

  it("saves a lone connection's EVENTs beside a flood's batches (express batches): each OK true, each stored once",
    function()
      -- one worker: both connections on it, so the lone one's EVENTs arrive while its writer is busy
      local port1, _, stop1 = harness.start_relay("--workers 1")
      finally(stop1)
      local flood, lone = assert(rawws.connect(port1)), assert(rawws.connect(port1))
      local frames = {}
      for i = 1, 3000 do
        local ev = note(i - 4000, 100, 40)
        frames[i] = rawws.frame(rawws.TEXT, '["EVENT",' .. layer2.event.encode(ev) .. "]")
      end
      assert(flood:send_raw(table.concat(frames)))
      -- one at a time, each OK awaited, while the flood is being written
      for i = 1, 10 do
        local ev = note(i - 5000, 10, 41)
        assert(lone:send_text('["EVENT",' .. layer2.event.encode(ev) .. "]"))
        local got = assert(lone:read_until(function(msg) return msg[1] == "OK" end))
        assert.same({ "OK", ev.id, true, "" }, got[#got])
      end
      await_oks(flood, 3000)
      assert(lone:send_json({ "COUNT", "f", { kinds = { 40 } } }))
      assert(lone:send_json({ "COUNT", "l", { kinds = { 41 } } }))
      local counts = {}
      assert(lone:read_until(function(msg)
        if msg[1] == "COUNT" then counts[msg[2]] = msg[3].count end
        return counts.f and counts.l
      end))
      assert.same({ f = 3000, l = 10 }, counts)
      flood:close()
      lone:close()
    end)
end)
