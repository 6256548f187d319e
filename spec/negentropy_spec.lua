-- NIP-77 negentropy (csrc/negentropy.c) against an implementation of its own: nostr-tools'
-- (npm) initiates, layer2's session answers as a relay does, and what each side finds missing
-- equals the brute-force set difference. Then layer2 on both sides, and bad messages.
local layer2 = require("layer2")
local helper = require("spec.helper")
local cjson = require("cjson")

local ROOT = io.popen("pwd"):read("l")
local NODE_DIR = ROOT .. "/build/node"

-- `n` shared items, `mine` only in the first set, `theirs` only in the second; created_at drawn
-- from a narrow range, so many items share one (ids then order them).
local function sets(seed, n, mine, theirs)
  local rand = helper.rng(seed)
  local function item()
    local parts = {}
    for i = 1, 8 do parts[i] = ("%08x"):format(rand(2147483646) * 2 % 4294967296) end
    return { at = 1700000000 + rand(math.max(1, math.floor((n + mine + theirs) / 8))), id = table.concat(parts) }
  end
  local a, b, only_a, only_b = {}, {}, {}, {}
  for _ = 1, n do
    local it = item()
    a[#a + 1], b[#b + 1] = it, it
  end
  for _ = 1, mine do
    local it = item()
    a[#a + 1], only_a[#only_a + 1] = it, it.id
  end
  for _ = 1, theirs do
    local it = item()
    b[#b + 1], only_b[#only_b + 1] = it, it.id
  end
  table.sort(only_a)
  table.sort(only_b)
  return a, b, only_a, only_b
end

local function write_items(list)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  for _, it in ipairs(list) do f:write(it.at, " ", it.id, "\n") end
  f:close()
  return path
end

local function session(list, limit)
  local s = assert(layer2.negentropy(limit))
  for _, it in ipairs(list) do assert(s:add(it.at, it.id)) end
  assert(s:seal())
  return s
end

local function sorted(t)
  table.sort(t)
  return t
end

describe("NIP-77 negentropy", function()
  setup(function()
    if not io.open(NODE_DIR .. "/node_modules/nostr-tools/package.json") then
      assert(os.execute(("mkdir -p %s && cd %s && npm install --silent --no-audit --no-fund nostr-tools@2 ws@8 "
        .. ">/dev/null 2>&1"):format(NODE_DIR, NODE_DIR)), "npm install nostr-tools ws failed")
    end
    assert(os.execute(("cp %s/spec/negentropy/client.mjs %s/negentropy-client.mjs"):format(ROOT, NODE_DIR)))
  end)

  local cases = { { "both empty", 0, 0, 0 }, { "one item only here", 0, 1, 0 }, { "one item only there", 0, 0, 1 },
    { "one shared item", 1, 0, 0 }, { "10,000 items, 300 and 200 different", 10000, 300, 200 },
    { "10,000 items, all different", 0, 5000, 5000 }, { "10,000 shared, none different", 10000, 0, 0 } }
  for i, c in ipairs(cases) do
    it("finds what nostr-tools' initiator lacks and has: " .. c[1], function()
      -- layer2 answers as the relay (ours = a); nostr-tools initiates with b
      local a, b, only_a, only_b = sets(i, c[2], c[3], c[4])
      local fa, fb = write_items(a), write_items(b)
      local peer = ("%s %s/spec/negentropy/peer.lua %s 60000"):format(helper.LUA, ROOT, fa)
      local p = io.popen(("cd %s && node negentropy-client.mjs %s %s"):format(NODE_DIR, fb, peer))
      local out = p:read("a")
      p:close()
      os.remove(fa)
      os.remove(fb)
      local ok, res = pcall(cjson.decode, out)
      assert(ok, "the client failed: " .. out)
      -- the initiator has what only it holds, needs what only the relay holds
      assert.same(only_b, sorted(res.have))
      assert.same(only_a, sorted(res.need))
      assert.is_true(res.rounds >= 1)
    end)
  end

  local function against_itself(seed, shared, mine, theirs, limit)
    local a, b, only_a, only_b = sets(seed, shared, mine, theirs)
    local client, relay = session(b, limit), session(a, limit)
    local have, need, rounds = {}, {}, 0
    local msg = assert(client:initiate())
    while msg do
      rounds = rounds + 1
      assert(#msg / 2 <= limit, "a frame over the limit")
      local reply = assert(relay:reconcile(msg))
      assert(#reply / 2 <= limit, "a frame over the limit")
      local h, n
      msg, h, n = client:reconcile(reply)
      for _, id in ipairs(h) do have[#have + 1] = id end
      for _, id in ipairs(n) do need[#need + 1] = id end
    end
    assert.same(only_b, sorted(have))
    assert.same(only_a, sorted(need))
    return rounds
  end

  it("reconciles layer2 against itself at the smallest frame, its ranges cut and carried over", function()
    -- 4,096-byte frames: id lists cut short, the rest of a range fingerprinted for the next round
    assert.is_true(against_itself(43, 3000, 1500, 1200, 4096) > 8)
  end)

  it("reconciles layer2 against itself, frames bounded, in few rounds", function()
    local rounds = against_itself(42, 20000, 1000, 700, 60000)
    assert.is_true(rounds <= 8, rounds .. " rounds")
  end)

  it("store:negentropy_items lists what a REQ's filters match, on LMDB and on PostgreSQL, as the reference", function()
    local g = require("layer2.gen").new({ seed = 44, authors = 40 })
    local model, now = require("spec.ref").new(), os.time()
    local events = {}
    for i = 1, 2000 do
      events[i] = g:next()
      model:save(events[i], now)
    end
    local someone = events[7].pubkey
    local filter_cases = {
      { {} },
      { { kinds = { 1 } } },
      { { kinds = { 1 }, limit = 50 } },
      { { kinds = { 0 } }, { kinds = { 3 }, limit = 5 }, { authors = { someone } } },
      { { authors = { someone }, since = events[500].created_at } },
      { { ids = { events[1].id, events[2].id, ("0"):rep(64) } } },
    }
    local stores = { lmdb = assert(layer2.lmdb.open(helper.tmpdir())),
      postgres = assert(layer2.postgres.open((require("spec.pg").fresh()))) }
    for kind, store in pairs(stores) do
      for i = 1, #events, 1000 do assert(store:save_events({ table.unpack(events, i, math.min(#events, i + 999)) })) end
      for n, filters in ipairs(filter_cases) do
        local items = assert(store:negentropy_items(filters, { max = 100000 }))
        local got, want = {}, {}
        for k = 1, #items, 40 do
          local at = 0
          for b = 0, 7 do at = at * 256 + items:byte(k + b) end
          got[#got + 1] = ("%d %s"):format(at, (items:sub(k + 8, k + 39):gsub(".", function(c)
            return ("%02x"):format(c:byte())
          end)))
        end
        for _, id in ipairs(model:query(filters, now, 100001)) do
          want[#want + 1] = ("%d %s"):format(model.byid[id].created_at, id)
        end
        table.sort(got)
        table.sort(want)
        assert.is_true(n == 6 or #want > 0)
        assert.same(want, got, kind .. ", case " .. n)
      end
      assert.same({ nil, "blocked: the filters match more than 10 events; narrow them" },
        { store:negentropy_items({ kinds = { 1 } }, { max = 10 }) })
      assert.same({ nil, "invalid: kinds entries must be integers" }, { store:negentropy_items({ kinds = { "x" } }) })
      store:close()
    end
  end)

  it("answers bad messages clearly and keeps the session usable", function()
    local relay = session(select(1, sets(7, 100, 0, 0)), 0)
    local bad = {
      { "zz", "invalid: a negentropy message is lowercase hex" },
      { "abc", "invalid: a negentropy message is lowercase hex" },
      { "", "invalid: an empty negentropy message" },
      { "10", "invalid: not a negentropy message (its version byte)" },
      { "61ff", "invalid: a negentropy message that does not parse" },
      { "610001", "invalid: a negentropy message that does not parse" },
      { "61000007", "invalid: a negentropy message with an unknown mode" },
      { "6100210000", "invalid: a negentropy message that does not parse" }, -- a bound id of 33 bytes
      { "61000002" .. "05", "invalid: a negentropy message that does not parse" }, -- 5 ids announced, none sent
    }
    for _, c in ipairs(bad) do
      local reply, err = relay:reconcile(c[1])
      assert.is_nil(reply, c[1])
      assert.equal(c[2], err, c[1])
    end
    -- another protocol version: the reply is our version alone
    assert.equal("61", relay:reconcile("62"))
    -- and a good message still gets its answer
    local client = session({}, 0)
    assert.is_string(relay:reconcile(client:initiate()))
    assert.same({ nil, "error: the negentropy session is sealed: no item can be added" },
      { relay:add(1, ("a"):rep(64)) })
    relay:close()
    assert.has_error(function() relay:reconcile("61") end, "layer2: attempt to use a closed negentropy session")
    local s = assert(layer2.negentropy())
    assert(s:add(5, ("ab"):rep(32)))
    assert(s:add(5, ("ab"):rep(32)))
    assert.same({ nil, "error: an item was added twice" }, { s:seal() })
    assert.same({ nil, "invalid: an id is 64 lowercase hex digits" }, { s:add(1, "xyz") })
    assert.same({ nil, "error: a negentropy frame limit is at least 4096 bytes" }, { layer2.negentropy(100) })
  end)
end)
