-- Oldest created_at first, whatever was read: a time-window cache.
local take = require("layer2.policy").take

return {
  name = "oldest",
  order = "created_at",
  select = function(_, candidates, bytes_needed)
    return (take(candidates, bytes_needed))
  end,
}
