-- A layer2.relay over a fresh store with a policy, for the policy specs (policies_spec,
-- strfry_plugin_spec): one session from an address, its frames kept, and what the relay logged.
local layer2 = require("layer2")
local relay = require("layer2.relay")
local cjson = require("cjson")
local helper = require("spec.helper")
local B = require("spec.backend_helper")
local assert = require("luassert")

local URL = "ws://relay.example"

-- policy_relay(policy[, ip]) -> t: t.db, t.frames, t.logged, t.challenge; t.send(msg), t.answer(msg)
-- (the one frame a message gets), t.publish(ev), t.auth(key) (a NIP-42 AUTH with the challenge),
-- t.close()
return function(policy, ip)
  local dir = helper.tmpdir()
  local db = assert(layer2.open(dir, { nosync = true, log = B.quiet }))
  local logged, frames = {}, {}
  local r = relay.new({ store = db, policy = policy, url = URL, log = function(msg) logged[#logged + 1] = msg end })
  local s = assert(r:session({ ip = ip or "192.0.2.1", send = function(text) frames[#frames + 1] = cjson.decode(text) end }))
  table.remove(frames, 1) -- the AUTH challenge
  local t = { db = db, frames = frames, logged = logged, challenge = s.challenge }
  function t.send(msg) s:message(type(msg) == "string" and msg or cjson.encode(msg)) end
  function t.answer(msg)
    t.send(msg)
    assert.equal(1, #frames, cjson.encode(frames))
    return table.remove(frames, 1)
  end
  function t.publish(ev) return t.answer('["EVENT",' .. layer2.event.encode(ev) .. "]") end
  function t.auth(key)
    return t.answer('["AUTH",' .. layer2.event.encode(layer2.event.sign({ kind = 22242, created_at = os.time(),
      content = "", tags = { { "relay", URL }, { "challenge", s.challenge } } }, key)) .. "]")
  end
  function t.close()
    s:close()
    db:close()
    helper.rmdir(dir)
  end
  return t
end
