local layer2 = require("layer2")
local gen = require("layer2.gen")

describe("layer2.gen", function()
  it("makes the same signed events for the same seed, and valid ones", function()
    local a, b = gen.new({ seed = 42, authors = 30, count = 300 }), gen.new({ seed = 42, authors = 30, count = 300 })
    local kinds = {}
    for _ = 1, 300 do
      local x, y = a:next(), b:next()
      assert.equal(x.id, y.id)
      assert.is_true(layer2.event.verify(x))
      kinds[x.kind] = (kinds[x.kind] or 0) + 1
    end
    assert(kinds[1] > 150, "kind 1 dominates")
    assert(kinds[7] and kinds[30023] and kinds[0] and kinds[3], "the kind mix is there")
    local c = gen.new({ seed = 43, authors = 30, count = 300 })
    assert.not_equal(gen.new({ seed = 42, authors = 30 }):next().id, c:next().id)
  end)
end)
