local layer2 = require("layer2")
local pg = require("spec.pg")

require("spec.bruteforce")("postgres store", function()
  return assert(layer2.postgres.open((pg.fresh()))), function() end
end, { describe = describe, it = it, setup = setup, teardown = teardown, assert = assert,
  pending = pending })
