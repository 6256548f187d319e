-- Oldest created_at first, whatever was read: a time-window cache.
return {
  name = "oldest",
  order = "created_at", -- candidates arrive oldest first
  select = function(_, candidates, bytes_needed)
    local picked, freed = {}, 0
    for _, c in ipairs(candidates) do
      if freed >= bytes_needed then break end
      picked[#picked + 1] = c.id
      freed = freed + c.size
    end
    return picked
  end,
}
