-- layer2.relay, the protocol apart from any transport, in plain Lua: each verb's frames, the
-- answers to REQs against the brute-force reference, live delivery between sessions, NIP-77, and
-- every bad message's answer. The example relay on nginx runs the same library (spec/relay_spec).
local layer2 = require("layer2")
local relay = require("layer2.relay")
local cjson = require("cjson")
local gen = require("layer2.gen")
local ref = require("spec.ref")
local helper = require("spec.helper")
local B = require("spec.backend_helper")

local function open_relay(limits)
  local dir = helper.tmpdir()
  local db = assert(layer2.open(dir, { nosync = true, log = B.quiet }))
  local r = relay.new({ store = db, limits = limits })
  return r, db, function()
    db:close()
    helper.rmdir(dir)
  end
end

-- a session whose frames are kept, decoded
local function connect(r)
  local frames = {}
  local s = r:session({ send = function(text) frames[#frames + 1] = cjson.decode(text) end })
  return s, frames
end

-- the same, for a websocket host: a REQ's stored events come as frames built in C (send_frames)
local function connect_framed(r)
  local frames = {}
  local s = r:session({ send = function(text) frames[#frames + 1] = cjson.decode(text) end,
    send_frames = function(bytes, n)
      local payloads = helper.ws_frames(bytes)
      assert.equal(n, #payloads)
      for _, p in ipairs(payloads) do frames[#frames + 1] = cjson.decode(p) end
    end })
  return s, frames
end

local function take(frames)
  local out = {}
  for i = 1, #frames do out[i], frames[i] = frames[i], nil end
  return out
end

-- a client message: a string as it is, or a list encoded (an event in it as the wire has it)
local function message(s, msg)
  if type(msg) == "table" and msg[1] == "EVENT" and type(msg[2]) == "table" then
    msg = '["EVENT",' .. layer2.event.encode(msg[2]) .. "]"
  end
  s:message(type(msg) == "string" and msg or cjson.encode(msg))
end

describe("layer2.relay (the protocol, plain Lua)", function()
  it("EVENT gets an OK with the store's verdict; REQ answers as the reference does, then EOSE", function()
    local r, _, done = open_relay()
    local s, frames = connect(r)
    local g = gen.new({ seed = 41, authors = 15, count = 400 })
    local model = ref.new()
    local events = {}
    for i = 1, 400 do
      local ev = g:next()
      events[i] = ev
      message(s, { "EVENT", ev })
      local ok = model:save(ev, os.time(), 900)
      local got = take(frames)
      assert.equal(1, #got)
      assert.same({ "OK", ev.id }, { got[1][1], got[1][2] })
      assert.equal(ok == true, got[1][3], got[1][4])
    end
    -- a duplicate, said so
    message(s, { "EVENT", events[1] })
    assert.same({ "OK", events[1].id, false, "duplicate: already have this event" }, take(frames)[1])
    local rand = helper.rng(42)
    local framed, framed_frames = connect_framed(r)
    for _ = 1, 60 do
      local f = B.random_filter(events, rand)
      message(s, { "REQ", "q", f })
      local got = take(frames)
      message(framed, { "REQ", "q", f })
      assert.same(got, take(framed_frames), "the same answer in frames built in C")
      message(framed, { "CLOSE", "q" })
      local want = model:query({ f }, os.time(), 500)
      assert.same({ "EOSE", "q" }, got[#got])
      local ids = {}
      for i = 1, #got - 1 do
        assert.same({ "EVENT", "q" }, { got[i][1], got[i][2] })
        ids[i] = got[i][3].id
      end
      assert.same(want, ids)
      message(s, { "CLOSE", "q" })
    end
    -- a refused REQ is refused alike
    for _, session in ipairs({ s, framed }) do
      message(session, { "REQ", "bad", { kinds = "one" } })
    end
    local refused = take(frames)
    assert.same(refused, take(framed_frames))
    assert.same({ "CLOSED", "bad" }, { refused[1][1], refused[1][2] })
    assert.matches("^invalid: ", refused[1][3])
    framed:close()
    -- COUNT
    message(s, { "COUNT", "c", { kinds = { 1 } } })
    assert.same({ "COUNT", "c", { count = #model:query({ { kinds = { 1 } } }, os.time(), 1e9) } }, take(frames)[1])
    assert(#model:query({ { kinds = { 1 } } }, os.time(), 1e9) > 0)
    s:close()
    done()
  end)

  it("a subscription hears new events after its EOSE, from any session, until CLOSE", function()
    local r, _, done = open_relay()
    local reader, heard = connect(r)
    local writer, acks = connect(r)
    local g = gen.new({ seed = 43, authors = 5, count = 50 })
    local first = g:next()
    message(writer, { "EVENT", first })
    assert.same({ { "OK", first.id, true, "" } }, take(acks))
    message(reader, { "REQ", "live", { authors = { first.pubkey } } })
    local got = take(heard)
    assert.same({ "EVENT", "live", first.id }, { got[1][1], got[1][2], got[1][3].id })
    assert.same({ "EOSE", "live" }, got[2])
    local mine, others = nil, nil
    repeat
      local ev = g:next()
      if ev.kind ~= 5 then
        if ev.pubkey == first.pubkey and not mine then mine = ev end
        if ev.pubkey ~= first.pubkey and not others then others = ev end
      end
    until mine and others
    message(writer, { "EVENT", others })
    message(writer, { "EVENT", mine })
    assert.equal(2, #take(acks))
    got = take(heard)
    assert.equal(1, #got, "only the matching event")
    assert.same({ "EVENT", "live", mine.id }, { got[1][1], got[1][2], got[1][3].id })
    -- an ephemeral event reaches the subscription without being stored
    local eph = layer2.event.sign({ kind = 20001, created_at = os.time(), tags = {}, content = "now" },
      ("0"):rep(63) .. "9")
    message(reader, { "REQ", "eph", { kinds = { 20001 } } })
    assert.same({ { "EOSE", "eph" } }, take(heard))
    message(writer, { "EVENT", eph })
    assert.same({ { "OK", eph.id, true, "" } }, take(acks))
    assert.same({ "EVENT", "eph", eph.id }, { heard[1][1], heard[1][2], heard[1][3].id })
    take(heard)
    message(reader, { "CLOSE", "live" })
    message(reader, { "CLOSE", "eph" })
    message(writer, { "EVENT", g:next() })
    assert.same({}, take(heard))
    reader:close()
    writer:close()
    done()
  end)

  it("NIP-77: a client's negentropy session finds what it lacks", function()
    local r, db, done = open_relay()
    local s, frames = connect(r)
    local g = gen.new({ seed = 44, authors = 10, count = 300 })
    local have = {}
    for i = 1, 300 do
      local ev = g:next()
      if db:save_event(ev) and i % 3 == 0 then have[#have + 1] = ev end
    end
    local client = layer2.negentropy()
    for _, ev in ipairs(have) do assert(client:add(ev.created_at, ev.id)) end
    assert(client:seal())
    message(s, { "NEG-OPEN", "n", {}, client:initiate() })
    local need = {}
    for _ = 1, 20 do
      local f = take(frames)[1]
      assert.equal("NEG-MSG", f[1], cjson.encode(f))
      local reply, _, theirs = client:reconcile(f[3])
      for _, id in ipairs(theirs or {}) do need[#need + 1] = id end
      if not reply then break end
      message(s, { "NEG-MSG", "n", reply })
    end
    message(s, { "NEG-CLOSE", "n" })
    local held, lacking = {}, {}
    for _, ev in ipairs(have) do held[ev.id] = true end
    for _, ev in ipairs(db:query_events({}, { max_limit = 100000 })) do
      if not held[ev.id] then lacking[#lacking + 1] = ev.id end
    end
    table.sort(need)
    table.sort(lacking)
    assert.same(lacking, need)
    s:close()
    done()
  end)

  it("NIP-42 AUTH: the challenge, each check of the AUTH event, and the pubkey the policy then sees", function()
    local dir = helper.tmpdir()
    local db = assert(layer2.open(dir, { nosync = true, log = B.quiet }))
    local seen = {}
    local r = relay.new({ store = db, url = "ws://Relay.example:7777/", policy = {
      accept_req = function(_, client) seen[#seen + 1] = client.pubkey or "none" return true end } })
    local s, frames = connect(r)
    local challenge = take(frames)[1]
    assert.equal("AUTH", challenge[1])
    assert.matches("^%x+$", challenge[2])
    assert.equal(32, #challenge[2])
    local other = connect(r)
    assert.are_not.equal(challenge[2], other.challenge, "each connection its own")
    local sec = ("0"):rep(63) .. "b"
    local function auth(fields)
      local ev = { kind = 22242, created_at = os.time(), content = "",
        tags = { { "relay", "ws://relay.example:7777" }, { "challenge", challenge[2] } } }
      for k, v in pairs(fields or {}) do ev[k] = v end
      return layer2.event.sign(ev, sec)
    end
    local function answer(ev)
      message(s, '["AUTH",' .. layer2.event.encode(ev) .. "]")
      local got = take(frames)
      assert.equal(1, #got)
      return got[1]
    end
    message(s, { "COUNT", "c", {} })
    assert.same({ "COUNT", "c", { count = 0 } }, take(frames)[1])
    local function refused(ev, why)
      assert.same({ "OK", ev.id, false, why }, answer(ev))
    end
    refused(auth({ kind = 1 }), "invalid: an AUTH event is of kind 22242")
    refused(auth({ tags = { { "relay", "ws://relay.example:7777" }, { "challenge", "00" } } }),
      "invalid: the challenge is not this connection's")
    refused(auth({ tags = { { "relay", "ws://other.example" }, { "challenge", challenge[2] } } }),
      "invalid: the relay tag names another relay")
    refused(auth({ created_at = os.time() - 3600 }), "invalid: created_at is more than 10 minutes from now")
    local forged = auth()
    forged.content = "x"
    local forged_answer = answer(forged)
    assert.same({ "OK", forged.id, false }, { forged_answer[1], forged_answer[2], forged_answer[3] })
    assert.matches("^invalid: ", forged_answer[4])
    assert.same({ "NOTICE", "invalid: AUTH needs an event object" }, (function()
      message(s, { "AUTH", "x" })
      return take(frames)[1]
    end)())
    message(s, { "COUNT", "c", {} })
    take(frames)
    local good = auth()
    assert.same({ "OK", good.id, true, "" }, answer(good))
    message(s, { "COUNT", "c", {} })
    take(frames)
    assert.same({ "none", "none", layer2.schnorr.pubkey(sec) }, seen)
    assert.equal(0, db:count_events({}), "AUTH events are not stored")
    s:close()
    db:close()
    helper.rmdir(dir)
  end)

  it("the policy's hooks decide: connections, events (refused, shadowed, a forged one never asked) and reads"
    .. " (DMs to their parties after AUTH)", function()
    local dir = helper.tmpdir()
    local db = assert(layer2.open(dir, { nosync = true, log = B.quiet }))
    local keys = { ("0"):rep(63) .. "c", ("0"):rep(63) .. "d", ("0"):rep(63) .. "e" }
    local alice, bob, mallory = layer2.schnorr.pubkey(keys[1]), layer2.schnorr.pubkey(keys[2]),
      layer2.schnorr.pubkey(keys[3])
    local members = { [alice] = true, [bob] = true }
    local asked, logged = 0, {}
    local file = dir .. "-policy.lua"
    local f = assert(io.open(file, "w"))
    f:write([[
local members, counter = ...
return {
  accept_connection = function(client)
    if client.ip == "10.0.0.66" then return false, "blocked: not from there" end
    return true
  end,
  accept_event = function(ev, client)
    counter()
    if ev.content == "boom" then error("a bug in the policy") end
    if ev.content == "spam" then return "shadow" end
    if not members[ev.pubkey] then return false, "only members write here" end
    return true
  end,
  accept_req = function(filters, client, verb)
    for _, f in ipairs(filters) do
      for _, k in ipairs(f.kinds or {}) do
        if k == 4 then
          if not client.pubkey then return false, "auth-required: direct messages are for their parties" end
          local mine = f.authors and #f.authors == 1 and f.authors[1] == client.pubkey
          local to_me = f["#p"] and #f["#p"] == 1 and f["#p"][1] == client.pubkey
          if not (mine or to_me) then return false, "restricted: only your own direct messages" end
        end
      end
    end
    return true
  end,
}
]])
    f:close()
    -- a policy file is loaded once per relay.new; this one reads its arguments from a table
    local chunk = assert(loadfile(file))
    local policy = chunk(members, function() asked = asked + 1 end)
    local r = relay.new({ store = db, url = "ws://relay.example", policy = policy,
      log = function(m) logged[#logged + 1] = m end })
    assert.same({ nil, "blocked: not from there" }, { r:session({ ip = "10.0.0.66", send = function() end }) })
    local frames = {}
    local s = assert(r:session({ ip = "10.0.0.1", send = function(text) frames[#frames + 1] = cjson.decode(text) end }))
    local challenge = take(frames)[1][2]
    local function event(key, kind, content, tags)
      return layer2.event.sign({ kind = kind, created_at = os.time(), tags = tags or {}, content = content }, key)
    end
    local function ok_of(ev)
      message(s, { "EVENT", ev })
      local got = take(frames)
      assert.equal(1, #got)
      return got[1]
    end
    local note = event(keys[1], 1, "hello")
    assert.same({ "OK", note.id, true, "" }, ok_of(note))
    local stranger = event(keys[3], 1, "hi")
    assert.same({ "OK", stranger.id, false, "blocked: only members write here" }, ok_of(stranger))
    local spam = event(keys[1], 1, "spam")
    assert.same({ "OK", spam.id, true, "" }, ok_of(spam))
    local boom = event(keys[1], 1, "boom")
    assert.same({ "OK", boom.id, false, "error: the relay's policy failed" }, ok_of(boom))
    assert.matches("accept_event failed: .*a bug in the policy", logged[1])
    local before = asked
    local forged = event(keys[1], 1, "real")
    forged.content = "forged"
    local refused = ok_of(forged)
    assert.is_false(refused[3])
    assert.equal(before, asked, "a forged event never reaches the policy")
    assert.same({ note.id }, helper.ids(db:query_events({})), "only the accepted one is stored")
    -- direct messages: alice to bob
    local dm = event(keys[1], 4, "secret", { { "p", bob } })
    assert.same({ "OK", dm.id, true, "" }, ok_of(dm))
    message(s, { "REQ", "dm", { kinds = { 4 }, ["#p"] = { bob } } })
    assert.same({ { "CLOSED", "dm", "auth-required: direct messages are for their parties" } }, take(frames))
    message(s, { "COUNT", "dm", { kinds = { 4 } } })
    assert.same({ { "CLOSED", "dm", "auth-required: direct messages are for their parties" } }, take(frames))
    message(s, { "NEG-OPEN", "dm", { kinds = { 4 } }, "61" })
    assert.same({ { "NEG-ERR", "dm", "auth-required: direct messages are for their parties" } }, take(frames))
    -- bob authenticates: his own messages, not mallory's
    message(s, '["AUTH",' .. layer2.event.encode(event(keys[2], 22242, "",
      { { "relay", "ws://relay.example/" }, { "challenge", challenge } })) .. "]")
    assert.is_true(take(frames)[1][3])
    message(s, { "REQ", "dm", { kinds = { 4 }, ["#p"] = { bob } } })
    local got = take(frames)
    assert.same({ "EVENT", "dm", dm.id }, { got[1][1], got[1][2], got[1][3].id })
    assert.same({ "EOSE", "dm" }, got[2])
    message(s, { "REQ", "dm2", { kinds = { 4 }, ["#p"] = { mallory } } })
    assert.same({ { "CLOSED", "dm2", "restricted: only your own direct messages" } }, take(frames))
    s:close()
    -- the same file by its path (it gets no arguments: its members list is empty then)
    assert.has_error(function() relay.new({ store = db, policy = dir .. "-none.lua" }) end)
    assert.has_error(function() relay.new({ store = db, policy = { accept_event = 5 } }) end,
      "layer2.relay.new: the policy's accept_event is not a function")
    assert.has_error(function() relay.new({ store = db, policy = 5 }) end,
      "layer2.relay.new: a policy is a table of hooks or a file's path")
    local from_file = relay.new({ store = db, policy = file })
    assert.is_function(from_file.policy.accept_req)
    os.remove(file)
    db:close()
    helper.rmdir(dir)
  end)

  it("the README's policy example decides as its comments say", function()
    local f = assert(io.open("README.md"))
    local text = f:read("a")
    f:close()
    local code = assert(text:match("```lua\n%-%- /etc/relay/policy%.lua\n(.-)```"), "no policy example in README.md")
    local member_key = ("0"):rep(63) .. "f"
    code = code:gsub("<hex pubkey>", layer2.schnorr.pubkey(member_key))
    local policy = assert(load(code, "README policy"))()
    local r, db, done = open_relay()
    r:set_policy(policy)
    assert.is_nil(r:session({ ip = "203.0.113.9", send = function() end }))
    local s, frames = connect(r)
    take(frames) -- the AUTH challenge
    local function ok_of(ev)
      message(s, { "EVENT", ev })
      return take(frames)[1]
    end
    local function sign(key, kind, content)
      return layer2.event.sign({ kind = kind, created_at = os.time(), tags = {}, content = content }, key)
    end
    local good, ad, stranger = sign(member_key, 1, "hi"), sign(member_key, 1, "buy now!"), sign(("0"):rep(63) .. "2", 1, "x")
    assert.same({ "OK", good.id, true, "" }, ok_of(good))
    assert.same({ "OK", ad.id, true, "" }, ok_of(ad))
    assert.same({ "OK", stranger.id, false, "blocked: members only" }, ok_of(stranger))
    assert.same({ good.id }, helper.ids(db:query_events({})))
    message(s, { "REQ", "dm", { kinds = { 4 } } })
    assert.same({ { "CLOSED", "dm", "auth-required: DMs are for their parties" } }, take(frames))
    s:close()
    done()
  end)

  it("answers every bad message with what is wrong, and keeps the connection", function()
    local r, db, done = open_relay({ max_subscriptions = 2, max_filters = 2, max_message_length = 2000 })
    local s, frames = connect(r)
    local function answer(msg)
      message(s, msg)
      local got = take(frames)
      assert.equal(1, #got, cjson.encode(got))
      return got[1]
    end
    assert.same({ "NOTICE", "invalid: a message is a JSON array starting with a verb" }, answer("not json"))
    assert.same({ "NOTICE", "invalid: a message is a JSON array starting with a verb" }, answer({ 5 }))
    assert.same({ "NOTICE", "invalid: unknown message type HELLO" }, answer({ "HELLO" }))
    assert.same({ "NOTICE", "invalid: EVENT needs an event object" }, answer({ "EVENT", 5 }))
    local bad = gen.new({ seed = 45, authors = 2, count = 5 }):next()
    bad.content = bad.content .. "!"
    local refused = answer({ "EVENT", bad })
    assert.same({ "OK", bad.id, false }, { refused[1], refused[2], refused[3] })
    assert.matches("^invalid: ", refused[4])
    assert.same({ "NOTICE", "invalid: REQ needs a subscription id of 1 to 64 characters" }, answer({ "REQ", "", {} }))
    assert.same({ "CLOSED", "x", "invalid: no filter" }, answer({ "REQ", "x" }))
    assert.same({ "CLOSED", "x", "invalid: filter 1 is not an object" }, answer({ "REQ", "x", 5 }))
    assert.same({ "CLOSED", "x", "invalid: more than 2 filters" }, answer({ "REQ", "x", {}, {}, {} }))
    local absurd = answer({ "REQ", "x", { kinds = { "one" } } })
    assert.same({ "CLOSED", "x" }, { absurd[1], absurd[2] })
    assert.matches("^invalid: ", absurd[3])
    message(s, { "REQ", "a", { kinds = { 1 } } })
    message(s, { "REQ", "b", { kinds = { 1 } } })
    take(frames)
    assert.same({ "CLOSED", "c", "blocked: more than 2 subscriptions" }, answer({ "REQ", "c", {} }))
    assert.same({ "CLOSED", "c", "blocked: a message of more than 2000 bytes" },
      answer('["REQ","c",{"#t":["' .. ("x"):rep(2000) .. '"]}]'))
    assert.same({ "NEG-ERR", "n", "closed: no negentropy session with this id" }, answer({ "NEG-MSG", "n", "00" }))
    assert.same({ "NEG-ERR", "n", "invalid: NEG-OPEN needs a filter and an initial message" },
      answer({ "NEG-OPEN", "n", {} }))
    assert.equal(0, db:count_events({}), "nothing was stored")
    s:close()
    assert.has_error(function() s:message("[]") end, "layer2.relay: a message for a closed session")
    assert.has_error(function() relay.new({}) end, "layer2.relay.new: a store is needed (opts.store)")
    assert.has_error(function() relay.new({ store = db, limts = {} }) end,
      "layer2.relay.new: unknown option 'limts' (did you mean 'limits'?)")
    assert.has_error(function() r:set_limits({ max_subscription = 3 }) end, "relay: no limit is called max_subscription")
    assert.has_error(function() r:session({}) end, "layer2.relay: a session needs conn.send(text)")
    local info = cjson.decode(r:info_document())
    assert.same({ 1, 9, 11, 40, 42, 45, 77 }, info.supported_nips)
    assert.equal(2, info.limitation.max_subscriptions)
    done()
  end)
end)
