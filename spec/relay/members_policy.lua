-- members write; "spam" is taken and dropped; direct messages only to their parties after AUTH
local lru = require("layer2.policy.lru")
local members = { ["ALICE"] = true, ["BOB"] = true } -- pubkeys, put in by spec/relay_policy_spec.lua
return {
  name = "members",
  select = function(self, candidates, need) return lru.select(self, candidates, need) end,
  accept_event = function(ev, client)
    if ev.content == "spam" then return "shadow" end
    if not members[ev.pubkey] then return false, "blocked: members only (you are at " .. client.ip .. ")" end
    return true
  end,
  accept_req = function(filters, client)
    for _, f in ipairs(filters) do
      for _, k in ipairs(f.kinds or {}) do
        if k == 4 then
          if not client.pubkey then return false, "auth-required: direct messages are for their parties" end
          local to = f["#p"]
          if not (to and #to == 1 and to[1] == client.pubkey) then
            return false, "restricted: only your own direct messages"
          end
        end
      end
    end
    return true
  end,
}
