-- layer2.fanout: a relay worker's live subscriptions, indexed. For random subscriptions and a
-- stream of generated events, it returns exactly the subscriptions a filter of which matches,
-- each once, against the plain reference (spec/ref.lua's match over every filter).
local layer2 = require("layer2")
local helper = require("spec.helper")
local gen = require("layer2.gen")

local ref_match = require("spec.ref").match

-- A random subscription (1 to 3 filters) over what the generator makes.
local function random_filters(g, pool, rand)
  local filters = {}
  for _ = 1, rand(3) do
    local f, ev = {}, pool[rand(#pool)]
    local shape = rand(9)
    if shape == 1 then
      f.ids = { ev.id, pool[rand(#pool)].id }
    elseif shape == 2 then
      f.authors = { ev.pubkey }
      if rand(2) == 1 then f.kinds = { ev.kind } end
    elseif shape == 3 then
      f.kinds = { ev.kind, rand(2) == 1 and 1 or 7 }
    elseif shape == 4 then
      -- a tag condition, maybe with a second one the index does not use
      for _, t in ipairs(ev.tags) do
        if #t[1] == 1 and t[2] then
          f["#" .. t[1]] = { t[2] }
          break
        end
      end
      if rand(3) == 1 then f.kinds = { ev.kind } end
    elseif shape == 5 then
      f.since = ev.created_at
    elseif shape == 6 then
      f["until"] = ev.created_at
      f.kinds = { ev.kind }
    elseif shape == 7 then
      f.limit = 0 -- live events only: a limit never bounds them
      f.authors = { g.pubkeys[rand(#g.pubkeys)] }
    elseif shape == 8 then
      f.kinds = {} -- matches nothing
    end
    -- shape 9: {}, every event
    filters[#filters + 1] = f
  end
  return filters
end

local function matches(filters, ev)
  for _, f in ipairs(filters) do
    local live = {}
    for k, v in pairs(f) do
      if k ~= "limit" then live[k] = v end
    end
    if ref_match(live, ev) then return true end
  end
  return false
end

local function sorted(list)
  table.sort(list)
  return list
end

describe("layer2.fanout", function()
  it("returns exactly the subscriptions that match, each once, through adds, replacements and removals", function()
    local g = gen.new({ seed = 23, authors = 30, count = 6000 })
    local rand = helper.rng(5)
    local pool = {}
    for i = 1, 300 do pool[i] = g:next() end
    local fo = layer2.fanout()
    local subs = {}
    for key = 1, 400 do
      subs[key] = random_filters(g, pool, rand)
      assert(fo:add(key, subs[key]))
    end
    local checked, hits = 0, 0
    for step = 1, 1500 do
      local r = rand(10)
      if r == 1 then
        local key = rand(450)
        fo:remove(key)
        subs[key] = nil
      elseif r == 2 then
        local key = rand(450)
        subs[key] = random_filters(g, pool, rand)
        assert(fo:add(key, subs[key]))
      else
        local ev = rand(3) == 1 and pool[rand(#pool)] or g:next()
        local want = {}
        for key, filters in pairs(subs) do
          if matches(filters, ev) then want[#want + 1] = key end
        end
        local got = fo:match(rand(2) == 1 and layer2.event.encode(ev) or ev)
        assert.same(sorted(want), sorted(got), "step " .. step)
        checked, hits = checked + 1, hits + #got
      end
    end
    local n = 0
    for _ in pairs(subs) do n = n + 1 end
    assert.equal(n, fo:count())
    assert(checked > 1000 and hits > checked, "events matched some subscriptions: " .. hits)
    fo:close()
  end)

  it("refuses bad filters with the filter's message and keeps what it had; a closed index raises", function()
    local fo = layer2.fanout()
    assert(fo:add(1, { kinds = { 1 } }))
    local ok, err = fo:add(1, { kinds = { 70000 } })
    assert.is_nil(ok)
    assert.matches("^invalid: kinds%[0%] must be an integer from 0 to 65535", err)
    ok, err = fo:add(2, '{"ids":["abc"]}')
    assert.is_nil(ok)
    assert.matches("^invalid: ids%[0%] must be 64 lowercase hex", err)
    assert.equal(1, fo:count())
    local ev = layer2.event.sign({ kind = 1, created_at = 1, tags = {}, content = "x" }, ("0"):rep(63) .. "1")
    assert.same({ 1 }, fo:match(ev))
    local none, why = fo:match('{"id":"zz"}')
    assert.is_nil(none)
    assert.matches("^invalid: ", why)
    assert.matches("layer2 fanout %(1 subscriptions%)", tostring(fo))
    fo:close()
    assert.has_error(function() fo:match(ev) end, "layer2: attempt to use a closed fanout")
  end)
end)
