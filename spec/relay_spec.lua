-- The example relay (examples/openresty) on real nginx with 2 workers, driven by nostr-tools.
-- It runs once, in the Lua 5.4 pass: nginx itself always runs LuaJIT.
local helper = require("spec.helper")
local pg = require("spec.pg")
local layer2 = require("layer2")
local ref = require("spec.ref")
local cjson = require("cjson")

local harness = require("spec.relay.harness")
local start_relay = harness.start_relay
local relay_limits = { max_filters = 10 }

(harness.runs and describe or pending)("the example relay on nginx, driven by nostr-tools", function()

  setup(harness.setup)

  local function config(corpus, events, port, rand, live_key)
    local filters = {}
    for i = 1, 120 do
      local e = events[rand(#events)]
      local f = ({ { kinds = { e.kind }, limit = rand(30) }, { authors = { e.pubkey } }, { ids = { e.id } },
        { kinds = { 1 }, since = e.created_at, limit = 20 }, { ["#p"] = { e.pubkey }, limit = 10 } })[i % 5 + 1]
      filters[i] = f
    end
    local live = {}
    for i = 1, 3 do
      live[i] = layer2.event.sign({ kind = 1111, created_at = os.time() - 10 + i, tags = { { "t", "layer2-live" } },
        content = "live " .. i }, live_key)
    end
    local after = layer2.event.sign({ kind = 1111, created_at = os.time(), tags = { { "t", "layer2-live" } },
      content = "after close" }, live_key)
    local sentinel = layer2.event.sign({ kind = 1112, created_at = os.time(), tags = { { "t", "layer2-live" } },
      content = "delivery has caught up" }, live_key)
    return { url = ("ws://127.0.0.1:%d/"):format(port), valid = corpus.valid, invalid = corpus.invalid,
      filters = filters, live = live, after_close = after, sentinel = sentinel }
  end

  helper.each_corpus(pending, "NIP-01 through the relay", function(corpus)
  local events = {}
  for i, line in ipairs(helper.lines(corpus.valid)) do events[i] = layer2.event.parse(line) end
  local answers = {}

  local variants = { { name = "unlimited L1" }, { name = "a 1 MiB L1", extra = "--l1-limit 1048576" },
    { name = "a PostgreSQL L2 shared with a second relay (live events cross over)", pg = true } }
  for _, variant in ipairs(variants) do
    it("speaks NIP-01 with " .. variant.name .. " (" .. corpus.name .. " events)", function()
      local conninfo, stop2, port2
      if variant.pg then
        conninfo = pg.fresh()
        variant.extra = ("--l2 '%s' --notify --l1-limit 1048576"):format(conninfo)
        port2, _, stop2 = start_relay(variant.extra)
      end
      local port, data, stop = start_relay(variant.extra)
      local ok, err = pcall(function()
        local cfg = config(corpus, events, port, helper.rng(99), ("0"):rep(63) .. "d")
        if port2 then cfg.watch_url = ("ws://127.0.0.1:%d/"):format(port2) end
        local res = harness.run_client("client.mjs", cfg)
        -- every real event: OK true, or the refusal the rules give
        local model, now = ref.new(), os.time()
        assert.equal(#events, #res.valid)
        for i, ev in ipairs(events) do
          local want, prefix = model:save(ev, now, 900) -- layer2.open's future_limit
          local got = res.valid[i]
          assert(got[1] == want, ("event %d: relay says %s %s"):format(i, tostring(got[1]), tostring(got[2])))
          if not want then assert.matches("^" .. prefix .. ":", got[2]) end
        end
        -- every invalid one refused, nothing of them stored
        assert.equal(corpus.counts.invalid, #res.invalid)
        for _, r in ipairs(res.invalid) do
          assert.same({ "OK", false }, { r[1], r[3] })
          assert.matches("^invalid: ", r[4])
        end
        -- the store holds what the rules accepted and the 5 live events: nothing of the invalid ones
        local db = assert(conninfo and layer2.postgres.open(conninfo) or layer2.open(data))
        assert.equal(model:count() + 5, db:count_events({}))
        -- REQ answers equal the store's own query
        assert.equal(120, #res.reqs)
        for i, f in ipairs(cfg.filters) do
          local want = {}
          for k, ev in ipairs(db:query_events(f, { max_limit = 500 })) do want[k] = ev.id end
          assert.same(want, res.reqs[i], "filter " .. i .. ": " .. cjson.encode(f))
        end
        answers[#answers + 1] = res.reqs
        assert.equal(db:count_events({ kinds = { 1 } }), type(res.count) == "table" and res.count.count or res.count)
        db:close()
        -- live events reach a subscriber on another connection; CLOSE stops them
        local live_ids = {}
        for i, ev in ipairs(cfg.live) do live_ids[i] = ev.id end
        table.sort(live_ids)
        table.sort(res.live_seen)
        assert.same(live_ids, res.live_seen)
        assert.equal(0, res.after_close_seen)
        -- NIP-11 and the metrics page
        local nip11 = cjson.decode(io.popen(("curl -s -H 'Accept: application/nostr+json' http://127.0.0.1:%d/")
          :format(port)):read("a"))
        assert.equal("layer2", nip11.software)
        assert.equal(relay_limits.max_filters, nip11.limitation.max_filters)
        local metrics = io.popen(("curl -s http://127.0.0.1:%d/metrics"):format(port)):read("a")
        assert.matches('layer2_events{level="l2"} %d+', metrics)
        assert.matches("layer2_outbox 0", metrics)
        -- malformed frames: a NOTICE each, and the connection goes on
        assert.same({ "NOTICE", "NOTICE", "NOTICE", "EVENT", "EOSE" },
          { res.raw[1][1], res.raw[2][1], res.raw[3][1], res.raw[4][1], res.raw[5][1] })
      end)
      stop()
      if stop2 then stop2() end
      assert(ok, err)
    end)
  end

  it("a size-limited L1, and a PostgreSQL L2, return the same answers as an unlimited L1 (" .. corpus.name
    .. " events)", function()
    assert.equal(3, #answers)
    assert.same(answers[1], answers[2])
    assert.same(answers[1], answers[3])
  end)
  end)

  it("an ephemeral event reaches the subscribers of every relay of a cluster on one PostgreSQL (NOTIFY), once",
    function()
    local extra = ("--l2 '%s' --notify"):format(pg.fresh())
    local port, _, stop = start_relay(extra)
    local port2, _, stop2 = start_relay(extra)
    local ok, err = pcall(function()
      -- a subscriber on each relay: the other node's and the publishing node's own
      for _, watch in ipairs({ port2, port }) do
        local res = harness.run_client("ephemeral.mjs", { url = ("ws://127.0.0.1:%d/"):format(port),
          watch_url = ("ws://127.0.0.1:%d/"):format(watch), key = ("0"):rep(63) .. "e" })
        assert.is_true(res.ok)
        assert.same({ res.id }, res.seen)
      end
      assert.equal(0, layer2.postgres.open((extra:match("'(.-)'"))):count_events({ kinds = { 20001 } }))
    end)
    stop()
    stop2()
    assert(ok, err)
  end)
end)
