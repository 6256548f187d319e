-- `layer2 sync` (NIP-77, lua-http) against real example relays on nginx: both directions, each
-- alone, a relay over PostgreSQL, and a run stopped by Ctrl-C then resumed. What each side ends
-- with is compared with the reference model over every event either side had.
local helper = require("spec.helper")
local harness = require("spec.relay.harness")
local layer2 = require("layer2")
local cjson = require("cjson")
local pg = require("spec.pg")

-- Generated events split between two sides: most on both, some on one only.
local function sides(seed, n, only_a, only_b)
  local g = require("layer2.gen").new({ seed = seed, authors = 80 })
  local all, a, b = {}, {}, {}
  for i = 1, n do
    local ev = g:next()
    all[i] = ev
    if i % 7 ~= only_b then a[#a + 1] = ev end
    if i % 7 ~= only_a then b[#b + 1] = ev end
  end
  return all, a, b
end

-- The ids the reference keeps of a list of events, sorted (optionally of one kind).
local function kept(events, kind)
  local model, now = require("spec.ref").new(), os.time()
  for _, ev in ipairs(events) do model:save(ev, now) end
  local ids = {}
  for id, ev in pairs(model.byid) do
    if not kind or ev.kind == kind then ids[#ids + 1] = id end
  end
  table.sort(ids)
  return ids
end

-- The ids a data directory's L2 (or a PostgreSQL L2) holds, sorted.
local function stored(dir, l2, filter)
  local db = assert(layer2.open(dir, { l2 = l2 }))
  local ids = helper.ids(assert(db.l2:query_events(filter or {}, { max_limit = 1000000 })))
  db:close()
  table.sort(ids)
  return ids
end

local function fill(dir, events, l2)
  local db = assert(layer2.open(dir, { l2 = l2 }))
  for i = 1, #events, 5000 do
    local batch = {}
    for k = i, math.min(#events, i + 4999) do batch[#batch + 1] = events[k] end
    assert(db:save_events(batch))
  end
  db:close()
end

local function difference(x, y)
  local in_y, n = {}, 0
  for _, id in ipairs(y) do in_y[id] = true end
  for _, id in ipairs(x) do if not in_y[id] then n = n + 1 end end
  return n
end

-- `layer2 --path DIR [--l2 ...] sync URL FILTER ARGS --json`: the summary decoded, and stderr
local function sync(dir, url, filter, args, l2)
  local code, out, err = helper.cli(("--path %s %s sync %s '%s' %s --json"):format(dir,
    l2 and ("--l2 '%s'"):format(l2) or "", url, cjson.encode(filter), args or ""))
  assert.equal(0, code, err)
  return cjson.decode(out), err
end

local function url(port) return ("ws://127.0.0.1:%d/"):format(port) end

-- body(port, relay_data, store_dir) against a relay started with `extra` (tools/relay options)
-- and a fresh store directory; both go away afterwards, whatever happened.
local function against_relay(extra, body)
  local port, relay_data, stop = harness.start_relay(extra)
  local store_dir = helper.tmpdir()
  local ok, err = pcall(body, port, relay_data, store_dir)
  stop()
  helper.rmdir(store_dir)
  assert(ok, err)
end

-- against_relay with both sides filled: sides(seed, n, only_a, only_b), A's in the store, B's on
-- the relay; body(all, relay port, relay data, store dir)
local function against_filled(seed, n, only_a, only_b, body)
  local all, a, b = sides(seed, n, only_a, only_b)
  against_relay(nil, function(pb, data_b, data_a)
    fill(data_a, a)
    fill(data_b, b)
    body(all, pb, data_b, data_a)
  end)
end

local describe_relay = harness.runs and describe or pending

describe_relay("layer2 sync against the example relay", function()
  setup(harness.setup)

  it("--dir both between two relays: each ends with the reference's events; a second run moves nothing",
    function()
      local all, a, b = sides(71, 4000, 1, 2)
      local pa, data_a, stop_a = harness.start_relay()
      local pb, data_b, stop_b = harness.start_relay()
      local ok, err = pcall(function()
        fill(data_a, a)
        fill(data_b, b)
        local before_a, before_b = stored(data_a), stored(data_b)
        assert.is_true(difference(before_a, before_b) > 400 and difference(before_b, before_a) > 400)
        -- relay A's own data directory (its workers running) against relay B
        local st = sync(data_a, url(pb), {}, "--dir both")
        assert.equal(#before_a, st.items)
        assert.equal(difference(before_a, before_b), st.have)
        assert.equal(difference(before_b, before_a), st.need)
        assert.equal(st.need, st.fetched)
        assert.equal(st.fetched, st.saved + st.duplicate + st.refused)
        assert.equal(st.have, st.published + st.publish_refused + st.gone)
        assert.is_true(st.rounds >= 2)
        local want = kept(all)
        assert.same(want, stored(data_a))
        assert.same(want, stored(data_b))
        -- relay A answers with the same set (its L2 read by its workers): B's side against A
        local again = sync(data_b, url(pa), {}, "--dir both")
        assert.same({ 0, 0, 1, 0, 0 }, { again.have, again.need, again.rounds, again.fetched, again.published })
        assert.equal(#want, again.items)
      end)
      stop_a()
      stop_b()
      assert(ok, err)
    end)

  it("--dir down only fetches, --dir up only publishes, each within its filter", function()
    against_filled(72, 3000, 3, 4, function(all, pb, data_b, data_a)
      local before_a, before_b = stored(data_a), stored(data_b)
      -- down, kind 1 only: A gains B's kind-1 events; B is untouched
      local st, log = sync(data_a, url(pb), { kinds = { 1 } }, "--dir down")
      assert.equal(0, st.published)
      assert.is_true(st.have > 50 and st.need > 50)
      assert.matches("down ws://", log)
      assert.same(before_b, stored(data_b))
      local a1, b1 = stored(data_a, nil, { kinds = { 1 } }), stored(data_b, nil, { kinds = { 1 } })
      assert.equal(0, difference(b1, a1))
      assert.equal(st.have, difference(a1, b1))
      assert.same(kept(all, 1), a1) -- every kind-1 event either side had
      -- up, everything: B gains what only A has, A is untouched
      local a_before_up = stored(data_a)
      st = sync(data_a, url(pb), {}, "--dir up")
      assert.equal(0, st.fetched)
      assert.same(a_before_up, stored(data_a))
      assert.same(kept(all), stored(data_b))
      assert.is_true(#before_a < #a_before_up)
    end)
  end)

  it("over a network that delivers frames in pieces (lua-http's partial-frame bug, fixed as it loads)", function()
    against_filled(76, 1500, 1, 2, function(all, pb, data_b, data_a)
      local port = harness.free_port()
      local proxy = assert(io.popen(("lua5.4 spec/relay/splitter.lua %d %d"):format(port, pb)))
      assert.equal("ready", proxy:read("l"))
      local st = sync(data_a, url(port), {}, "--dir both")
      proxy:close()
      assert.is_true(st.need > 100 and st.have > 100)
      local want = kept(all)
      assert.same(want, stored(data_a))
      assert.same(want, stored(data_b))
    end)
  end)

  it("a relay that answers at most 100 events a REQ: the rest is asked again, in REQs of 100", function()
    local _, _, b = sides(75, 2000, 0, 7) -- everything on B
    against_relay("--max-limit 100", function(pb, data_b, data_a)
      fill(data_b, b)
      local st = sync(data_a, url(pb), {}, "--dir down")
      assert.is_true(st.need > 1500)
      assert.same({ st.need, st.need, 0 }, { st.fetched, st.saved, st.missing })
      assert.same(stored(data_b), stored(data_a))
    end)
  end)

  it("with a relay over PostgreSQL: both ways, then the relay's own PostgreSQL against itself", function()
    local conninfo = pg.fresh()
    local all, a, b = sides(73, 3000, 5, 6)
    against_relay(("--l2 '%s'"):format(conninfo), function(pp, data_p, data_a)
      fill(data_a, a)
      fill(data_p, b, conninfo)
      local st = sync(data_a, url(pp), {}, "--dir both")
      assert.is_true(st.have > 300 and st.need > 300)
      local want = kept(all)
      assert.same(want, stored(data_a))
      assert.same(want, stored(data_p, conninfo))
      -- a node of the same cluster (another L1, the same PostgreSQL) finds nothing to do
      local node = helper.tmpdir()
      st = sync(node, url(pp), {}, "--dir both", conninfo)
      assert.same({ #want, 0, 0, 1 }, { st.items, st.have, st.need, st.rounds })
      helper.rmdir(node)
    end)
  end)

  it("stopped by Ctrl-C after a batch keeps what it stored; run again, it fetches only the rest", function()
    local g = require("layer2.gen").new({ seed = 74, authors = 200 })
    local events = {}
    for i = 1, 20000 do events[i] = g:next() end
    against_relay(nil, function(pb, data_b, data_a)
      fill(data_b, events)
      local total = #stored(data_b)
      -- the sync in its own process group (as a terminal's Ctrl-C reaches each process of the
      -- command), interrupted once 1,000 events are stored
      local script = helper.tmpdir()
      local code, out = helper.cli(("--path %s sync %s '{}' --json"):format(data_a, url(pb)), function(cmd)
        local f = assert(io.open(script, "w"))
        f:write(("setsid env %s & pid=$!\n"):format(cmd),
          ("while kill -0 $pid 2>/dev/null && ! [ -f %s/layer2/data.mdb ]; do sleep 0.05; done\n"):format(data_a),
          "while kill -0 $pid 2>/dev/null; do\n",
          ("  n=$(lua5.4 -e \"local s=require('layer2').lmdb.open('%s/layer2') print(s:count_events({}))\" 2>/dev/null)\n")
            :format(data_a),
          '  [ "${n:-0}" -ge 1000 ] && break\n  sleep 0.05\ndone\nkill -INT -- -$pid\nwait $pid\n')
        f:close()
        return "bash " .. script
      end)
      os.remove(script)
      assert.equal(130, code)
      assert.equal("", out)
      local partial = stored(data_a)
      assert.is_true(#partial >= 1000 and #partial < total, ("%d of %d"):format(#partial, total))
      -- every event stored is whole and one of B's; the rest comes with a second run
      local st = sync(data_a, url(pb), {}, "--dir down")
      assert.equal(total - #partial, st.need)
      assert.equal(st.need, st.saved)
      assert.equal(0, st.duplicate)
      assert.same(stored(data_b), stored(data_a))
      local db = assert(layer2.open(data_a))
      assert.is_true((db:check()))
      db:close()
    end)
  end)
end)

describe("the websocket helpers in C that layer2 sync's lua-http uses", function()
  local ws = require("layer2.core").websocket

  it("mask: XOR with a 4-byte key, its own inverse", function()
    assert.equal("\0\0\0\0\5", ws.mask("\1\2\3\4\4", { 1, 2, 3, 4 }))
    local s = ("nostr \xe2\x9a\xa1 "):rep(1000)
    assert.equal(s, ws.mask(ws.mask(s, { 200, 7, 0, 255 }), { 200, 7, 0, 255 }))
    assert.equal("", ws.mask("", { 1, 2, 3, 4 }))
    assert.has_error(function() ws.mask("x", { 1, 2, 3 }) end, "bad argument #2 to 'mask' (a list of 4 bytes expected)")
    assert.has_error(function() ws.mask("x", { 1, 2, 3, 256 }) end,
      "bad argument #2 to 'mask' (a list of 4 bytes expected)")
  end)

  it("utf8: true for UTF-8, else nil and the position of the first bad byte (surrogates are bad)", function()
    assert.is_true(ws.utf8(""))
    assert.is_true(ws.utf8("plain ascii"))
    assert.is_true(ws.utf8("\xe2\x9a\xa1 \xf0\x9f\x92\x9c \xc3\xa9"))
    assert.same({ nil, 3 }, { ws.utf8("ab\xff") })
    assert.same({ nil, 1 }, { ws.utf8("\xed\xa0\x80") }) -- U+D800
    assert.same({ nil, 2 }, { ws.utf8("a\xe2\x82") }) -- cut short
    assert.same({ nil, 1 }, { ws.utf8("\xc0\xaf") }) -- overlong
  end)
end)
