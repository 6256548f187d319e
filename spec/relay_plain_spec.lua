-- The plain-Lua relay (examples/plain/relay.lua over lua-http, LuaJIT): layer2.relay's second
-- host. Its policy is spec/relay_policy_spec's; here, what a host adds: a client that reads
-- nothing pins a bounded amount of memory and is closed once its writes make no progress, while
-- another connection is answered in full.
local helper = require("spec.helper")
local layer2 = require("layer2")
local harness = require("spec.relay.harness")
local rawws = harness.runs and require("spec.relay.rawws") -- Lua 5.4's (bit operators): the 5.4 pass only
local socket = require("socket")

local SEND_TIMEOUT = 2

local function rss_kb(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

(harness.runs and describe or pending)("the plain-Lua relay (examples/plain)", function()
  it("a client that reads nothing pins bounded memory and is closed after send_timeout; another is answered",
    function()
    -- 400 stored notes of 2 KB: a REQ for them is an answer of about 900 KB
    local data = helper.tmpdir()
    local db = assert(layer2.open(data))
    local key = ("0"):rep(63) .. "5"
    for i = 1, 400 do
      assert(db:save_event(layer2.event.sign({ kind = 1, created_at = 1700000000 + i, tags = {},
        content = ("x"):rep(2000) }, key)))
    end
    db:close()
    local port, stop, pid = harness.start_plain_relay(data, "--limit send_timeout=" .. SEND_TIMEOUT)
    local ok, err = pcall(function()
      local function full_answer(c, subid)
        assert(c:send_json({ "REQ", subid, { kinds = { 1 }, limit = 500 } }))
        local got = assert(c:read_until(function(msg) return msg[1] == "EOSE" end))
        return #got - 1
      end
      local reader = assert(rawws.connect(port))
      assert.equal(400, full_answer(reader, "warm"))
      local before = rss_kb(pid)
      -- 100 answers, 90 MB, asked for and never read
      local slow = assert(rawws.connect(port))
      local batch = {}
      for r = 1, 100 do batch[r] = rawws.frame(rawws.TEXT, ('["REQ","s%d",{"kinds":[1],"limit":500}]'):format(r % 15)) end
      assert(slow:send_raw(table.concat(batch)))
      -- the other connection is answered meanwhile
      for i = 1, 3 do assert.equal(400, full_answer(reader, "again" .. i)) end
      socket.sleep(SEND_TIMEOUT + 3)
      local grew = rss_kb(pid) - before
      -- the slow one was closed: what reaches it now is what the kernel held, then the end
      slow.sock:settimeout(30)
      local received = 0
      while true do
        local chunk, why, partial = slow.sock:receive(65536)
        received = received + #(chunk or partial or "")
        if not chunk then
          assert.equal("closed", why)
          break
        end
      end
      assert(received < 30 * 1024 * 1024, ("it received %d bytes: the relay kept writing"):format(received))
      -- what it pinned: the frames queued (max_queued_bytes), one batch being written, one answer
      assert(grew < 64 * 1024, ("the relay grew by %d kB"):format(grew))
      assert.equal(400, full_answer(reader, "after"))
      reader:close()
    end)
    local log = stop()
    helper.rmdir(data)
    assert(ok, tostring(err) .. "\n" .. log)
  end)
end)
