-- The benchmark data set: N deterministic signed events made by layer2.gen, cached as JSONL in
-- bench/data/ so it is made once.
local gen = require("layer2.gen")
local event = require("layer2").event

local dataset = {}

function dataset.path(n)
  return ("bench/data/events-%d.jsonl"):format(n)
end

function dataset.ensure(n)
  local path = dataset.path(n)
  local f = io.open(path)
  if f then
    f:close()
    return path
  end
  os.execute("mkdir -p bench/data")
  io.stderr:write(("making %s (%d signed events, once)...\n"):format(path, n))
  local tmp = path .. ".tmp"
  local out = assert(io.open(tmp, "w"))
  local g = gen.new({ seed = 1, authors = 2000, count = n })
  for i = 1, n do
    out:write(event.encode(g:next()), "\n")
    if i % 100000 == 0 then io.stderr:write(("  %d\n"):format(i)) end
  end
  out:close()
  assert(os.rename(tmp, path))
  return path
end

return dataset
