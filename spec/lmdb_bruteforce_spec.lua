local layer2 = require("layer2")
local helper = require("spec.helper")

require("spec.bruteforce")("lmdb store", function()
  local dir = helper.tmpdir()
  return assert(layer2.lmdb.open(dir)), function() helper.rmdir(dir) end
end, { describe = describe, it = it, setup = setup, teardown = teardown, assert = assert,
  pending = pending })
