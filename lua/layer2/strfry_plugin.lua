-- layer2.strfry_plugin: an existing strfry write-policy plugin as a layer2.relay policy. The plugin is
-- any program that reads strfry's requests as JSON lines on its stdin and answers each with a JSON
-- line on its stdout (strfry's docs/plugins.md):
--   in:  {"type":"new","event":{...},"receivedAt":1700000000,"sourceType":"IP4","sourceInfo":"1.2.3.4",
--         "authed":"<pubkey, after NIP-42 AUTH>"}
--   out: {"id":"<the event's id>","action":"accept"|"reject"|"shadowReject","msg":"blocked: ..."}
-- As in strfry: one request at a time; a command that is a file's path (a slash, no space) is
-- started anew when the file changes; a line that is not JSON is skipped (the plugin's chatter);
-- an answer that does not come within the timeout (10 s), names another id or an unknown action
-- refuses the event ("error: the relay's policy failed", logged) and the plugin is started anew at
-- the next event. Under OpenResty the plugin is spoken to in a thread of nginx's pool
-- `layer2_plugin` (one plugin process per worker; nginx.conf: `thread_pool layer2_plugin threads=1;`),
-- never in the worker's event loop; elsewhere it is spoken to in place (the call blocks).
--
--   return require("layer2.strfry_plugin").policy("/etc/strfry/plugins/whitelist.js")
local cjson = require("cjson.safe")
local layer2 = require("layer2")

local strfry_plugin = {}

strfry_plugin.POOL = "layer2_plugin"

-- the running plugins of this Lua state (each nginx pool thread has its own), by command
local running = {}

local function plugin_for(cmd)
  local child = running[cmd]
  if child and child:stale() then
    child:close()
    child = nil
  end
  if not child then
    local err
    child, err = layer2.child(cmd)
    if not child then return nil, err end
    running[cmd] = child
  end
  return child
end

local function fail(cmd, why)
  if running[cmd] then running[cmd]:close() end
  running[cmd] = nil
  return nil, why
end

-- strfry_plugin.ask(cmd, timeout, request, id) -> action, msg | nil, err: one request (a JSON line)
-- about the event `id`, and the plugin's decision, in this Lua state.
function strfry_plugin.ask(cmd, timeout, request, id)
  local child, err = plugin_for(cmd)
  if not child then return nil, err end
  local deadline = layer2.monotonic() + timeout
  local line
  line, err = child:ask(request, timeout)
  while true do
    if not line then return fail(cmd, err) end
    local answer = cjson.decode(line)
    if type(answer) == "table" then
      if answer.id ~= id then return fail(cmd, "the plugin answered about another event: " .. line:sub(1, 200)) end
      local msg = type(answer.msg) == "string" and answer.msg or ""
      if answer.action == "accept" or answer.action == "reject" or answer.action == "shadowReject" then
        return answer.action, msg
      end
      return fail(cmd, "the plugin's action is unknown: " .. tostring(answer.action))
    end
    local left = deadline - layer2.monotonic()
    if left <= 0 then return fail(cmd, "error: the plugin did not answer in time") end
    line, err = child:read_line(left)
  end
end

-- the request strfry would send about ev from client
local function request_of(ev, client)
  local ip = client and client.ip
  local source = not ip and "Import" or ip:find(":", 1, true) and "IP6" or "IP4"
  return '{"type":"new","event":' .. layer2.event.encode(ev) .. ',"receivedAt":' .. os.time()
    .. ',"sourceType":"' .. source .. '","sourceInfo":' .. cjson.encode(ip or "")
    .. (client and client.pubkey and ',"authed":"' .. client.pubkey .. '"' or "") .. "}"
end

-- OpenResty's ngx where the plugin is asked in a pool thread (the worker's coroutine may yield), else
-- nil: it is asked in place
local function pool_host()
  local ngx = rawget(_G, "ngx")
  if not (ngx and ngx.run_worker_thread) then return nil end
  local phase = ngx.get_phase()
  return phase ~= "init" and phase ~= "init_worker" and ngx or nil
end

-- strfry_plugin.policy(cmd[, {timeout = seconds}]) -> a policy whose accept_event asks the plugin.
function strfry_plugin.policy(cmd, opts)
  if type(cmd) ~= "string" or cmd == "" then error("layer2.strfry_plugin.policy: a command", 2) end
  opts = opts or {}
  local unknown = require("layer2.core").unknown_option(opts, "layer2.strfry_plugin.policy", { "timeout" })
  if unknown then error(unknown, 2) end
  local timeout = opts.timeout or 10
  if type(timeout) ~= "number" or timeout <= 0 then
    error("layer2.strfry_plugin.policy: timeout takes a positive number of seconds", 2)
  end
  return {
    name = "strfry plugin " .. cmd,
    accept_event = function(ev, client)
      local request = request_of(ev, client)
      local action, msg
      local ngx = pool_host()
      if ngx then
        local ok
        ok, action, msg = ngx.run_worker_thread(strfry_plugin.POOL, "layer2.strfry_plugin", "ask", cmd, timeout,
          request, ev.id)
        if not ok then
          if tostring(action):find("thread pool .* not found") then
            error("nginx.conf needs `thread_pool " .. strfry_plugin.POOL .. " threads=1;` for a strfry plugin", 0)
          end
          error("the thread pool call failed: " .. tostring(action), 0)
        end
      else
        action, msg = strfry_plugin.ask(cmd, timeout, request, ev.id)
      end
      if not action then error("strfry plugin " .. cmd .. ": " .. tostring(msg), 0) end
      if action == "accept" then return true end
      if action == "shadowReject" then return "shadow" end
      return false, msg ~= "" and msg or nil
    end,
  }
end

return strfry_plugin
