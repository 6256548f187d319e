-- A policy file decides on a real relay: the example relay on nginx (tools/relay --policy; every
-- worker, on an LMDB L2 and on a PostgreSQL one whose store works in the thread pool) and the
-- plain-Lua relay over lua-http (examples/plain), each driven by nostr-tools, which also
-- authenticates with NIP-42. The hooks' every case is spec/relay_protocol_spec's.
local helper = require("spec.helper")
local pg = require("spec.pg")
local layer2 = require("layer2")
local harness = require("spec.relay.harness");

(harness.runs and describe or pending)("a relay with a policy file", function()
  setup(harness.setup)

  local keys = { alice = ("0"):rep(63) .. "a", bob = ("0"):rep(63) .. "b", mallory = ("0"):rep(63) .. "c" }
  local pub = {}
  for name, sk in pairs(keys) do pub[name] = layer2.schnorr.pubkey(sk) end

  -- the policy file (spec/relay/members_policy.lua, alice and bob its members; or `text`) in a
  -- directory the workers (www-data when run as root) can read; returns its path and directory
  local function policy_file(text)
    local dir = helper.tmpdir()
    os.execute("mkdir -p " .. dir .. " && chmod 755 " .. dir)
    local file = dir .. "/policy.lua"
    local f = assert(io.open(file, "w"))
    if not text then
      local template = assert(io.open(harness.ROOT .. "/spec/relay/members_policy.lua"))
      text = template:read("a"):gsub("ALICE", pub.alice):gsub("BOB", pub.bob)
      template:close()
    end
    f:write(text)
    f:close()
    os.execute("chmod 644 " .. file)
    return file, dir
  end

  -- what nostr-tools sees of the members policy (spec/relay/policy.mjs)
  local function members_decide(port)
    local res = harness.run_client("policy.mjs", { url = ("ws://127.0.0.1:%d/"):format(port), alice = keys.alice,
      bob = keys.bob, mallory = keys.mallory, bob_pubkey = pub.bob, mallory_pubkey = pub.mallory })
    assert.same({ true, "" }, res.member)
    assert.same({ false, "blocked: members only (you are at 127.0.0.1)" }, res.stranger)
    assert.same({ true, "" }, res.spam, "a shadowed event is answered OK")
    assert.same({ true, "" }, res.dm)
    assert.same({ res.ids.member }, res.stored, "only the member's note is stored")
    assert.same({ closed = "auth-required: direct messages are for their parties" }, res.before_auth)
    assert.is_true(res.auth[1], tostring(res.auth[2]))
    assert.same({ ids = { res.ids.dm } }, res.after_auth)
    assert.same({ closed = "restricted: only your own direct messages" }, res.others)
  end

  for _, variant in ipairs({ { name = "an LMDB L2" }, { name = "a PostgreSQL L2", pg = true } }) do
    it("on nginx, its hooks decide in every worker, and nostr-tools authenticates (" .. variant.name .. ")", function()
      local file, dir = policy_file()
      local extra = "--policy " .. file
      if variant.pg then extra = extra .. (" --l2 '%s' --l1-limit 1048576"):format(pg.fresh()) end
      local port, _, stop, prefix = harness.start_relay(extra)
      local ok, err = pcall(function()
        members_decide(port)
        assert.same({}, harness.log_problems(prefix))
      end)
      stop()
      helper.rmdir(dir)
      assert(ok, err)
    end)
  end

  it("in plain Lua (examples/plain over lua-http), the same hooks decide the same way", function()
    local file, dir = policy_file()
    local data = helper.tmpdir()
    local port, stop = harness.start_plain_relay(data, "--policy " .. file)
    local ok, err = pcall(members_decide, port)
    local log = stop()
    helper.rmdir(data)
    helper.rmdir(dir)
    assert(ok, tostring(err) .. "\n" .. log)
    assert.is_nil(log:find("relay: "), log)
  end)

  -- strfry's whitelist example plugin (spec/relay/strfry_whitelist.js, alice listed), run by a policy
  -- file as an operator writes it (examples/policies/strfry_plugin.lua), as nostr-tools sees it
  local function strfry_plugin_file()
    local file, dir = policy_file("")
    assert(harness.sh(("cp %s/spec/relay/strfry_whitelist.js %s/ && chmod 755 %s/strfry_whitelist.js"):format(
      harness.ROOT, dir, dir)))
    local f = assert(io.open(file, "w"))
    f:write(('return require("layer2.strfry_plugin").policy("WHITELIST=%s node %s/strfry_whitelist.js")\n'):format(
      pub.alice, dir))
    f:close()
    return file, dir
  end
  local function plugin_decides(port)
    local res = harness.run_client("plugin.mjs", { url = ("ws://127.0.0.1:%d/"):format(port), alice = keys.alice,
      mallory = keys.mallory })
    assert.same({ true, "" }, res.listed)
    assert.same({ false, "blocked: not on white-list (IP4 127.0.0.1)" }, res.stranger)
    assert.same({ true, "" }, res.spam, "shadowReject: OK")
    assert.is_false(res.forged[1])
    assert.matches("^invalid: ", res.forged[2])
    assert.is_true(res.auth[1], tostring(res.auth[2]))
    assert.same({ true, "" }, res.authed, "the plugin saw the AUTH'd pubkey")
    local want = { res.ids.listed, res.ids.authed }
    table.sort(want)
    assert.same(want, res.stored)
  end

  it("runs strfry's own example write plugin, on nginx (in its thread pool) and in plain Lua", function()
    local file, dir = strfry_plugin_file()
    local port, _, stop, prefix = harness.start_relay("--policy " .. file)
    local ok, err = pcall(function()
      plugin_decides(port)
      assert.same({}, harness.log_problems(prefix))
    end)
    stop()
    assert(ok, err)
    local data = helper.tmpdir()
    local plain_port, plain_stop = harness.start_plain_relay(data, "--policy " .. file)
    ok, err = pcall(plugin_decides, plain_port)
    local log = plain_stop()
    helper.rmdir(data)
    helper.rmdir(dir)
    assert(ok, tostring(err) .. "\n" .. log)
    assert.is_nil(log:find("relay: "), log)
  end)

  it("will not start with a policy file that cannot be loaded, and says why", function()
    local file, dir = policy_file("return {")
    local port = harness.free_port()
    local prefix, data = helper.tmpdir(), helper.tmpdir()
    local out = io.popen(("%s/tools/relay --listen 127.0.0.1:%d --prefix %s --data %s --policy %s --daemon 2>&1; "
      .. "sleep 1; kill -QUIT $(cat %s/logs/nginx.pid 2>/dev/null) 2>/dev/null"):format(harness.ROOT, port, prefix,
      data, file, prefix)):read("a")
    local says = "the policy file '" .. file:gsub("%p", "%%%0") .. "' cannot be loaded"
    assert.matches(says, out)
    assert.is_false(harness.sh(("curl -sf --max-time 2 -o /dev/null http://127.0.0.1:%d/"):format(port)),
      "no worker serves without its policy")
    assert.is_false(harness.sh(("%s/tools/relay --policy %s/none.lua --prefix %s 2>/dev/null"):format(harness.ROOT,
      dir, prefix)))
    -- the plain relay the same
    local plain = io.popen(("%s luajit %s/examples/plain/relay.lua --listen 127.0.0.1:%d --data %s/plain --policy %s"
      .. " 2>&1; echo exit=$?"):format(harness.PLAIN_ENV, harness.ROOT, port, data, file)):read("a")
    assert.matches(says, plain)
    assert.matches("exit=1", plain)
    helper.rmdir(prefix)
    helper.rmdir(data)
    helper.rmdir(dir)
  end)
end)
