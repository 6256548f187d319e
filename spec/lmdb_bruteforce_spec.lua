local layer2 = require("layer2")
local helper = require("spec.helper")

local bb = { describe = describe, it = it, setup = setup, teardown = teardown, assert = assert, pending = pending }
require("spec.bruteforce")("lmdb store", function()
  local dir = helper.tmpdir()
  return assert(layer2.lmdb.open(dir)), function() helper.rmdir(dir) end
end, bb)
-- index keys that keep 1 byte of each pubkey and hex tag value: most scans meet other authors' and
-- values' entries, and none of them may reach an answer
require("spec.bruteforce")("lmdb store with 1-byte key prefixes", function()
  local dir = helper.tmpdir()
  return assert(layer2.lmdb.open(dir, { key_prefix = 1 })), function() helper.rmdir(dir) end
end, bb)
