-- The example relay on real nginx with a policy file (tools/relay --policy): its hooks decide in
-- every worker, on an LMDB L2 and on a PostgreSQL one (whose store works in the thread pool),
-- and nostr-tools authenticates with NIP-42. The hooks' every case is spec/relay_protocol_spec's.
local helper = require("spec.helper")
local pg = require("spec.pg")
local layer2 = require("layer2")
local harness = require("spec.relay.harness")

local POLICY = [[
-- members write; "spam" is taken and dropped; direct messages only to their parties after AUTH
local lru = require("layer2.policy.lru")
local members = { ["%s"] = true, ["%s"] = true }
return {
  name = "members",
  select = function(self, candidates, need) return lru.select(self, candidates, need) end,
  accept_event = function(ev, client)
    if ev.content == "spam" then return "shadow" end
    if not members[ev.pubkey] then return false, "blocked: members only (you are at " .. client.ip .. ")" end
    return true
  end,
  accept_req = function(filters, client)
    for _, f in ipairs(filters) do
      for _, k in ipairs(f.kinds or {}) do
        if k == 4 then
          if not client.pubkey then return false, "auth-required: direct messages are for their parties" end
          local to = f["#p"]
          if not (to and #to == 1 and to[1] == client.pubkey) then
            return false, "restricted: only your own direct messages"
          end
        end
      end
    end
    return true
  end,
}
]]

(harness.runs and describe or pending)("the example relay with a policy file", function()
  setup(harness.setup)

  local keys = { alice = ("0"):rep(63) .. "a", bob = ("0"):rep(63) .. "b", mallory = ("0"):rep(63) .. "c" }
  local pub = {}
  for name, sk in pairs(keys) do pub[name] = layer2.schnorr.pubkey(sk) end

  for _, variant in ipairs({ { name = "an LMDB L2" }, { name = "a PostgreSQL L2", pg = true } }) do
    it("decides with its hooks in every worker, and nostr-tools authenticates (" .. variant.name .. ")", function()
      -- a directory the workers (www-data when run as root) can read
      local dir = helper.tmpdir()
      os.execute("mkdir -p " .. dir .. " && chmod 755 " .. dir)
      local file = dir .. "/policy.lua"
      local f = assert(io.open(file, "w"))
      f:write(POLICY:format(pub.alice, pub.bob))
      f:close()
      os.execute("chmod 644 " .. file)
      local extra = "--policy " .. file
      if variant.pg then extra = extra .. (" --l2 '%s' --l1-limit 1048576"):format(pg.fresh()) end
      local port, _, stop, prefix = harness.start_relay(extra)
      local ok, err = pcall(function()
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
        assert.same({}, harness.log_problems(prefix))
      end)
      stop()
      helper.rmdir(dir)
      assert(ok, err)
    end)
  end

  it("will not start with a policy file that cannot be loaded, and says why", function()
    local dir = helper.tmpdir()
    os.execute("mkdir -p " .. dir .. " && chmod 755 " .. dir)
    local file = dir .. "/policy.lua"
    local f = assert(io.open(file, "w"))
    f:write("return {")
    f:close()
    os.execute("chmod 644 " .. file)
    local port = harness.free_port()
    local prefix, data = helper.tmpdir(), helper.tmpdir()
    local out = io.popen(("%s/tools/relay --listen 127.0.0.1:%d --prefix %s --data %s --policy %s --daemon 2>&1; "
      .. "sleep 1; cat %s/logs/error.log; kill -QUIT $(cat %s/logs/nginx.pid 2>/dev/null) 2>/dev/null")
      :format(harness.ROOT, port, prefix, data, file, prefix, prefix)):read("a")
    assert.matches("the policy file '" .. file:gsub("%p", "%%%0") .. "' cannot be loaded", out)
    assert.is_false(harness.sh(("curl -sf --max-time 2 -o /dev/null http://127.0.0.1:%d/"):format(port)),
      "no worker serves without its policy")
    assert.is_false(harness.sh(("%s/tools/relay --policy %s/none.lua --prefix %s 2>/dev/null"):format(harness.ROOT,
      dir, prefix)))
    helper.rmdir(prefix)
    helper.rmdir(data)
    helper.rmdir(dir)
  end)
end)
