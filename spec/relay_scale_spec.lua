-- The example relay under load (real nginx, generated events, many ws connections at once):
-- OK means durable, each event of a batch gets its own verdict, live fan-out is exact across
-- both workers, and a flooding connection does not hold another's event back.
local helper = require("spec.helper")
local layer2 = require("layer2")
local ref = require("spec.ref")
local harness = require("spec.relay.harness")
local cjson = require("cjson")

-- Signed events from the generator, split into `parts` lists by author: the nostr rules act
-- per author, so what the relay keeps does not depend on how the parts interleave.
local function parts_by_author(seed, n, parts)
  local g = require("layer2.gen").new({ seed = seed, authors = 400 })
  local out, order = {}, {}
  for i = 1, parts do out[i] = {} end
  for _ = 1, n do
    local ev = g:next()
    local p = order[ev.pubkey]
    if not p then
      p = #order % parts + 1
      order[#order + 1] = ev.pubkey
      order[ev.pubkey] = p
    end
    out[p][#out[p] + 1] = ev
  end
  return out
end

-- Writes events (tables, or JSON lines as they are) to a fresh JSONL file; returns its path.
local function jsonl(events)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  for _, ev in ipairs(events) do f:write(type(ev) == "string" and ev or layer2.event.encode(ev), "\n") end
  f:close()
  return path
end

local function line_count(path)
  local n = 0
  local f = io.open(path)
  if not f then return 0 end
  for _ in f:lines() do n = n + 1 end
  f:close()
  return n
end

-- How two lists of ids differ, briefly.
local function diff(want, got)
  local w, g = {}, {}
  for _, id in ipairs(want) do w[id] = (w[id] or 0) + 1 end
  for _, id in ipairs(got) do g[id] = (g[id] or 0) + 1 end
  local missing, extra, twice = 0, 0, 0
  for id in pairs(w) do if not g[id] then missing = missing + 1 end end
  for id, n in pairs(g) do
    if not w[id] then extra = extra + 1 end
    if n > 1 then twice = twice + 1 end
  end
  local first
  for i = 1, math.max(#want, #got) do
    if want[i] ~= got[i] then first = i break end
  end
  return ("%d wanted, %d got: %d missing, %d not matching, %d more than once; first difference at %s"):format(#want,
    #got, missing, extra, twice, tostring(first))
end

-- What a store holds: id -> true, and how many rows it returned (a twice-stored event shows).
local function stored_ids(db)
  local ids, rows = {}, 0
  for _, ev in ipairs(assert(db:query_events({ limit = 1000000 }, { max_limit = 1000000 }))) do
    ids[ev.id] = true
    rows = rows + 1
  end
  return ids, rows
end

(harness.runs and describe or pending)("the example relay under load", function()
  setup(harness.setup)

  it("says OK true only once an event is durable: SIGKILLed workers lose none of those, none is stored twice",
    function()
    local parts = parts_by_author(71, 24000, 16)
    local files = {}
    for i, p in ipairs(parts) do files[i] = jsonl(p) end
    local acked = os.tmpname()
    local port, data, stop, prefix = harness.start_relay()
    local ok, err = pcall(function()
      local client = harness.spawn_client("scale.mjs", { mode = "durability", url = ("ws://127.0.0.1:%d/"):format(port),
        parts = files, acked = acked })
      -- the kill lands while the clients publish: once a few thousand OKs are in
      while line_count(acked) < 3000 do os.execute("sleep 0.05") end
      assert(harness.sh(("pkill -KILL -P $(cat %s/logs/nginx.pid)"):format(prefix)))
      local res = client:wait()
      -- some events had no answer when the workers died: the kill did land mid-stream
      assert.is_true(#res.second > 0, "every event was answered before the kill")
      local model, now = ref.new(), os.time()
      for _, part in ipairs(parts) do
        for _, ev in ipairs(part) do model:save(ev, now) end
      end
      local db = assert(layer2.open(data))
      local have, rows = stored_ids(db)
      -- every OK true of the first pass (before and after the kill) is stored, unless a later
      -- event of its author replaced or deleted it (acknowledged events are not sent again)
      local n = 0
      for id in io.lines(acked) do
        n = n + 1
        assert(have[id] or not model.byid[id], "acknowledged but not stored: " .. id)
      end
      assert.is_true(n >= 3000)
      -- the second pass: each event answered; one saved before the kill but not acknowledged is a duplicate
      for _, r in ipairs(res.second) do
        assert(r[2] == true or r[3]:match("^duplicate:") or r[3]:match("^blocked:"), r[1] .. ": " .. tostring(r[3]))
      end
      -- the store holds what the rules keep of all events, each once
      local count = 0
      for id in pairs(model.byid) do
        count = count + 1
        if not have[id] then
          -- what the relay said of it, in either pass
          local said = {}
          for pass, oks in pairs({ first = res.first, second = res.second }) do
            for _, r in ipairs(oks) do
              if r[1] == id then said[#said + 1] = ("%s: %s %s"):format(pass, tostring(r[2]), r[3]) end
            end
          end
          error(("kept by the rules but not stored: %s (kind %d; %s)"):format(id, model.byid[id].kind,
            table.concat(said, "; ")))
        end
      end
      assert.equal(count, rows)
      assert.equal(rows, db:count_events({}))
      assert.is_true(db:check())
      db:close()
    end)
    stop()
    os.remove(acked)
    for _, f in ipairs(files) do os.remove(f) end
    assert(ok, err)
  end)

  it("gives each event of a batch its own verdict: valid, invalid, duplicate, replaced, ephemeral, expired, deleted",
    function()
    local now = os.time()
    local keys, parts, models, forged = {}, {}, {}, {}
    local shared = layer2.event.sign({ kind = 1, created_at = now, tags = {}, content = "sent on two connections" },
      ("0"):rep(63) .. "9")
    for c = 1, 4 do
      keys[c] = ("%064x"):format(1000 + c)
      local function ev(kind, at, tags, content)
        return layer2.event.sign({ kind = kind, created_at = at, tags = tags or {}, content = content or "" }, keys[c])
      end
      local note = ev(1, now - 10, {}, "a note " .. c)
      local bad_sig = ev(1, now - 9, {}, "bad signature")
      bad_sig.sig = bad_sig.sig:sub(1, 10) .. (bad_sig.sig:sub(11, 11) == "0" and "1" or "0") .. bad_sig.sig:sub(12)
      local bad_id = ev(1, now - 8, {}, "signed")
      bad_id.content = "changed after signing"
      forged[bad_sig], forged[bad_id] = true, true
      local old_profile, new_profile = ev(0, now - 100, {}, "{}"), ev(0, now - 50, {}, '{"name":"x"}')
      local victim = ev(1, now - 7, {}, "to be deleted")
      local deletion = ev(5, now - 6, { { "e", victim.id } }, "")
      local seq = { note, bad_sig, bad_id, note, old_profile, new_profile, old_profile,
        ev(20001, now, {}, "ephemeral"), ev(1, now - 5, { { "expiration", tostring(now - 1) } }, "expired"),
        victim, deletion, victim, ev(30023, now - 4, { { "d", "post" } }, "v1"), ev(30023, now - 3, { { "d", "post" } }, "v2"),
        shared }
      models[c], parts[c] = ref.new(), seq
    end
    local port, data, stop, prefix = harness.start_relay()
    local files = {}
    for c, seq in ipairs(parts) do
      files[c] = jsonl(seq)
      -- a line no model takes: not JSON an event can be read from
      local f = io.open(files[c], "a")
      f:write('{"id":"', ("a"):rep(64), '","kind":1}\n')
      f:close()
    end
    local ok, err = pcall(function()
      local res = harness.run_client("scale.mjs", { mode = "verdicts", url = ("ws://127.0.0.1:%d/"):format(port),
        parts = files })
      local shared_saved = 0
      for c, seq in ipairs(parts) do
        local oks = res.oks[c]
        assert.equal(#seq + 1, #oks)
        for i, ev in ipairs(seq) do
          local got = oks[i]
          assert.equal(ev.id, got[1])
          if forged[ev] then
            assert.same({ false }, { got[2] })
            assert.matches("^invalid: ", got[3])
          elseif ev == shared then
            -- the same event on four connections: saved once, a duplicate on the others
            if got[2] then shared_saved = shared_saved + 1 else assert.matches("^duplicate: ", got[3]) end
          else
            local want, why = models[c]:save(ev, now)
            assert(got[2] == want, ("connection %d, event %d: %s %s"):format(c, i, tostring(got[2]), got[3]))
            if not want then assert.matches("^" .. why .. ": ", got[3]) end
          end
        end
        assert.is_false(oks[#oks][2])
        assert.matches("^invalid: ", oks[#oks][3])
      end
      assert.equal(1, shared_saved)
      -- the store holds what the rules kept: nothing refused, nothing ephemeral
      local want = { [shared.id] = true }
      for _, model in ipairs(models) do
        for id in pairs(model.byid) do want[id] = true end
      end
      local db = assert(layer2.open(data))
      local have = stored_ids(db)
      db:close()
      assert.same(want, have)
      assert.same({}, harness.log_problems(prefix))
    end)
    stop()
    for _, f in ipairs(files) do os.remove(f) end
    assert(ok, err)
  end)

  it("delivers each live event to exactly the subscriptions whose filters match it, once, in order, in both workers",
    function()
    local g = require("layer2.gen").new({ seed = 91, authors = 60 })
    local events = {}
    for i = 1, 2000 do events[i] = g:next() end
    local rand = helper.rng(17)
    local function pick() return events[rand(#events)] end
    local function tag_value(letter)
      for _ = 1, 50 do
        for _, t in ipairs(pick().tags) do if t[1] == letter and t[2] then return t[2] end end
      end
      return "none"
    end
    local shapes = {
      function() return { { authors = { pick().pubkey } } } end,
      function() return { { kinds = { pick().kind } } } end,
      function() return { { ["#t"] = { tag_value("t"), tag_value("t") } } } end,
      function() return { { ["#p"] = { tag_value("p") } } } end,
      function() return { { ids = { pick().id, pick().id, pick().id } } } end,
      function() return { { authors = { pick().pubkey, pick().pubkey }, kinds = { 1, 7 } } } end,
      function() local e = pick() return { { kinds = { 1 }, since = e.created_at } } end,
      function()
        local e = pick()
        return { { ["#e"] = { tag_value("e") } }, { authors = { e.pubkey }, ["until"] = e.created_at } }
      end,
      function() return { { kinds = { 30023 }, ["#t"] = { tag_value("t") } }, { kinds = { 0, 3 } } } end,
    }
    local subs, filters_of = {}, {}
    for c = 1, 20 do
      subs[c] = {}
      for k = 1, 10 do
        local filters = shapes[rand(#shapes)]()
        for _, f in ipairs(filters) do f.limit = 0 end
        local subid = ("c%d-%d"):format(c, k)
        subs[c][k] = { subid, filters }
        filters_of[subid] = filters
      end
    end
    -- the events the relay keeps, in the order they are published: what live subscribers get
    local model, kept = ref.new(), {}
    for _, ev in ipairs(events) do
      if model:save(ev, os.time()) then kept[#kept + 1] = ev end
    end
    local port, _, stop, prefix = harness.start_relay()
    local file = jsonl(events)
    local sentinel = layer2.event.sign({ kind = 1, created_at = os.time(), tags = { { "t", "layer2-sentinel" } },
      content = "caught up" }, ("0"):rep(63) .. "5")
    local ok, err = pcall(function()
      local client = harness.spawn_client("scale.mjs", { mode = "fanout", url = ("ws://127.0.0.1:%d/"):format(port),
        subs = subs, events = file, sentinel = layer2.event.encode(sentinel), sentinel_tag = "layer2-sentinel" })
      -- the 20 subscribers' connections, and which worker holds each
      local workers = {}
      for _ = 1, 600 do
        local conns = harness.connections(port)
        if #conns >= 20 then
          for _, pid in ipairs(conns) do workers[pid] = true end
          break
        end
        os.execute("sleep 0.05")
      end
      local res = client:wait()
      local nworkers = 0
      for _ in pairs(workers) do nworkers = nworkers + 1 end
      assert.equal(2, nworkers, "the subscribers are not spread over both workers")
      local delivered = 0
      for c = 1, 20 do
        for k = 1, 10 do
          local subid = subs[c][k][1]
          local want = {}
          for _, ev in ipairs(kept) do
            for _, f in ipairs(filters_of[subid]) do
              if ref.match(f, ev) then
                want[#want + 1] = ev.id
                break
              end
            end
          end
          local got = {}
          for _, id in ipairs(res.got[c][subid] or {}) do
            if id ~= sentinel.id then got[#got + 1] = id end
          end
          assert(helper.same(want, got), ("%s %s: %s"):format(subid, cjson.encode(filters_of[subid]), diff(want, got)))
          delivered = delivered + #got
        end
      end
      assert.is_true(delivered > 1000, "the subscriptions matched little: " .. delivered)
      assert.same({}, harness.log_problems(prefix))
    end)
    stop()
    os.remove(file)
    assert(ok, err)
  end)

  it("takes a batch's events from every connection's queue in turn: a flood does not go before another's event",
    function()
    -- one worker, every queue filled before the writer's turn: first-come-first-saved would put the
    -- single event after all 8 x 1,000; in turns, it is the ninth
    local port, _, stop, prefix = harness.start_relay("--workers 1 --conf " .. harness.ROOT .. "/spec/relay/batches.conf")
    local ok, err = pcall(function()
      local p = io.popen(("curl -sf --max-time 120 'http://127.0.0.1:%d/queues?floods=8&each=1000'"):format(port))
      local order = {}
      for line in p:lines() do order[#order + 1] = tonumber(line) end
      p:close()
      assert.equal(8001, #order)
      local first = {}
      for i = 1, 9 do first[i] = order[i] end
      assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 0 }, first)
      -- and the floods go on in turns, across batches too: no flood is ever two events ahead
      local taken = { 0, 0, 0, 0, 0, 0, 0, 0 }
      for i = 10, 8001 do
        local q = order[i]
        taken[q] = taken[q] + 1
        assert(taken[q] - math.min(table.unpack(taken)) <= 1, "queue " .. q .. " went ahead of its turn at " .. i)
      end
      assert.same({}, harness.log_problems(prefix))
    end)
    stop()
    assert(ok, err)
  end)

  it("reconciles with nostr-tools' NIP-77 client (NegentropySync): each side learns exactly what it lacks", function()
    local g = require("layer2.gen").new({ seed = 61, authors = 50 })
    local events, plain = {}, nil
    for i = 1, 11500 do
      events[i] = g:next()
      if not plain and events[i].kind == 1 then plain = events[i] end
    end
    local port, data, stop, prefix = harness.start_relay()
    local ok, err = pcall(function()
      -- the relay's store takes them (another process on the same data directory)
      local db = assert(layer2.open(data))
      assert(db:save_events({ table.unpack(events, 1, 5750) }))
      assert(db:save_events({ table.unpack(events, 5751) }))
      local rand = helper.rng(8)
      local function fabricated(n, like)
        local out = {}
        for i = 1, n do
          local parts = {}
          for k = 1, 8 do parts[k] = ("%08x"):format(rand(2147483646) * 2 % 4294967296) end
          -- timestamps of stored events: ties with them
          out[i] = { at = like[rand(#like)].created_at, id = table.concat(parts) }
        end
        return out
      end
      local runs, want = {}, {}
      -- filters matching 10,000 and more, thousands, 1 and 0 events
      local filters = { {}, { kinds = { 1 } }, { ids = { plain.id } }, { authors = { ("e"):rep(64) } } }
      for r, filter in ipairs(filters) do
        local held = assert(db.l2:query_events(filter, { max_limit = 100000 }))
        local items, only_relay, only_client = {}, {}, {}
        for _, ev in ipairs(held) do
          if rand(5) == 1 then only_relay[#only_relay + 1] = ev.id else items[#items + 1] = ev end
        end
        for _, it in ipairs(fabricated(r >= 3 and 40 or 150, events)) do
          items[#items + 1] = { created_at = it.at, id = it.id }
          only_client[#only_client + 1] = it.id
        end
        table.sort(only_relay)
        table.sort(only_client)
        local lines = {}
        for i, ev in ipairs(items) do lines[i] = ("%d %s"):format(ev.created_at, ev.id) end
        local file = os.tmpname()
        local f = assert(io.open(file, "w"))
        f:write(table.concat(lines, "\n"), "\n")
        f:close()
        runs[r] = { filter = filter, items = file }
        want[r] = { need = only_relay, have = only_client, held = #held }
      end
      db:close()
      assert.is_true(want[1].held >= 10000 and want[2].held > 5000, want[1].held .. " and " .. want[2].held)
      assert.same({ 1, 0 }, { want[3].held, want[4].held })
      -- past the relay's 256 KiB: refused by verb, the connection kept (the REQ after them answered)
      local long = ("00"):rep(140000)
      local long_id = ("ab"):rep(32)
      local res = harness.run_client("neg.mjs", { url = ("ws://127.0.0.1:%d/"):format(port), runs = runs,
        bad = { '["NEG-MSG","nosuch","61"]', '["NEG-OPEN","bad",{"kinds":[1]},"zz"]', '["NEG-OPEN","v2",{},"62"]',
          '["NEG-OPEN","x",5,"61"]', '["NEG-OPEN","long",{},"61' .. long .. '"]',
          '["EVENT",{"id":"' .. long_id .. '","content":"' .. long .. '"}]',
          '["REQ","longreq",{"ids":["' .. long .. '"]}]', '["REQ","r",{"limit":1}]' },
        bad_replies = 9, huge_bytes = 1100000 })
      for r = 1, #runs do
        os.remove(runs[r].items)
        local got = res.runs[r]
        table.sort(got.need)
        table.sort(got.have)
        assert.same(want[r].need, got.need, "run " .. r .. ": what the client lacks")
        assert.same(want[r].have, got.have, "run " .. r .. ": what the relay lacks")
      end
      assert.same({
        { "NEG-ERR", "nosuch", "closed: no negentropy session with this id" },
        { "NEG-ERR", "bad", "invalid: a negentropy message is lowercase hex" },
        { "NEG-MSG", "v2", "61" },
        { "NEG-ERR", "x", "invalid: NEG-OPEN needs a filter and an initial message" },
        { "NEG-ERR", "long", "blocked: a message of more than 262144 bytes" },
        { "OK", long_id, false, "blocked: a message of more than 262144 bytes" },
        { "CLOSED", "longreq", "blocked: a message of more than 262144 bytes" },
      }, { table.unpack(res.errors, 1, 7) })
      assert.same({ "EVENT", "EOSE" }, { res.errors[8][1], res.errors[9][1] })
      -- past 1 MiB the relay reads no further and closes: with 1009 (message too big) when its
      -- close frame reaches the client before the reset the unread bytes cause, else as 1006
      assert.is_true(res.huge.code == 1009 or res.huge.code == 1006, tostring(res.huge.code))
      assert.same({}, harness.log_problems(prefix))
    end)
    stop()
    assert(ok, err)
  end)
end)
