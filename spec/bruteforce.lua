-- A store against the plain-Lua reference (spec/ref.lua) over every event of each corpus, in file order
-- and shuffled: the same accepted set, and the same answer (ids and order) for 1,200 random
-- filters and REQs. Run for each store kind by its spec (lmdb_bruteforce_spec, postgres_...).
local layer2 = require("layer2")
local helper = require("spec.helper")
local ref = require("spec.ref")

local NOW = 1800000000 -- fixed, so expiration is the same for both sides

local function load_events(path, order_seed)
  local lines = helper.lines(path)
  if order_seed then
    local rand = helper.rng(order_seed)
    for i = #lines, 2, -1 do
      local j = rand(i)
      lines[i], lines[j] = lines[j], lines[i]
    end
  end
  return lines
end

local function random_filters(events, rand, count)
  local function pick() return events[rand(#events)] end
  local function tag_value(letter)
    for _ = 1, 30 do
      local e = pick()
      for _, t in ipairs(e.tags) do
        if t[1] == letter and t[2] then return t[2] end
      end
    end
    return "nothing-" .. letter
  end
  local out = {}
  for n = 1, count do
    local f = {}
    for _ = 1, rand(3) do
      local which = rand(10)
      if which == 1 then
        f.ids = {}
        for i = 1, rand(5) do f.ids[i] = pick().id end
        f.ids[#f.ids + 1] = ("%064x"):format(rand(99999))
      elseif which == 2 then
        f.authors = {}
        for i = 1, rand(4) do f.authors[i] = pick().pubkey end
      elseif which == 3 then
        f.kinds = { pick().kind, pick().kind, rand(8) - 1 }
      elseif which == 4 then
        f.since = pick().created_at
      elseif which == 5 then
        f["until"] = pick().created_at
      elseif which == 6 then
        -- a narrow window around one event's time: ties are common here
        local t = pick().created_at
        f.since, f["until"] = math.max(0, t - rand(3) + 1), t + rand(3) - 1
      else
        local letter = ({ "e", "p", "t", "d", "a", "k", "E" })[rand(7)]
        f["#" .. letter] = { tag_value(letter), tag_value(letter) }
      end
    end
    local l = rand(6)
    if l == 1 then f.limit = 0 elseif l <= 4 then f.limit = rand(20) end
    out[n] = f
  end
  return out
end

local function decode_all(lines)
  local evs = {}
  for i, line in ipairs(lines) do evs[i] = layer2.event.parse(line) end
  return evs
end

local ids_of = helper.ids

-- open(order_name) -> store, cleanup(); bb: busted's describe, it, setup, teardown and assert
-- (they live in the spec file's environment, not in this module's)
return function(label, open, bb)
local describe, it, setup, teardown, assert = bb.describe, bb.it, bb.setup, bb.teardown, bb.assert
helper.each_corpus(bb.pending, label .. " vs the brute-force reference", function(corpus)
describe(label .. " vs the brute-force reference, " .. corpus.name .. " events", function()
  local orders = { { name = "file order" }, { name = "shuffled", seed = 777 } }
  local final_sets = {}

  for _, order in ipairs(orders) do
    describe("(" .. order.name .. ")", function()
      local db, model, events, cleanup

      setup(function()
        db, cleanup = open(order.name)
        model = ref.new()
        local lines = load_events(corpus.valid, order.seed)
        events = decode_all(lines)
        -- half saved one by one, half imported in batches
        local half = math.floor(#lines / 2)
        for i = 1, half do
          local ok, msg = db:save_event(lines[i], { now = NOW })
          local rok, rprefix = model:save(events[i], NOW)
          assert(ok == rok, ("line %d: store says %s %s, reference says %s %s"):format(i, tostring(ok),
            tostring(msg), tostring(rok), tostring(rprefix)))
          if not ok then assert.equal(rprefix, msg:match("^(%a+):")) end
        end
        local rest = {}
        for i = half + 1, #lines do rest[#rest + 1] = lines[i] end
        local k = 0
        local counts = assert(db:import(function()
          k = k + 1
          return rest[k]
        end, { now = NOW, batch = 500 }))
        local saved = 0
        for i = half + 1, #lines do
          if model:save(events[i], NOW) and not ref.ephemeral(events[i].kind) then saved = saved + 1 end
        end
        assert.equal(saved, counts.saved)
      end)

      teardown(function()
        db:close()
        cleanup()
      end)

      it("holds exactly the events the rules accept", function()
        local all = db:query_events({}, { max_limit = 100000, now = NOW })
        local want = model:query({ {} }, NOW, 100000)
        assert.equal(#want, #all)
        assert.same(want, ids_of(all))
        assert.equal(model:count(), db:count_events({}, { now = NOW }))
        -- a deletion request naming only other authors' events is refused when they are stored
        -- and kept (a tombstone of its own author's, which stops nothing) when they are not yet:
        -- the one thing arrival order changes
        local byid, kept = {}, {}
        for _, ev in ipairs(events) do byid[ev.id] = ev end
        for _, id in ipairs(want) do
          local ev, foreign_only, named = byid[id], true, 0
          for _, t in ipairs(ev.kind == 5 and ev.tags or {}) do
            if t[1] == "e" and t[2] then
              named = named + 1
              local target = byid[t[2]]
              if not target or target.pubkey == ev.pubkey then foreign_only = false end
            end
          end
          if not (ev.kind == 5 and named > 0 and foreign_only) then kept[#kept + 1] = id end
        end
        final_sets[#final_sets + 1] = kept
        local ok, problems = db:check()
        assert(ok, table.concat(problems, "\n"))
      end)

      it("answers 1,000 random filters and 200 REQs (and their COUNTs) like the reference, ids and order", function()
        local rand = helper.rng(order.seed or 1)
        local filters = random_filters(events, rand, 1000)
        local nonempty = 0
        for i, f in ipairs(filters) do
          local got = assert(db:query_events(f, { now = NOW }))
          local want = model:query({ f }, NOW)
          assert.same(want, ids_of(got), "filter " .. i .. ": " .. require("cjson").encode(f))
          if #want > 0 then nonempty = nonempty + 1 end
          if i % 10 == 0 then
            -- the JSON forms: filter in, events out
            local gj = assert(db:query_events(require("cjson").encode(f), { now = NOW, json = true }))
            assert.same(want, ids_of(gj))
          end
          if i % 5 == 0 then
            local n = 0
            local f2 = {}
            for k, v in pairs(f) do f2[k] = v end
            f2.limit = nil
            for _ in ipairs(model:query({ f2 }, NOW, 100000)) do n = n + 1 end
            assert.equal(n, db:count_events(f2, { now = NOW }))
          end
        end
        assert(nonempty > 300, nonempty .. " of 1000 filters matched something")
        for i = 1, 200 do
          local req = {}
          for j = 1, rand(4) do req[j] = filters[rand(#filters)] end
          local got = assert(db:query_events(req, { now = NOW, max_limit = 50 }))
          assert.same(model:query(req, NOW, 50), ids_of(got), "REQ " .. i)
          -- COUNT over the same filters (limits aside): their union, each event once however many match it
          local unlimited = {}
          for j, f in ipairs(req) do
            unlimited[j] = {}
            for k, v in pairs(f) do unlimited[j][k] = v end
            unlimited[j].limit = nil
          end
          assert.equal(#model:query(unlimited, NOW, 1000000), db:count_events(unlimited, { now = NOW }), "COUNT " .. i)
        end
      end)
    end)
  end

  it("file order and shuffled order end in the same state", function()
    assert.equal(2, #final_sets)
    assert.same(final_sets[1], final_sets[2])
  end)
end)
end)
end
