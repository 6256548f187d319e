-- An example nostr relay on OpenResty + layer2: NIP-01 (EVENT, REQ, CLOSE, CLOSED, EOSE, NOTICE,
-- OK), NIP-11, NIP-45 COUNT, live subscriptions across workers, and /metrics.
local cjson = require("cjson.safe")
local layer2 = require("layer2")
local resty = require("layer2.resty")
local server = require("nginx.websocket.server")
-- frames built here are written by the connection's socket together (see the sender)
local build_frame = require("nginx.websocket.protocol").build_frame
local TEXT = 0x1
local semaphore = require("ngx.semaphore")

local relay = {}

relay.limits = {
  max_message_length = 256 * 1024,
  -- a message past max_message_length but within this is read and refused with a reason, the
  -- connection kept; a larger one closes it (status 1009), since its bytes are not worth reading
  max_frame_length = 1024 * 1024,
  max_subscriptions = 20,
  max_filters = 10,
  max_limit = 500,
  max_subid_length = 64,
  -- NIP-77: records a reconciliation may cover (40 bytes each in memory), sessions per
  -- connection, seconds a session may stay idle, bytes per reply frame (hex doubles it)
  max_negentropy_records = 500000,
  max_negentropy_sessions = 4,
  negentropy_idle = 60,
  negentropy_frame = 500000, -- strfry's relay's: fewer rounds (a client's own frames stay small)
}

local function info_document()
  local l = relay.limits
  return cjson.encode({
    name = "layer2 example relay",
    description = "a nostr relay on OpenResty with a two-level layer2 store",
    software = "layer2",
    version = layer2.version,
    supported_nips = { 1, 9, 11, 40, 45, 77 },
    limitation = { max_message_length = l.max_message_length, max_subscriptions = l.max_subscriptions,
      max_filters = l.max_filters, max_limit = l.max_limit, max_subid_length = l.max_subid_length },
  })
end

local function filters_of(msg, from)
  local filters = {}
  for i = from, #msg do
    if type(msg[i]) ~= "table" then return nil, "invalid: filter " .. (i - from + 1) .. " is not an object" end
    filters[#filters + 1] = msg[i]
  end
  if #filters == 0 then return nil, "invalid: no filter" end
  if #filters > relay.limits.max_filters then
    return nil, ("invalid: more than %d filters"):format(relay.limits.max_filters)
  end
  return filters
end

function relay.handle()
  if not resty.db() then
    ngx.status = 503
    ngx.say("the store is not open: see the error log")
    return
  end
  local headers = ngx.req.get_headers()
  local upgrade = headers["upgrade"]
  if not upgrade or upgrade:lower() ~= "websocket" then
    local accept = headers["accept"] or ""
    ngx.header["Access-Control-Allow-Origin"] = "*"
    if accept:find("application/nostr+json", 1, true) then
      ngx.header["Content-Type"] = "application/nostr+json"
      ngx.say(info_document())
    else
      ngx.header["Content-Type"] = "text/plain"
      ngx.say("a nostr relay: connect with a websocket client to ws://", ngx.var.host, ":", ngx.var.server_port, "/")
    end
    return
  end
  local wb, err = server:new({ timeout = 60000, max_payload_len = relay.limits.max_frame_length })
  if not wb then
    ngx.log(ngx.ERR, "websocket handshake: ", err)
    return ngx.exit(400)
  end
  local db = resty.db()
  local subs, nsubs = {}, 0
  local queue, sem, closed = {}, semaphore.new(), false
  -- this connection's saves: batches take from every connection's queue in turn
  local saves = resty.queue()

  local function send(msg)
    queue[#queue + 1] = cjson.encode(msg)
    sem:post(1)
  end
  -- stored events arrive as JSON strings; sending them as they are avoids re-encoding
  local function send_event(subid, json)
    queue[#queue + 1] = '["EVENT",' .. cjson.encode(subid) .. "," .. json .. "]"
    sem:post(1)
  end

  -- what is queued goes out in one write: a REQ's answer of 500 events is 500 frames, one
  -- send (a frame a send was 500 system calls)
  local sender = ngx.thread.spawn(function()
    while not closed do
      local ok = sem:wait(5)
      if ok or #queue > 0 then
        local frames = queue
        queue = {}
        for i, text in ipairs(frames) do frames[i] = build_frame(true, TEXT, #text, text, false) end
        local _, e = wb.sock:send(frames)
        if e then
          closed = true
          return
        end
      end
    end
  end)

  local handlers = {}

  -- events of this connection not decided yet: a REQ or COUNT after an EVENT waits for them, so
  -- a client reads its own writes
  local unsettled, settled = 0, semaphore.new()
  local function settle()
    while unsettled > 0 do settled:wait(5) end
  end

  function handlers.EVENT(msg)
    local ev = msg[2]
    if type(ev) ~= "table" then return send({ "NOTICE", "invalid: EVENT needs an event object" }) end
    local id = type(ev.id) == "string" and ev.id or ""
    unsettled = unsettled + 1
    -- saved with what other connections sent meanwhile (group commit); the OK follows
    resty.save(ev, function(ok, m)
      if ok and type(ev.kind) == "number" and ev.kind >= 20000 and ev.kind < 30000 then
        resty.broadcast(layer2.event.encode(ev))
      end
      send({ "OK", id, ok, m })
      unsettled = unsettled - 1
      if unsettled == 0 then settled:post(1) end
    end, saves)
  end

  local function subid_of(msg, verb)
    local subid = msg[2]
    if type(subid) ~= "string" or #subid == 0 or #subid > relay.limits.max_subid_length then
      send({ "NOTICE", "invalid: " .. verb .. " needs a subscription id of 1 to 64 characters" })
      return nil
    end
    return subid
  end

  -- ["REQ"|"COUNT", subid, filter...]: the id and the filters, or nil once the refusal is sent
  local function query_args(msg)
    local subid = subid_of(msg, msg[1])
    if not subid then return nil end
    local filters, ferr = filters_of(msg, 3)
    if not filters then
      send({ "CLOSED", subid, ferr })
      return nil
    end
    return subid, filters
  end

  function handlers.REQ(msg)
    local subid, filters = query_args(msg)
    if not subid then return end
    settle()
    if not subs[subid] and nsubs >= relay.limits.max_subscriptions then
      return send({ "CLOSED", subid, ("blocked: more than %d subscriptions"):format(relay.limits.max_subscriptions) })
    end
    local events, qerr = db:query_events(filters, { json = true, max_limit = relay.limits.max_limit })
    if not events then return send({ "CLOSED", subid, qerr }) end
    for _, json in ipairs(events) do send_event(subid, json) end
    send({ "EOSE", subid })
    if subs[subid] then
      resty.unwatch(subs[subid])
    else
      nsubs = nsubs + 1
    end
    -- the worker's index hands this subscription the new events its filters match
    local handle, werr = resty.watch(filters, function(json) send_event(subid, json) end)
    subs[subid] = handle
    if not handle then
      nsubs = nsubs - 1
      send({ "CLOSED", subid, werr })
    end
  end

  function handlers.COUNT(msg)
    local subid, filters = query_args(msg)
    if not subid then return end
    settle()
    local n, cerr = db:count_events(filters)
    if not n then return send({ "CLOSED", subid, cerr }) end
    send({ "COUNT", subid, { count = n } })
  end

  -- NIP-77: a reconciliation session per id, over what L2 (the authority) holds for the filter
  local negs, nnegs = {}, 0
  local function neg_close(subid, reason)
    if not negs[subid] then return end
    negs[subid].session:close()
    negs[subid], nnegs = nil, nnegs - 1
    if reason then send({ "NEG-ERR", subid, reason }) end
  end
  local function neg_idle()
    local now = ngx.now()
    for subid, n in pairs(negs) do
      if now - n.last > relay.limits.negentropy_idle then
        neg_close(subid, ("closed: idle for more than %d s"):format(relay.limits.negentropy_idle))
      end
    end
  end
  local function neg_reply(subid, n, message)
    local reply, why = n.session:reconcile(message)
    if not reply then return neg_close(subid, why) end
    n.last = ngx.now()
    send({ "NEG-MSG", subid, reply })
  end

  handlers["NEG-OPEN"] = function(msg)
    local subid = subid_of(msg, "NEG-OPEN")
    if not subid then return end
    if type(msg[3]) ~= "table" or type(msg[4]) ~= "string" then
      return send({ "NEG-ERR", subid, "invalid: NEG-OPEN needs a filter and an initial message" })
    end
    settle()
    neg_close(subid)
    neg_idle()
    if nnegs >= relay.limits.max_negentropy_sessions then
      return send({ "NEG-ERR", subid, ("blocked: more than %d negentropy sessions"):format(
        relay.limits.max_negentropy_sessions) })
    end
    local store = db.l2 or db.l1
    local items, why = store:negentropy_items(msg[3], { max = relay.limits.max_negentropy_records })
    if not items then return send({ "NEG-ERR", subid, why }) end
    local session = layer2.negentropy(relay.limits.negentropy_frame)
    local ok, serr = session:add_items(items)
    if ok then ok, serr = session:seal() end
    if not ok then
      session:close()
      return send({ "NEG-ERR", subid, serr })
    end
    negs[subid], nnegs = { session = session, last = ngx.now() }, nnegs + 1
    neg_reply(subid, negs[subid], msg[4])
  end

  handlers["NEG-MSG"] = function(msg)
    local subid = subid_of(msg, "NEG-MSG")
    if not subid then return end
    local n = negs[subid]
    if not n then return send({ "NEG-ERR", subid, "closed: no negentropy session with this id" }) end
    if type(msg[3]) ~= "string" then return neg_close(subid, "invalid: NEG-MSG needs a message") end
    neg_reply(subid, n, msg[3])
  end

  handlers["NEG-CLOSE"] = function(msg)
    local subid = subid_of(msg, "NEG-CLOSE")
    if subid then neg_close(subid) end
  end

  function handlers.CLOSE(msg)
    local subid = subid_of(msg, "CLOSE")
    if subid and subs[subid] then
      resty.unwatch(subs[subid])
      subs[subid] = nil
      nsubs = nsubs - 1
    end
  end

  -- a message too long to parse: the answer its verb calls for, found at its start, so a client
  -- learns which of its requests failed
  local function refuse_long(data)
    local why = ("blocked: a message of more than %d bytes"):format(relay.limits.max_message_length)
    local verb = data:match('^%s*%[%s*"([%u-]+)"')
    local subid = data:match('^%s*%[%s*"[%u-]+"%s*,%s*"([^"\\]*)"')
    local id = verb == "EVENT" and data:match('^%s*%[%s*"EVENT"%s*,%s*{%s*"id"%s*:%s*"(%x+)"')
    if subid and (verb == "NEG-OPEN" or verb == "NEG-MSG") then
      neg_close(subid)
      send({ "NEG-ERR", subid, why })
    elseif subid and (verb == "REQ" or verb == "COUNT") then
      send({ "CLOSED", subid, why })
    elseif id and #id == 64 then
      send({ "OK", id, false, why })
    else
      send({ "NOTICE", why })
    end
  end

  local close_code, close_reason
  while not closed do
    local data, typ, rerr = wb:recv_frame()
    if not data then
      if rerr and rerr:find("timeout", 1, true) then
        if closed then break end
        if nnegs > 0 then neg_idle() end
      else
        if rerr and rerr:find("exceeding max payload len", 1, true) then
          close_code, close_reason = 1009, ("a message of more than %d bytes"):format(relay.limits.max_frame_length)
        end
        break
      end
    elseif typ == "close" then
      break
    elseif typ == "ping" then
      wb:send_pong(data)
    elseif typ == "text" and #data > relay.limits.max_message_length then
      refuse_long(data)
    elseif typ == "text" then
      if nnegs > 0 then neg_idle() end
      local msg = cjson.decode(data)
      if type(msg) ~= "table" or type(msg[1]) ~= "string" then
        send({ "NOTICE", "invalid: a message is a JSON array starting with a verb" })
      elseif not handlers[msg[1]] then
        send({ "NOTICE", "invalid: unknown message type " .. msg[1]:sub(1, 20) })
      else
        local ok, herr = pcall(handlers[msg[1]], msg)
        if not ok then
          ngx.log(ngx.ERR, "relay: ", herr)
          send({ "NOTICE", "error: the relay failed on this message" })
        end
      end
    end
  end
  closed = true
  for _, handle in pairs(subs) do resty.unwatch(handle) end
  for subid in pairs(negs) do neg_close(subid) end
  sem:post(1)
  ngx.thread.wait(sender)
  wb:send_close(close_code, close_reason)
end

-- GET /metrics: db:stats() in the Prometheus text format.
function relay.metrics()
  local st = resty.db():stats()
  local lines = {
    "# TYPE layer2_events gauge",
    ('layer2_events{level="l1"} %d'):format(st.l1.events),
    ('layer2_events{level="l2"} %d'):format(st.l2 and st.l2.events or 0),
    "# TYPE layer2_stubs gauge",
    ("layer2_stubs %d"):format(st.l1.stubs),
    "# TYPE layer2_l1_bytes gauge",
    ('layer2_l1_bytes{kind="used"} %d'):format(st.l1.used_bytes),
    ('layer2_l1_bytes{kind="limit"} %d'):format(st.size_limit or 0),
    "# TYPE layer2_hits counter",
    ('layer2_hits{level="l1"} %d'):format(st.hits.l1),
    ('layer2_hits{level="stubs"} %d'):format(st.hits.stubs),
    ('layer2_hits{level="l2"} %d'):format(st.hits.l2),
    ('layer2_hits{level="missing"} %d'):format(st.hits.missing),
    ('layer2_hits{level="answers"} %d'):format(st.hits.answers),
    "# TYPE layer2_outbox gauge",
    ("layer2_outbox %d"):format(st.outbox),
    "# TYPE layer2_horizon gauge",
    ("layer2_horizon %d"):format(st.horizon),
  }
  if st.poll_lag then
    lines[#lines + 1] = "# TYPE layer2_poll_lag_seconds gauge"
    lines[#lines + 1] = ("layer2_poll_lag_seconds %d"):format(st.poll_lag)
  end
  ngx.header["Content-Type"] = "text/plain; version=0.0.4"
  ngx.say(table.concat(lines, "\n"))
end

return relay
