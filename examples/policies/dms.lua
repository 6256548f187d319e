-- Direct messages (NIP-04 kind 4, NIP-59 gift wraps kind 1059) are read only by their parties,
-- after NIP-42 AUTH. A filter that may match them (it names one of those kinds, or no kind at
-- all) must be one's own: authors = {your pubkey} or #p = {your pubkey}.
local PRIVATE = { [4] = true, [1059] = true }

local function may_match_private(f)
  if type(f.kinds) ~= "table" then return true end
  for _, k in ipairs(f.kinds) do
    if PRIVATE[k] then return true end
  end
  return false
end

local function own(f, pubkey)
  local function only(list) return type(list) == "table" and #list == 1 and list[1] == pubkey end
  return only(f.authors) or only(f["#p"])
end

return {
  name = "dms",
  accept_req = function(filters, client)
    for _, f in ipairs(filters) do
      if may_match_private(f) then
        if not client.pubkey then
          return false, "auth-required: direct messages are read by their parties only"
        end
        if not own(f, client.pubkey) then
          return false, "restricted: a filter that may match direct messages must name your pubkey"
            .. " as its only author or #p"
        end
      end
    end
    return true
  end,
}
