-- Hostile input against every kind of store (LMDB, PostgreSQL, the two-level backend): events at
-- and just over each limit, absurd filters and absurd numbers, unusable paths. Each is answered
-- correctly or refused with a message naming the limit, and a refusal stores nothing.
local layer2 = require("layer2")
local helper = require("spec.helper")
local pg = require("spec.pg")
local cjson = require("cjson")

local SEC = ("4"):rep(63) .. "1"
local LIMITS = layer2.event.limits()
local NOW = os.time()

local function sign(t)
  return assert(layer2.event.sign({ created_at = t.created_at or NOW - 60, kind = t.kind or 1, tags = t.tags or {},
    content = t.content or "" }, SEC))
end

-- a signed event whose wire JSON is exactly `size` bytes (the padding is in the content)
local function event_of_size(size)
  local base = #layer2.event.encode(sign({ content = "" }))
  local ev = sign({ content = ("p"):rep(size - base) })
  local json = layer2.event.encode(ev)
  assert(#json == size, #json)
  return json
end

local KINDS = {
  { "lmdb store", function()
    local dir = helper.tmpdir()
    return assert(layer2.lmdb.open(dir)), function() helper.rmdir(dir) end
  end },
  { "postgres store", function() return assert(layer2.postgres.open((pg.fresh()))), function() end end },
  { "two-level backend (1 MiB L1 on PostgreSQL)", function()
    local dir = helper.tmpdir()
    local db = assert(layer2.open(dir, { l2 = (pg.fresh()), l1 = { size_limit = 1024 * 1024 }, nosync = true,
      log = function() end }))
    return db, function() helper.rmdir(dir) end
  end },
}

for _, kind in ipairs(KINDS) do
  describe("hostile input, " .. kind[1], function()
    local db, cleanup

    before_each(function() db, cleanup = kind[2]() end)
    after_each(function()
      db:close()
      cleanup()
    end)

    local function count() return db:count_events({}) end

    it("events at each limit are stored; just over it, refused naming the limit, nothing stored", function()
      -- { what, the event at the limit, a copy just over it (unsigned: the limit is checked first), message }
      local function tags_of(n)
        local tags = {}
        for i = 1, n do tags[i] = { "t", "x" } end
        return tags
      end
      local function elems_of(n)
        local tag = { "x" }
        for i = 2, n do tag[i] = "e" end
        return tag
      end
      local cases = {
        { "event bytes", event_of_size(LIMITS.max_event_bytes), event_of_size(LIMITS.max_event_bytes + 1),
          ("invalid: event is %d bytes, over the limit of %d"):format(LIMITS.max_event_bytes + 1,
            LIMITS.max_event_bytes), json_only = true }, -- a table is measured by its canonical form
        { "tags", sign({ tags = tags_of(LIMITS.max_tags) }), function(ev) ev.tags[#ev.tags + 1] = { "t", "x" } end,
          ("invalid: too many tags %%(the limit is %d%%)"):format(LIMITS.max_tags) },
        { "tag elements", sign({ tags = { elems_of(LIMITS.max_tag_elems) } }),
          function(ev) ev.tags[1][#ev.tags[1] + 1] = "e" end,
          ("invalid: tag 0 has too many elements %%(the limit is %d%%)"):format(LIMITS.max_tag_elems) },
        { "tag element bytes", sign({ tags = { { "t", ("v"):rep(LIMITS.max_tag_elem_bytes) } } }),
          function(ev) ev.tags[1][2] = ev.tags[1][2] .. "v" end,
          ("invalid: tag 0 element is %d bytes, over the limit of %d"):format(LIMITS.max_tag_elem_bytes + 1,
            LIMITS.max_tag_elem_bytes) },
      }
      local stored = 0
      for _, c in ipairs(cases) do
        local at, over = c[2], c[3]
        if type(over) == "function" then
          local t = layer2.event.parse(layer2.event.encode(at)) -- a copy
          over(t)
          over = t
        end
        for _, form in ipairs(c.json_only and { "json" } or { "json", "table" }) do
          local good = form == "json" and (type(at) == "string" and at or layer2.event.encode(at)) or at
          local bad = form == "json" and (type(over) == "string" and over or cjson.encode(over)) or over
          local ok, err = db:save_event(bad)
          assert.is_false(ok, c[1] .. " over the limit, " .. form)
          assert.matches(c[4], err)
          ok, err = db:save_event(good)
          if form == "json" then
            assert(ok, c[1] .. " at the limit: " .. tostring(err))
            stored = stored + 1
          else
            assert.same({ false, "duplicate: already have this event" }, { ok, err })
          end
        end
      end
      assert.equal(stored, count())
    end)

    it("absurd filters: refused naming the limit, or answered correctly", function()
      assert(db:save_event(sign({ content = "one", tags = { { "t", "one" } } })))
      local function refused(f, msg)
        local r, err = db:query_events(f)
        assert.is_nil(r)
        assert.matches(msg, err, 1, true)
        local n, err2 = db:count_events(f)
        assert.is_nil(n)
        assert.matches(msg, err2, 1, true)
      end
      local function answered(f, want)
        local r = assert(db:query_events(f))
        assert.equal(want, #r)
      end
      local ids = {}
      for i = 1, 10000 do ids[i] = ("%064x"):format(i) end
      refused({ ids = ids }, "invalid: ids has more than 1000 entries")
      local some = {}
      for i = 1, 1000 do some[i] = ids[i] end
      answered({ ids = some }, 0)
      local values = {}
      for i = 1, 1001 do values[i] = "v" .. i end
      refused({ ["#t"] = values }, "invalid: #t has more than 1000 values")
      values[1001] = nil
      values[1000] = "one"
      answered({ ["#t"] = values }, 1)
      refused({ ["#t"] = { ("x"):rep(1024 * 1024) } }, "invalid: #t[0] is 1048576 bytes, over the limit of 8192")
      answered({ ["#t"] = { ("x"):rep(8192) } }, 0)
      refused({ ["#t"] = { "\255\254" } }, "invalid: #t[0] is not valid UTF-8")
      local hundred = {}
      for i = 1, 100 do hundred[i] = { kinds = { i - 1 } } end
      answered(hundred, 1)
      local lots = {}
      for i = 1, 501 do lots[i] = { kinds = { 1 } } end
      refused(lots, "invalid: more than 500 filters")
      answered({ since = NOW, ["until"] = NOW - 3600 }, 0) -- since > until: nothing, not an error
      answered({ since = 2 ^ 53 - 1 }, 0)
      answered({ limit = 2 ^ 53 - 1 }, 1) -- capped by max_limit
      refused({ since = 2 ^ 53 }, "invalid: since must be a non-negative integer below 2^53")
      refused({ limit = 2 ^ 63 }, "invalid: limit must be")
      refused({ kinds = { 70000 } }, "invalid: kinds[0] must be an integer from 0 to 65535")
      refused({ kinds = { -1 } }, "invalid: kinds[0] must be an integer from 0 to 65535")
      refused({ since = -5 }, "invalid: since must be a non-negative integer")
      refused('{"since":1e400}', "invalid: ")
      refused('{"kinds":' .. ("["):rep(10000) .. ("]"):rep(10000) .. "}", "invalid: ")
      refused('{"ids":["' .. ("a"):rep(64) .. '"' .. ("]"):rep(3), "invalid: ")
      refused({ ["#t"] = { "x" }, search = ("s"):rep(2000) }, "search")
      assert.equal(1, count())
    end)

    it("is closed cleanly and refuses use after close", function()
      db:close()
      assert.has_error(function() db:query_events({}) end, "layer2: attempt to use a closed store")
      assert.has_error(function() db:save_event(sign({})) end, "layer2: attempt to use a closed store")
      db, cleanup = kind[2]() -- for after_each
    end)
  end)
end

describe("hostile places", function()
  it("an unusable path, a file for a directory, a too small L1: clear errors", function()
    local file = os.tmpname()
    for _, path in ipairs({ "/proc/version", file, "/proc/self/nonexistent/x" }) do
      local s, err = layer2.lmdb.open(path)
      assert.is_nil(s)
      assert.matches("^error: ", err)
      local b, berr = layer2.open(path, { log = function() end })
      assert.is_nil(b)
      assert.matches("^error: ", berr)
    end
    os.remove(file)
    assert.has_error(function() layer2.open(helper.tmpdir(), { l1 = { size_limit = 1000 } }) end,
      "layer2.open: l1.size_limit must be a number of bytes, at least 256 KiB")
  end)
end)
