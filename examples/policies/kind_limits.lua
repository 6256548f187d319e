-- Size limits per kind: an event whose content is longer than its kind's limit is refused.
local DEFAULT = 64 * 1024
local LIMITS = {
  [0] = 8 * 1024, -- profiles
  [1] = 16 * 1024, -- notes
  [3] = 256 * 1024, -- follow lists
  [7] = 256, -- reactions
  [30023] = 256 * 1024, -- long-form articles
}

return {
  name = "kind-limits",
  accept_event = function(ev)
    local limit = LIMITS[ev.kind] or DEFAULT
    if #ev.content <= limit then return true end
    return false, ("invalid: content longer than %d bytes for kind %d"):format(limit, ev.kind)
  end,
}
