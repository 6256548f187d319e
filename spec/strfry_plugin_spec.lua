-- strfry's write-policy plugins run by a layer2 relay (layer2.strfry_plugin over layer2.child): the
-- child process spoken to in lines, then strfry's own example plugin (spec/relay/strfry_whitelist.js,
-- in node) deciding through layer2.relay over a real store. The same file on nginx and the plain
-- relay is relay_policy_spec's.
local layer2 = require("layer2")
local strfry_plugin = require("layer2.strfry_plugin")
local helper = require("spec.helper")

local ROOT = io.popen("pwd"):read("l")
local WHITELIST_JS = ROOT .. "/spec/relay/strfry_whitelist.js"

local function write_file(path, text, mode)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  if mode then os.execute(("chmod %s %s"):format(mode, path)) end
end

-- a Lua 5.4 plugin answering each request with `action` (a plugin that can act wrong on purpose)
local function lua_plugin(body)
  local code = ("local cjson = require('cjson') io.stdout:setvbuf('line') " .. body):gsub("'", '"')
  return "lua5.4 -e '" .. code .. "'"
end

describe("layer2.child, a process spoken to in lines", function()
  it("asks and reads lines, skips what it is told to, and says why a child fails", function()
    local c = assert(layer2.child("cat 2>/dev/null"))
    assert.matches("^layer2 child process %d+$", tostring(c))
    assert.equal("hello", c:ask("hello"))
    assert.equal("", c:ask(""))
    assert.has_error(function() c:ask("two\nlines") end, "bad argument #1 to 'ask' (a line has no newline of its own)")
    assert.has_error(function() c:ask("x", 0) end, "bad argument #2 to 'ask' (seconds, more than 0 and at most 86400)")
    assert.is_false(c:stale(), "a command on PATH is not watched")
    c:close()
    c:close()
    assert.is_true(c:is_closed())
    assert.has_error(function() c:ask("x") end, "layer2: attempt to use a closed child process")
    -- a request longer than a socket's buffer, read whole before the answer
    c = assert(layer2.child("while IFS= read -r l; do echo ${#l}; done"))
    assert.equal("200000", c:ask(("x"):rep(200000)))
    assert.equal("3", c:ask("abc"))
    c:close()
    -- lines the child writes before its answer are read one by one
    c = assert(layer2.child("printf 'chatter\\nmore\\n'; cat 2>/dev/null"))
    assert.equal("chatter", c:ask("answer"))
    assert.equal("more", c:read_line(10))
    assert.equal("answer", c:read_line(10))
    c:close()
  end)

  it("fails with a message: no answer in time, an ended child, a line too long, a missing file", function()
    local c = assert(layer2.child("sleep 30"))
    local t = layer2.monotonic()
    assert.same({ nil, "error: the plugin did not answer in time" }, { c:ask("x", 0.2) })
    assert.is_true(layer2.monotonic() - t >= 0.19)
    c:close()
    assert.is_true(layer2.monotonic() - t < 5, "a child that ignores nothing is stopped at once")
    c = assert(layer2.child("exit 0"))
    local reply, err = c:ask("x", 2)
    assert.is_nil(reply)
    assert.matches("^error: ", err)
    c:close()
    -- too long, whether its newline comes with it or later
    for _, tail in ipairs({ "echo; sleep 30", "cat 2>/dev/null" }) do
      c = assert(layer2.child("head -c 70000 /dev/zero | tr '\\0' 'x'; " .. tail))
      os.execute("sleep 0.2") -- all of it written before it is read, most of the time
      local got = { c:ask("x", 20) }
      assert.same({ nil, "error: the plugin wrote a line of more than 65536 bytes" }, { got[1] and #got[1] or nil, got[2] })
      c:close()
    end
    assert.same({ nil, "error: cannot run '/nonexistent/plugin.js': No such file or directory" },
      { layer2.child("/nonexistent/plugin.js") })
    assert.has_error(function() layer2.child("") end, "bad argument #1 to 'child' (a command)")
  end)

  it("a command that is a file is stale once the file changes", function()
    local dir = helper.tmpdir()
    os.execute("mkdir -p " .. dir)
    local file = dir .. "/plugin.sh"
    write_file(file, "#!/bin/sh\nexec cat\n", "755")
    local c = assert(layer2.child(file))
    assert.equal("a", c:ask("a"))
    assert.is_false(c:stale())
    os.execute("sleep 0.05")
    write_file(file, "#!/bin/sh\nexec cat\n# edited\n")
    assert.is_true(c:stale())
    c:close()
    helper.rmdir(dir)
  end)
end)

describe("layer2.strfry_plugin, strfry's write plugins as a relay policy", function()
  local KEYS = { ("0"):rep(63) .. "a", ("0"):rep(63) .. "b" }
  local alice, mallory = layer2.schnorr.pubkey(KEYS[1]), layer2.schnorr.pubkey(KEYS[2])
  local n = 0
  local function note(key, content)
    n = n + 1
    return layer2.event.sign({ kind = 1, created_at = os.time() - 100 + n, tags = {}, content = content }, key)
  end

  -- a relay over a fresh store with `policy`; a session from `ip`, its frames and the relay's log kept
  local relay_with = require("spec.policy_relay")

  it("strfry's whitelist example decides: accept, reject with its message, shadowReject, after AUTH", function()
    local cmd = "WHITELIST=" .. alice .. " node " .. WHITELIST_JS
    -- loaded as a relay loads the example file, given the command
    local t = relay_with(assert(loadfile("examples/policies/strfry_plugin.lua"))(cmd), "198.51.100.4")
    local listed, stranger, spam = note(KEYS[1], "hello"), note(KEYS[2], "hi"), note(KEYS[1], "spam")
    assert.same({ "OK", listed.id, true, "" }, t.publish(listed))
    assert.same({ "OK", stranger.id, false, "blocked: not on white-list (IP4 198.51.100.4)" }, t.publish(stranger))
    assert.same({ "OK", spam.id, true, "" }, t.publish(spam), "shadowReject: OK, and not stored")
    -- a forged event never reaches the plugin
    local forged = note(KEYS[1], "forged")
    forged.content = "changed"
    assert.matches("^invalid: ", t.publish(forged)[4])
    assert.is_true(t.auth(KEYS[1])[3])
    local authed = note(KEYS[2], "as alice")
    assert.same({ "OK", authed.id, true, "" }, t.publish(authed), "the plugin saw authed")
    local want, got = helper.ids({ listed, authed }), helper.ids(t.db:query_events({ {} }))
    table.sort(want)
    table.sort(got)
    assert.same(want, got)
    assert.same({}, t.logged)
    t.close()
    -- an IPv6 client, as strfry names it
    t = relay_with(strfry_plugin.policy(cmd), "2001:db8::7")
    local other = note(KEYS[2], "v6")
    assert.same({ "OK", other.id, false, "blocked: not on white-list (IP6 2001:db8::7)" }, t.publish(other))
    t.close()
  end)

  it("a plugin file edited is started anew; one that fails refuses (logged) and is started anew next time", function()
    local dir = helper.tmpdir()
    os.execute("mkdir -p " .. dir)
    local file = dir .. "/plugin.sh"
    local function plugin(list) write_file(file, ("#!/bin/sh\nWHITELIST=%s exec node %s\n"):format(list, WHITELIST_JS), "755") end
    plugin(alice)
    local t = relay_with(strfry_plugin.policy(file))
    assert.is_true(t.publish(note(KEYS[1], "a"))[3])
    assert.is_false(t.publish(note(KEYS[2], "m"))[3])
    os.execute("sleep 0.05")
    plugin(alice .. "," .. mallory)
    assert.is_true(t.publish(note(KEYS[2], "m2"))[3], "the edited plugin lists mallory")
    t.close()
    helper.rmdir(dir)

    -- answers once, then ends: the next event is refused, the one after goes to a new process
    local once = lua_plugin("local r = cjson.decode(io.read('l')) print(cjson.encode({id = r.event.id, action = 'accept'}))")
    t = relay_with(strfry_plugin.policy(once, { timeout = 20 }))
    assert.is_true(t.publish(note(KEYS[1], "1"))[3])
    local refused = note(KEYS[1], "2")
    assert.same({ "OK", refused.id, false, "error: the relay's policy failed" }, t.publish(refused))
    assert.matches("^the policy's accept_event failed: strfry plugin .*: error: ", t.logged[1])
    assert.is_true(t.publish(note(KEYS[1], "3"))[3])
    t.close()

    -- another event's id, an unknown action, no answer in time: each refused, and said
    -- (timeouts long enough for a busy machine, but the one that is the case)
    local cases = {
      { "print(cjson.encode({id = string.rep('0', 64), action = 'accept'}))", "answered about another event", 20 },
      { "print(cjson.encode({id = r.event.id, action = 'maybe'}))", "the plugin's action is unknown: maybe", 20 },
      { "os.execute('sleep 5')", "did not answer in time", 0.5 },
    }
    for _, case in ipairs(cases) do
      t = relay_with(strfry_plugin.policy(lua_plugin("for l in io.lines() do local r = cjson.decode(l) " .. case[1]
        .. " end"), { timeout = case[3] }))
      assert.same("error: the relay's policy failed", t.publish(note(KEYS[1], case[2]))[4])
      assert.matches(case[2], t.logged[1], 1, true)
      assert.equal(0, t.db:count_events({}))
      t.close()
    end
  end)

  it("refuses bad options", function()
    assert.has_error(function() strfry_plugin.policy("") end, "layer2.strfry_plugin.policy: a command")
    assert.has_error(function() strfry_plugin.policy("x", { timout = 1 }) end,
      "layer2.strfry_plugin.policy: unknown option 'timout' (did you mean 'timeout'?)")
    assert.has_error(function() strfry_plugin.policy("x", { timeout = 0 }) end,
      "layer2.strfry_plugin.policy: timeout takes a positive number of seconds")
  end)
end)
