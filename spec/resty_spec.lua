-- layer2.resty's options, checked before anything of nginx is touched (so plain Lua can see
-- them): a misspelled name, and what the thread pool of a PostgreSQL L2 cannot take. What the
-- module does inside nginx is the relay specs' (spec/relay_spec.lua and beside it).
local resty = require("layer2.resty")

describe("layer2.resty.init_worker's options", function()
  it("refuses a name neither it nor layer2.open knows, with the nearest known one", function()
    assert.has_error(function() resty.init_worker("/tmp/x", { thread_pol = "layer2" }) end,
      "layer2.resty.init_worker: unknown option 'thread_pol' (did you mean 'thread_pool'?)")
    assert.has_error(function() resty.init_worker("/tmp/x", { l2 = "dbname=x", polcy = "lfu" }) end,
      "layer2.resty.init_worker: unknown option 'polcy' (did you mean 'policy'?)")
  end)

  it("refuses, with a PostgreSQL L2, a policy table and on_event handlers, which the thread pool would drop", function()
    local lru = require("layer2.policy.lru")
    assert.has_error(function() resty.init_worker("/tmp/x", { l2 = "dbname=x", policy = lru }) end,
      "layer2.resty.init_worker: with a PostgreSQL L2 eviction runs in the thread pool, where a policy table"
        .. ' cannot go: give the path of its file (policy = "/etc/relay/policy.lua")')
    assert.has_error(function() resty.init_worker("/tmp/x", { l2 = "dbname=x", on_event = function() end }) end,
      "layer2.resty.init_worker: with a PostgreSQL L2 saves run in the thread pool, where on_event handlers"
        .. " cannot go: hear events with layer2.resty.subscribe")
    assert.is_nil(io.open("/tmp/x"), "nothing was made")
  end)
end)
