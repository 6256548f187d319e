-- The relay policies a relay operator expects (examples/policies/*.lua), each run through
-- layer2.relay over a real store, as a relay loads them.
local layer2 = require("layer2")

local DIR = "examples/policies/"

-- a relay over a fresh store with `policy`, and a session (at `ip`) whose frames are kept
local relay_with = require("spec.policy_relay")

local n = 0
local function event(key, kind, content, tags)
  n = n + 1
  return layer2.event.sign({ kind = kind, created_at = os.time() - 1000 + n, tags = tags or {}, content = content }, key)
end
local KEYS = {}
for i = 1, 8 do KEYS[i] = ("0"):rep(62) .. ("%02x"):format(i) end

describe("the example relay policies", function()
  it("allow_list: listed pubkeys write (from the file's list or a list file), others are refused", function()
    local list = os.tmpname()
    local f = assert(io.open(list, "w"))
    f:write("# members\n", layer2.schnorr.pubkey(KEYS[1]), "\n  ", layer2.schnorr.pubkey(KEYS[2]):upper(), "  \n")
    f:close()
    local t = relay_with(assert(loadfile(DIR .. "allow_list.lua"))(list))
    local a, b, c = event(KEYS[1], 1, "a"), event(KEYS[2], 1, "b"), event(KEYS[3], 1, "c")
    assert.same({ "OK", a.id, true, "" }, t.publish(a))
    assert.same({ "OK", b.id, true, "" }, t.publish(b))
    assert.same({ "OK", c.id, false, "blocked: only listed pubkeys may write here" }, t.publish(c))
    assert.equal(2, t.db:count_events({}))
    t.close()
    os.remove(list)
    -- loaded as a relay loads it, with no list: nobody writes
    t = relay_with(DIR .. "allow_list.lua")
    assert.is_false(t.publish(event(KEYS[1], 1, "a"))[3])
    t.close()
  end)

  it("kind_limits: each kind's content limit, the default for the others", function()
    local t = relay_with(DIR .. "kind_limits.lua")
    local ok7, long7 = event(KEYS[1], 7, ("+"):rep(256)), event(KEYS[1], 7, ("+"):rep(257))
    assert.is_true(t.publish(ok7)[3])
    assert.same({ "OK", long7.id, false, "invalid: content longer than 256 bytes for kind 7" }, t.publish(long7))
    local other = event(KEYS[1], 1111, ("x"):rep(64 * 1024 + 1))
    assert.same({ "OK", other.id, false, "invalid: content longer than 65536 bytes for kind 1111" }, t.publish(other))
    assert.equal(1, t.db:count_events({}))
    t.close()
  end)

  it("rate_limit: per pubkey and per address, counted per window, anew in the next one", function()
    local clock = 6000
    local policy = assert(loadfile(DIR .. "rate_limit.lua"))({ per_ip = 5, per_pubkey = 3, window = 60,
      now = function() return clock end })
    local t = relay_with(policy, "198.51.100.7")
    for i = 1, 3 do assert.is_true(t.publish(event(KEYS[1], 1, "a" .. i))[3]) end
    local fourth = event(KEYS[1], 1, "a4")
    assert.same({ "OK", fourth.id, false, "rate-limited: more than 3 events in 60 s from this pubkey" },
      t.publish(fourth))
    -- the address's count goes on with other pubkeys: 4 counted, the fifth passes, then the sixth not
    assert.is_true(t.publish(event(KEYS[2], 1, "b1"))[3])
    local sixth = event(KEYS[3], 1, "c1")
    assert.same({ "OK", sixth.id, false, "rate-limited: more than 5 events in 60 s from your address" },
      t.publish(sixth))
    -- the next window counts anew
    clock = clock + 60
    assert.is_true(t.publish(event(KEYS[1], 1, "a5"))[3])
    assert.equal(5, t.db:count_events({}))
    t.close()
    -- as a relay loads it (no options): the defaults, a process-local count outside nginx
    t = relay_with(DIR .. "rate_limit.lua")
    assert.is_true(t.publish(event(KEYS[4], 1, "d"))[3])
    t.close()
  end)

  it("dms: direct messages to their parties only, after AUTH; filters that may match them must be one's own",
    function()
    local t = relay_with(DIR .. "dms.lua")
    local alice, bob = layer2.schnorr.pubkey(KEYS[5]), layer2.schnorr.pubkey(KEYS[6])
    local dm = event(KEYS[5], 4, "secret", { { "p", bob } })
    local wrap = event(KEYS[7], 1059, "wrapped", { { "p", bob } })
    assert.is_true(t.publish(dm)[3])
    assert.is_true(t.publish(wrap)[3])
    local need_auth = "auth-required: direct messages are read by their parties only"
    assert.same({ "CLOSED", "q", need_auth }, t.answer({ "REQ", "q", { kinds = { 4 }, ["#p"] = { bob } } }))
    assert.same({ "CLOSED", "q", need_auth }, t.answer({ "REQ", "q", { authors = { alice } } }), "no kinds: may match")
    assert.same({ "NEG-ERR", "q", need_auth }, t.answer({ "NEG-OPEN", "q", { kinds = { 1059 } }, "61" }))
    -- a filter of other kinds needs nothing
    assert.same({ "EOSE", "q" }, t.answer({ "REQ", "q", { kinds = { 1 } } }))
    t.send({ "CLOSE", "q" })
    -- bob authenticates
    local auth = layer2.event.sign({ kind = 22242, created_at = os.time(), content = "",
      tags = { { "relay", "ws://relay.example" }, { "challenge", t.challenge } } }, KEYS[6])
    assert.is_true(t.answer('["AUTH",' .. layer2.event.encode(auth) .. "]")[3])
    t.send({ "REQ", "mine", { kinds = { 4, 1059 }, ["#p"] = { bob } } })
    local got = {}
    for _, f in ipairs(t.frames) do
      if f[1] == "EVENT" then got[#got + 1] = f[3].id end
    end
    table.sort(got)
    local want = { dm.id, wrap.id }
    table.sort(want)
    assert.same(want, got)
    for k in pairs(t.frames) do t.frames[k] = nil end
    local others = "restricted: a filter that may match direct messages must name your pubkey as its only author or #p"
    assert.same({ "CLOSED", "q", others }, t.answer({ "REQ", "q", { kinds = { 4 }, ["#p"] = { alice } } }))
    assert.same({ "CLOSED", "q", others }, t.answer({ "REQ", "q", { kinds = { 4 }, ["#p"] = { bob, alice } } }))
    t.close()
  end)
end)
