local layer2 = require("layer2")
local helper = require("spec.helper")
local filter = layer2.filter

local A = ("a"):rep(64)
local B = ("b"):rep(64)

local function refused(f, pattern)
  local out, err = filter.parse(f)
  assert.is_nil(out)
  assert.is_string(err)
  assert.matches("^invalid: ", err)
  assert.matches(pattern, err)
end

-- The reference: NIP-01 matching written plainly over decoded tables (spec/ref.lua).
local ref_match = require("spec.ref").match

describe("layer2.filter", function()
  it("normalizes: sorted, deduplicated, the same from a table and from JSON", function()
    local f = { ids = { B, A, B }, kinds = { 7, 1, 7 }, ["#t"] = { "z", "a", "z" }, since = 5, ["until"] = 9.0, limit = 10 }
    local want = { ids = { A, B }, kinds = { 1, 7 }, ["#t"] = { "a", "z" }, since = 5, ["until"] = 9, limit = 10 }
    assert.same(want, filter.parse(f))
    local json = '{"ids":["' .. B .. '","' .. A .. '"],"kinds":[7,1,7],"#t":["z","a","z"],"since":5,"until":9,"limit":10}'
    assert.same(want, filter.parse(json))
    assert.same({}, filter.parse({}))
    assert.same({ authors = {}, search = "q" }, filter.parse('{"authors":[],"search":"q"}'))
  end)

  it("refuses absurd or malformed filters with a message", function()
    refused({ idz = { A } }, "unknown filter field 'idz'")
    refused({ ["#ab"] = { "x" } }, "tag filter '#ab' must be '#' and a single letter")
    refused({ ["#"] = { "x" } }, "tag filter '#' must be")
    refused({ ["#1"] = { "x" } }, "tag filter '#1' must be")
    refused({ ids = { "abc" } }, "ids%[0%] must be 64 lowercase hex characters %(no prefixes%)")
    refused({ authors = { A, A:upper() } }, "authors%[1%] must be 64 lowercase hex")
    refused({ ids = A }, "ids must be an array")
    refused({ ids = { 1 } }, "ids%[0%] must be a string")
    refused({ kinds = { 70000 } }, "kinds%[0%] must be an integer from 0 to 65535")
    refused({ kinds = { 1.5 } }, "kinds entries must be integers")
    refused({ since = -1 }, "since must be a non%-negative integer")
    refused({ limit = "10" }, "limit must be a number")
    refused({ ["until"] = 1.5 }, "until must be an integer")
    refused({ ["#e"] = { 5 } }, "#e%[0%] must be a string")
    refused({ ["#e"] = { ("x"):rep(1024 * 1024) } }, "#e%[0%] is 1048576 bytes, over the limit of 8192")
    refused({ ["#e"] = { "\255" } }, "#e%[0%] is not valid UTF%-8")
    refused({ search = 5 }, "search must be a string")
    refused({ [1] = "x" }, "filter keys must be strings")
    local ids = {}
    for i = 1, 1001 do ids[i] = ("%064x"):format(i) end
    refused({ ids = ids }, "ids has more than 1000 entries")
    refused('{"kinds":[1],"kinds":[2]}', "duplicate filter field 'kinds'")
    refused('{"#e":["a"],"#e":["b"]}', "duplicate filter field '#e'")
    refused("[]", "a filter must be a JSON object")
    refused('{"kinds":[1,]}', "malformed JSON")
    refused('{"kinds":["1"]}', "kinds%[0%] must be a number")
    refused('{"ids":[' .. ("["):rep(50) .. "]}", "ids%[0%] must be a string")
  end)

  it("raises on misuse", function()
    assert.has_error(function() filter.parse(nil) end)
    assert.has_error(function() filter.match({}, 5) end)
  end)

  describe("match", function()
    local sec = ("0"):rep(63) .. "9"
    local ev = layer2.event.sign({ created_at = 100, kind = 7, content = "",
      tags = { { "e", A }, { "t" }, { "tt", "x" }, { "E", "up" }, { "p", B, "relay" } } }, sec)

    it("since and until are inclusive", function()
      assert.is_true(filter.match({ since = 100, ["until"] = 100 }, ev))
      assert.is_false(filter.match({ since = 101 }, ev))
      assert.is_false(filter.match({ ["until"] = 99 }, ev))
    end)

    it("tags: exact values, the first value only, single-letter names, case-sensitive", function()
      assert.is_true(filter.match({ ["#e"] = { A } }, ev))
      assert.is_false(filter.match({ ["#e"] = { A:sub(1, 63) } }, ev))
      assert.is_true(filter.match({ ["#p"] = { B } }, ev))
      assert.is_false(filter.match({ ["#p"] = { "relay" } }, ev))
      assert.is_false(filter.match({ ["#t"] = { "" } }, ev))
      assert.is_true(filter.match({ ["#E"] = { "up" } }, ev))
      assert.is_false(filter.match({ ["#e"] = { "up" } }, ev))
      assert.is_true(filter.match({ ["#e"] = { A }, ["#p"] = { B } }, ev))
      assert.is_false(filter.match({ ["#e"] = { A }, ["#p"] = { A } }, ev))
    end)

    it("an empty list matches nothing; no prefixes", function()
      assert.is_false(filter.match({ kinds = {} }, ev))
      assert.is_false(filter.match({ ["#e"] = {} }, ev))
      assert.is_true(filter.match({ ids = { ev.id } }, ev))
      assert.is_nil((filter.match({ ids = { ev.id:sub(1, 8) } }, ev)))
      assert.is_true(filter.match({}, ev))
    end)

    helper.each_corpus(pending, "matching against the reference", function(c)
    it("agrees with a brute-force reference on " .. c.name .. " events", function()
      local lines = helper.lines(c.valid)
      local rand = helper.rng(20261123)
      local events = {}
      for i = 1, 400 do
        events[i] = helper.decode(lines[rand(#lines)])
      end
      local function pick() return events[rand(#events)] end
      local function tag_value(letter)
        for _ = 1, 20 do
          local e = pick()
          for _, t in ipairs(e.tags) do
            if t[1] == letter and t[2] then return t[2] end
          end
        end
        return "none"
      end
      local hits, total = 0, 0
      for _ = 1, 150 do
        local f = {}
        local fields = rand(3)
        for _ = 1, fields do
          local which = rand(8)
          if which == 1 then f.ids = { pick().id, pick().id, ("%064x"):format(rand(1000)) }
          elseif which == 2 then f.authors = { pick().pubkey, pick().pubkey }
          elseif which == 3 then f.kinds = { pick().kind, rand(10) - 1 }
          elseif which == 4 then f.since = pick().created_at
          elseif which == 5 then f["until"] = pick().created_at
          else
            local letter = ({ "e", "p", "t", "d" })[rand(4)]
            f["#" .. letter] = { tag_value(letter), tag_value(letter) }
          end
        end
        for _, e in ipairs(events) do
          local want = ref_match(f, e)
          assert.equal(want, filter.match(f, e))
          total = total + 1
          if want then hits = hits + 1 end
        end
        -- the JSON paths agree too
        local e = pick()
        assert.equal(ref_match(f, e), filter.match(require("cjson").encode(f), layer2.event.encode(e)))
      end
      assert(hits > 100 and hits < total, ("%d of %d matched"):format(hits, total))
    end)
    end)
  end)

  it("has configurable limits", function()
    local saved = filter.limits()
    filter.limits({ max_ids = 2 })
    local out, err = filter.parse({ ids = { A, B, A } })
    filter.limits(saved)
    assert.is_nil(out)
    assert.equal("invalid: ids has more than 2 entries", err)
    assert.same(saved, filter.limits())
  end)
end)
