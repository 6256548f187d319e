-- Crafted bad input: every refusal is a value with a message that says what is wrong.
local layer2 = require("layer2")
local event = layer2.event

local SEC = ("0"):rep(63) .. "7"
local good = event.sign({ created_at = 1700000000, kind = 1, tags = { { "e", ("ab"):rep(32), "wss://r" }, { "t", "x" } },
  content = "hi \"there\"\n" }, SEC, ("11"):rep(32))
local good_json = event.encode(good)

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = type(v) == "table" and copy(v) or v end
  return out
end

local function with(field, value)
  local t = copy(good)
  t[field] = value
  return t
end

-- good_json with one field's JSON text replaced
local function json_with(field, raw)
  local s, n = good_json:gsub('"' .. field .. '":[^,}]*', function() return '"' .. field .. '":' .. raw end, 1)
  assert(n == 1)
  return s
end

local function refused(input, pattern)
  local ev, err = event.parse(input)
  assert.is_nil(ev)
  assert.is_string(err)
  assert.matches("^invalid: ", err)
  if pattern then assert.matches(pattern, err) end
  return err
end

local function refused_table(t, pattern)
  local ok, err = event.verify(t)
  assert.is_false(ok)
  assert.matches("^invalid: ", err)
  assert.matches(pattern, err)
  local s, err2 = event.encode(t)
  assert.is_nil(s)
  assert.matches("^invalid: ", err2)
end

describe("crafted bad events", function()
  it("the good event is good", function()
    assert.is_true(event.verify(good))
    assert.is_true(event.verify(good_json))
  end)

  it("every truncation of a valid event is refused", function()
    for n = 0, #good_json - 1 do
      refused(good_json:sub(1, n))
    end
  end)

  it("names the malformed JSON and where", function()
    refused("", "an event must be a JSON object")
    refused("{", "malformed JSON.*end of input")
    refused(good_json .. "x", "trailing characters")
    refused(good_json:gsub(',"kind"', ',,"kind"'), "malformed JSON.*byte")
    refused(good_json:gsub('}$', ',}'), "trailing comma")
    refused("[]", "an event must be a JSON object")
    refused('"x"', "an event must be a JSON object")
    refused("null", "an event must be a JSON object")
    refused(good_json:gsub('"content":"hi', '"content":"h\1i'), "raw control character")
    refused(good_json:gsub('"content":"hi', '"content":"h\\qi'), "bad escape")
  end)

  it("refuses wrong types, naming the field", function()
    refused(json_with("id", "1"), "id must be a string")
    refused(json_with("pubkey", "[]"), "pubkey must be a string")
    refused(json_with("sig", "null"), "sig must be a string")
    refused(json_with("created_at", '"1700000000"'), "created_at must be a number")
    refused(json_with("created_at", "1.5"), "created_at must be an integer")
    refused(json_with("kind", '"1"'), "kind must be a number")
    refused(json_with("kind", "true"), "kind must be a number")
    refused(json_with("content", "5"), "content must be a string")
    refused(good_json:gsub('"tags":%[.-%]%]', '"tags":{}'), "tags must be an array of arrays of strings")
    refused(good_json:gsub('"tags":%[.-%]%]', '"tags":["e"]'), "tags%[0%] must be an array of strings")
    refused(good_json:gsub('"tags":%[.-%]%]', '"tags":[["e",1]]'), "tags%[0%]%[1%] must be a string")
    refused(good_json:gsub('"tags":%[.-%]%]', '"tags":[["e",["x"]]]'), "tags%[0%]%[1%] must be a string")
  end)

  it("refuses wrong types in tables, naming the field", function()
    refused_table(with("id", 1), "id must be a string")
    refused_table(with("created_at", "1700000000"), "created_at must be a number")
    refused_table(with("created_at", 1.5), "created_at must be an integer")
    refused_table(with("kind", "1"), "kind must be a number")
    refused_table(with("content", 5), "content must be a string")
    refused_table(with("tags", "e"), "tags must be an array of arrays of strings")
    refused_table(with("tags", { "e" }), "tags%[0%] must be an array of strings")
    refused_table(with("tags", { { "e", 1 } }), "tags%[0%]%[1%] must be a string")
    refused_table(with("sig", nil), "missing field 'sig'")
  end)

  it("refuses uppercase or short hex", function()
    refused(json_with("id", '"' .. good.id:upper() .. '"'), "id must be 64 lowercase hex characters")
    refused(json_with("pubkey", '"' .. good.pubkey:upper() .. '"'), "pubkey must be 64 lowercase hex")
    refused(json_with("sig", '"' .. good.sig:sub(3) .. '"'), "sig must be 128 lowercase hex")
    refused_table(with("pubkey", good.pubkey:sub(2)), "pubkey must be 64 lowercase hex")
    -- verify orders its reasons: a malformed id is a bad id, a malformed sig a bad signature
    local ok, err = event.verify(with("id", good.id:upper()))
    assert.is_false(ok)
    assert.matches("^invalid: bad event id", err)
    ok, err = event.verify(with("sig", "00"))
    assert.is_false(ok)
    assert.matches("^invalid: bad signature", err)
  end)

  it("refuses kinds and times out of range", function()
    refused(json_with("kind", "70000"), "kind must be an integer from 0 to 65535")
    refused(json_with("kind", "-1"), "kind must be an integer from 0 to 65535")
    refused(json_with("created_at", "-5"), "created_at must be a non%-negative integer")
    refused(json_with("created_at", "99999999999999999999999"), "created_at out of range")
    refused(json_with("created_at", "1e300"), "created_at out of range")
    refused_table(with("kind", 70000), "kind must be an integer from 0 to 65535")
    refused_table(with("created_at", -1), "created_at must be a non%-negative integer")
    refused_table(with("created_at", 2 ^ 60), "created_at must be a non%-negative integer below 2%^53")
  end)

  it("accepts integral numbers written with a fraction or an exponent", function()
    local ev = event.parse(json_with("created_at", "1.7e9"))
    assert.equal(1700000000, ev.created_at)
    assert.is_true(event.verify(json_with("created_at", "1700000000.0")))
  end)

  it("refuses invalid UTF-8 and lone surrogates", function()
    refused(good_json:gsub('"content":"hi', '"content":"h\255i'), "invalid UTF%-8")
    refused(good_json:gsub('"content":"hi', '"content":"h\192\175i'), "invalid UTF%-8") -- overlong '/'
    refused(good_json:gsub('"content":"hi', '"content":"h\237\160\128i'), "invalid UTF%-8") -- UTF-8 surrogate
    refused(good_json:gsub('"content":"hi', '"content":"h\\ud800i'), "unpaired high surrogate")
    refused(good_json:gsub('"content":"hi', '"content":"h\\udc00i'), "lone low surrogate")
    refused(good_json:gsub('"t","x"', '"t","\244\144\128\128"'), "invalid UTF%-8") -- past U+10FFFF
    refused_table(with("content", "a\255b"), "content is not valid UTF%-8")
    refused_table(with("tags", { { "t", "\192\175" } }), "tag 0 element is not valid UTF%-8")
  end)

  it("refuses oversized events with the limit in the message", function()
    local big = ("x"):rep(10 * 1024 * 1024)
    refused(good_json:gsub('"content":"hi', function() return '"content":"' .. big end),
      "event is %d+ bytes, over the limit of 262144")
    refused_table(with("content", big), "content is 10485760 bytes, over the limit of 262144")
  end)

  it("refuses deep nesting without recursion trouble", function()
    local deep = ("["):rep(100000) .. ("]"):rep(100000)
    refused(good_json:gsub("^{", function() return '{"junk":' .. deep .. "," end), "nested deeper than 32 levels")
    refused(("["):rep(100000), "an event must be a JSON object")
    refused(good_json:gsub('"tags":%[.-%]%]', '"tags":[[["x"]]]'), "tags%[0%]%[0%] must be a string")
  end)

  it("refuses duplicate and missing fields, ignores unknown ones", function()
    refused(good_json:gsub("^{", '{"kind":1,'), "duplicate field 'kind'")
    refused(good_json:gsub(',"sig":"%x+"', ""), "missing field 'sig'")
    refused(good_json:gsub('"content":"[^}]*",', ""), "missing field 'content'")
    local extra = good_json:gsub("^{", '{"relay":"wss://x","seen":[1,{"a":null}],')
    assert.is_true(event.verify(extra))
    local t = with("extra", { 1, 2 })
    assert.is_true(event.verify(t))
  end)

  it("keeps \\u0000 and other escapes byte-exact", function()
    local ev = event.sign({ created_at = 1, kind = 1, tags = { { "a\0b" } }, content = "x\0y\0" }, SEC)
    assert.equal(4, #ev.content)
    local wire = event.encode(ev)
    assert.truthy(wire:find('"x\\u0000y\\u0000"', 1, true))
    local back = event.parse(wire)
    assert.equal("x\0y\0", back.content)
    assert.equal("a\0b", back.tags[1][1])
    assert.is_true(event.verify(wire))
    assert.equal(ev.content, event.unpack(event.pack(ev)).content)
    -- an escaped NUL in the JSON input decodes to one byte
    local parsed = event.parse(json_with("id", '"' .. good.id .. '"'):gsub('"content":"hi', '"content":"h\\u0000i'))
    assert.equal("h\0i", parsed.content:sub(1, 3))
  end)

  it("fuzzer finds stay fixed", function()
    -- libFuzzer (fuzz/event_parse.c): skipping an unknown field whose string holds invalid UTF-8
    -- did pointer arithmetic on NULL (UBSan); now a clean refusal
    local input = '{"id":"1","pubk(y":"\143bc","created_at":0,"kind":30800,"tags":[["d","a"' ..
      ("\154"):rep(17) .. ']],"content":"","sig":""}'
    local ok, err = event.verify(input) -- the lenient path the fuzzer took
    assert.is_false(ok)
    assert.matches("^invalid: invalid UTF%-8", err)
  end)

  it("refuses a corrupt binary form", function()
    local bin = event.pack(good)
    for _, b in ipairs({ "", "x", bin:sub(1, 100), bin:sub(1, #bin - 1), "\3" .. bin:sub(2), bin .. "z" }) do
      local ev, err = event.unpack(b)
      assert.is_nil(ev)
      assert.equal("error: corrupt stored event", err)
    end
    -- the stored stub of an evicted event is not a whole event
    local ev, err = event.unpack("\2" .. bin:sub(2))
    assert.is_nil(ev)
    assert.equal("error: a stub (an evicted event's index entry), not a whole event", err)
  end)

  it("has configurable limits", function()
    local saved = event.limits()
    assert.equal(262144, saved.max_event_bytes)
    local ok, err = pcall(function()
      event.limits({ max_tags = 1 })
      refused(good_json, "too many tags %(the limit is 1%)")
      event.limits({ max_tags = 10, max_tag_elem_bytes = 10 })
      refused_table(with("tags", { { "t", ("y"):rep(11) } }), "tag 0 element is 11 bytes, over the limit of 10")
    end)
    event.limits(saved)
    assert(ok, err)
    assert.same(saved, event.limits())
    assert.is_true(event.verify(good_json))
    assert.has_error(function() event.limits({ max_tags = 0 }) end, "layer2: limit 'max_tags' must be a positive integer")
    assert.has_error(function() event.limits({ nope = 1 }) end, "layer2: unknown limit 'nope'")
  end)

  it("raises on misuse", function()
    assert.has_error(function() event.verify(42) end)
    assert.has_error(function() event.verify(nil) end)
    assert.has_error(function() event.parse({}) end)
    assert.has_error(function() event.encode(true) end)
    assert.has_error(function() event.sign(good, "not hex") end)
  end)
end)
