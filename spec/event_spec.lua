local layer2 = require("layer2")
local helper = require("spec.helper")

local event = layer2.event

describe("layer2.event", function()
  describe("NIP-01 serialization vectors", function()
    local vectors = helper.lines("nip01-serialization-vectors.jsonl")

    it("has all 73 cases", function()
      assert.equal(73, #vectors)
    end)

    -- the raw JSON text of the vector's event object, as it stands in the file
    local function raw_event(line)
      local start = line:find('"event[_unsigned]*": *{')
      start = line:find("{", start, true)
      local depth, i, in_string = 0, start, false
      while true do
        local c = line:sub(i, i)
        if in_string then
          if c == "\\" then i = i + 1 elseif c == '"' then in_string = false end
        elseif c == '"' then in_string = true
        elseif c == "{" then depth = depth + 1
        elseif c == "}" then
          depth = depth - 1
          if depth == 0 then return line:sub(start, i) end
        end
        i = i + 1
      end
    end

    for i, line in ipairs(vectors) do
      local v = helper.decode(line)
      local json = raw_event(line)
      local ev = v.event or v.event_unsigned
      if #ev.pubkey == 64 then
        it("case " .. i .. " serializes byte-exact and hashes to its id", function()
          assert.equal(v.serialized, event.serialize(ev))
          assert.equal(v.sha256, event.id(ev))
          -- the same through the JSON string path
          assert.equal(v.serialized, event.serialize(json))
          assert.equal(v.sha256, event.id(json))
          if v.event then assert.equal(v.sha256, v.event.id) end
        end)
      else
        -- the two placeholder cases ("012345"): we refuse them rather than hash a key that
        -- cannot be a public key
        it("case " .. i .. " (placeholder pubkey) is refused with a message", function()
          local s, err = event.serialize(ev)
          assert.is_nil(s)
          assert.equal("invalid: pubkey must be 64 lowercase hex characters", err)
        end)
      end
    end
  end)

  helper.each_corpus(pending, "parsing, hashing and verifying", function(c)
  describe(c.name .. " events", function()
    local lines = helper.lines(c.valid)

    it("all " .. c.counts.valid .. " parse, hash to their id and verify (JSON and table forms)", function()
      assert.equal(c.counts.valid, #lines)
      for i, line in ipairs(lines) do
        local ev, err = event.parse(line)
        assert(ev, "line " .. i .. ": " .. tostring(err))
        assert.equal(ev.id, event.id(line))
        local ok, verr = event.verify(line)
        assert(ok, "line " .. i .. ": " .. tostring(verr))
        -- lua-cjson decodes numbers as floats: integral floats are accepted
        local decoded = helper.decode(line)
        ok, verr = event.verify(decoded)
        assert(ok, "line " .. i .. " as table: " .. tostring(verr))
        assert.equal(ev.id, event.id(decoded))
      end
    end)

    it("parse -> encode -> parse round-trips", function()
      for i, line in ipairs(lines) do
        local ev = event.parse(line)
        local wire = event.encode(ev)
        local again = event.parse(wire)
        assert(helper.same(ev, again), "line " .. i)
        assert.equal(wire, event.encode(line))
        assert(event.verify(wire))
      end
    end)

    it("the binary form round-trips exactly and is smaller than the JSON", function()
      local json_bytes, bin_bytes = 0, 0
      for i, line in ipairs(lines) do
        local ev = event.parse(line)
        local bin = event.pack(line)
        local back = event.unpack(bin)
        assert(helper.same(ev, back), "line " .. i)
        assert.equal(event.encode(ev), event.encode(back))
        assert.equal(bin, event.pack(back))
        json_bytes, bin_bytes = json_bytes + #line, bin_bytes + #bin
      end
      assert(bin_bytes < json_bytes * 0.8, ("binary %d vs JSON %d bytes"):format(bin_bytes, json_bytes))
    end)
  end)

  describe(c.name .. " refused events", function()
    local lines = helper.lines(c.invalid)
    local reasons = helper.lines(c.reasons)

    it("all " .. c.counts.invalid .. " are refused for the reason given", function()
      assert.equal(c.counts.invalid, #lines)
      assert.equal(#lines, #reasons)
      local seen = {}
      for i, line in ipairs(lines) do
        local reason = helper.decode(reasons[i]).reason
        seen[reason] = (seen[reason] or 0) + 1
        local ok, err = event.verify(line)
        assert.is_false(ok)
        if reason == "bad_shape" then
          local ev, perr = event.parse(line)
          assert(ev == nil, "line " .. i .. " parsed but has a bad shape")
          assert.matches("^invalid: ", perr)
          assert.not_matches("bad event id", perr)
        elseif reason == "bad_id" then
          -- verify reports shape, then id, then signature: a malformed id is a bad id
          assert(err:match("^invalid: bad event id"), "line " .. i .. ": " .. err)
        else
          assert.equal("bad_sig", reason)
          assert(err:match("^invalid: bad signature"), "line " .. i .. ": " .. err)
        end
      end
      assert.same(c.counts.reasons, seen)
    end)
  end)
  end)

  describe("BIP-340 vectors", function()
    local rows = helper.lines("bip340-vectors.csv")
    table.remove(rows, 1)

    it("verify as the file says; sign reproduces the signatures", function()
      assert(#rows >= 15)
      for _, row in ipairs(rows) do
        local f = {}
        for field in (row .. ","):gmatch("([^,]*),") do f[#f + 1] = field end
        local index, sec, pub, aux, msg, sig, result = f[1], f[2]:lower(), f[3]:lower(), f[4]:lower(),
          f[5]:lower(), f[6]:lower(), f[7]
        assert.equal(result == "TRUE", layer2.schnorr.verify(pub, msg, sig), "vector " .. index)
        if sec ~= "" then
          assert.equal(pub, layer2.schnorr.pubkey(sec), "vector " .. index)
          assert.equal(sig, layer2.schnorr.sign(sec, msg, aux), "vector " .. index)
        end
      end
    end)
  end)

  describe("signing", function()
    local sec = ("0"):rep(63) .. "3"
    local unsigned = { created_at = 1700000000, kind = 1, tags = { { "t", "layer2" } }, content = "hello" }

    local function unsigned_with(pubkey)
      local t = { pubkey = pubkey }
      for k, v in pairs(unsigned) do t[k] = v end
      return t
    end

    it("sign -> verify round trip, as table and as JSON", function()
      local ev = assert(event.sign(unsigned, sec))
      assert.equal(layer2.schnorr.pubkey(sec), ev.pubkey)
      assert.is_true(event.verify(ev))
      assert.is_true(event.verify(event.encode(ev)))
      assert.equal(ev.id, event.id(unsigned_with(ev.pubkey)))
    end)

    it("is deterministic with an aux value, random without", function()
      local aux = ("ab"):rep(32)
      assert.equal(event.sign(unsigned, sec, aux).sig, event.sign(unsigned, sec, aux).sig)
      assert.not_equal(event.sign(unsigned, sec).sig, event.sign(unsigned, sec).sig)
    end)

    it("a tampered event fails", function()
      local ev = event.sign(unsigned, sec)
      ev.content = "hellO"
      local ok, err = event.verify(ev)
      assert.is_false(ok)
      assert.matches("^invalid: bad event id", err)
      ev = event.sign(unsigned, sec)
      ev.sig = ev.sig:sub(1, 127) .. (ev.sig:sub(128) == "0" and "1" or "0")
      ok, err = event.verify(ev)
      assert.is_false(ok)
      assert.equal("invalid: bad signature", err)
    end)

    it("refuses a bad secret key", function()
      local ev, err = event.sign(unsigned, ("0"):rep(64))
      assert.is_nil(ev)
      assert.equal("invalid: secret key is not valid", err)
      assert.has_error(function() event.sign(unsigned, "zz") end)
    end)
  end)

  describe("verify_list (a batch checked on threads)", function()
    helper.each_corpus(pending, "verify_list", function(c)
    it("answers for each event exactly as event.verify does, whatever the threads (" .. c.name .. " events)", function()
      local valid, invalid = helper.lines(c.valid), helper.lines(c.invalid)
      local list, want = {}, {}
      for i = 1, math.min(math.max(#valid, #invalid), 400) do
        for _, line in ipairs({ valid[i], invalid[i] }) do
          list[#list + 1] = line
          local ok, msg = event.verify(line)
          want[#list] = ok or msg
        end
      end
      for _, o in ipairs({ {}, { threads = 1 }, { threads = 3 } }) do assert.same(want, event.verify_list(list, o)) end
      -- tables too, and what is neither a table nor a string
      local ev = event.sign({ kind = 1, created_at = 1, tags = {}, content = "t" }, ("0"):rep(63) .. "4")
      assert.same({ true, "invalid: an event is a table or a JSON string, not a number" }, event.verify_list({ ev, 5 }))
      assert.has_error(function() event.verify_list(list, { treads = 2 }) end,
        "layer2.event.verify_list: unknown option 'treads' (did you mean 'threads'?)")
      assert.has_error(function() event.verify_list("x") end)
    end)
    end)
  end)

  describe("check_lines (an import's dry run)", function()
    local function tmpfile(lines)
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write(table.concat(lines, "\n"), "\n")
      f:close()
      return path
    end

    helper.each_corpus(pending, "check_lines", function(c)
    it("refuses exactly the lines event.verify refuses, with its message, whatever the batch and threads ("
      .. c.name .. " events)", function()
      -- valid and invalid lines interleaved, with blank lines the import skips
      local valid, invalid = helper.lines(c.valid), helper.lines(c.invalid)
      local lines, expected, shape_only = {}, {}, {}
      for i = 1, math.max(#valid, #invalid) do
        for _, line in ipairs({ valid[i], invalid[i] }) do
          lines[#lines + 1] = line
          local ok, msg = event.verify(line)
          if not ok then expected[#lines] = msg end
          if not event.parse(line) then shape_only[#lines] = select(2, event.parse(line)) end
        end
        if i % 97 == 0 then lines[#lines + 1] = "  " end
      end
      local blank = math.floor(math.max(#valid, #invalid) / 97)
      local path = tmpfile(lines)
      local nexpected = 0
      for _ in pairs(expected) do nexpected = nexpected + 1 end
      for _, o in ipairs({ {}, { batch = 7, threads = 1 }, { batch = 100, threads = 3 }, { verify = false } }) do
        local got, reported = {}, 0
        o.on_refused = function(line, msg) got[line] = msg end
        o.progress = function(n) reported = n end
        local counts = assert(event.check_lines(path, o))
        local want = o.verify == false and shape_only or expected
        assert.same(want, got)
        local nwant = 0
        for _ in pairs(want) do nwant = nwant + 1 end
        -- lines counts those checked; progress, the lines read (blank ones too)
        assert.same({ lines = #lines - blank, valid = #lines - blank - nwant, invalid = nwant }, counts)
        assert.equal(#lines, reported)
      end
      assert(nexpected >= #invalid and nexpected > 0)
      os.remove(path)
    end)
    end)

    it("reads a handle and a function as import does; a failing source raises; a missing file is refused", function()
      local lines = {}
      for i = 1, 20 do
        local ev = event.sign({ kind = 1, created_at = 1700000000 + i, tags = {}, content = "n" .. i }, ("0"):rep(63) .. "3")
        lines[i] = event.encode(ev)
      end
      -- a signature with its first digit changed
      lines[5] = lines[5]:gsub('"sig":"(%x)', function(d) return '"sig":"' .. (d == "0" and "1" or "0") end)
      local path = tmpfile(lines)
      local fh = assert(io.open(path))
      local refused = {}
      local counts = assert(event.check_lines(fh, { on_refused = function(line, msg) refused[line] = msg end }))
      fh:close()
      local ok, msg = event.verify(lines[5])
      assert.is_false(ok)
      assert.same({ [5] = msg }, refused)
      assert.same({ lines = 20, valid = 19, invalid = 1 }, counts)
      local k = 0
      local raised, err = pcall(event.check_lines, function()
        k = k + 1
        if k == 12 then error("the source broke") end
        return lines[k]
      end, { batch = 4 })
      assert.is_false(raised)
      assert.matches("the source broke", err)
      k = 0
      raised, err = pcall(event.check_lines, function()
        k = k + 1
        return k < 3 and lines[k] or 42
      end)
      assert.is_false(raised)
      assert.matches("the import source returned a number, not a line", err, 1, true)
      local none, why = event.check_lines(path .. ".missing")
      assert.is_nil(none)
      assert.equal("error: cannot open '" .. path .. ".missing': No such file or directory", why)
      os.remove(path)
    end)
  end)
end)
