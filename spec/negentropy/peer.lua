-- The relay's side of a NIP-77 reconciliation, for spec/negentropy_spec.lua: reads its items
-- ("created_at id" lines) from arg[1], then answers each hex message read from stdin with one line:
-- the reply in hex.   lua peer.lua ITEMS [FRAME_LIMIT]
local layer2 = require("layer2")
local neg = assert(layer2.negentropy(tonumber(arg[2]) or 0))
for line in io.lines(arg[1]) do
  local at, id = line:match("^(%d+) (%x+)$")
  assert(neg:add(tonumber(at), id))
end
assert(neg:seal())
io.stdout:setvbuf("line")
for msg in io.stdin:lines() do
  local reply, err = neg:reconcile(msg)
  io.stdout:write(reply or ("error " .. err), "\n")
end
