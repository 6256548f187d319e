-- An example nostr relay on OpenResty + layer2: NIP-01 (EVENT, REQ, CLOSE, CLOSED, EOSE, NOTICE,
-- OK), NIP-11, NIP-45 COUNT, live subscriptions across workers, and /metrics.
local cjson = require("cjson.safe")
local layer2 = require("layer2")
local resty = require("layer2.resty")
local server = require("nginx.websocket.server")
-- frames built here are written by the connection's socket together (see the sender)
local build_frame = require("nginx.websocket.protocol").build_frame
local TEXT, PONG = 0x1, 0xA
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
  -- records all of a worker's sessions may hold at once (40 bytes each: 80 MB); past it a
  -- NEG-OPEN is refused before any scan, and one that would pass it is refused at what remains
  max_negentropy_worker_records = 2000000,
  negentropy_idle = 60,
  negentropy_frame = 500000, -- strfry's relay's: fewer rounds (a client's own frames stay small)
  -- Backpressure. Bytes of frames a connection has queued or being written: past
  -- max_queued_bytes the relay reads none of its requests (a REQ's stored events wait too) until
  -- the socket drains below it; live events still queue, and past max_unsent_bytes the
  -- connection is closed (a NOTICE says why). A write that makes no progress for send_timeout
  -- seconds closes it too. What a client can pin is so at most max_unsent_bytes of frames (held
  -- twice while written: the Lua strings and nginx's send buffer), the answer of the one REQ
  -- being sent, and the socket's kernel buffers.
  max_queued_bytes = 512 * 1024,
  max_unsent_bytes = 4 * 1024 * 1024,
  send_timeout = 30,
}

-- Sets limits by name (nginx.conf's init_worker: tools/relay --limit NAME=VALUE); an unknown
-- name or a value that is not a positive number is an error, not a limit silently ignored.
function relay.set_limits(t)
  for name, value in pairs(t) do
    if relay.limits[name] == nil then error("relay: no limit is called " .. tostring(name), 2) end
    if type(value) ~= "number" or value <= 0 then
      error(("relay: limit %s takes a positive number, not %s"):format(name, tostring(value)), 2)
    end
    relay.limits[name] = value
  end
end

-- records held by this worker's negentropy sessions (relay.limits.max_negentropy_worker_records)
local negentropy_held = 0

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
  local limits = relay.limits
  wb.sock:settimeouts(60000, limits.send_timeout * 1000, 60000)
  local subs, nsubs = {}, 0
  -- this connection's saves: batches take from every connection's queue in turn
  local saves = resty.queue()

  -- ---- the connection's one writer ----
  -- Frames wait in `queue` (`queued` bytes) and go out together, one send for all of them (a
  -- REQ's 500 events are 500 frames, one system call); `writing` bytes are in that send. Only
  -- the sender thread writes the socket, pongs included (two writers collide: "socket busy").
  local queue, queued, writing = {}, 0, 0
  local wake, sender_idle = semaphore.new(), false
  local room, room_wanted = semaphore.new(), false
  local closed, overflow = false, false

  local function enqueue(opcode, payload)
    if overflow then return end
    local frame = build_frame(true, opcode, #payload, payload, false)
    queue[#queue + 1] = frame
    queued = queued + #frame
    if sender_idle then
      sender_idle = false
      wake:post(1)
    end
  end
  local function send(msg) enqueue(TEXT, cjson.encode(msg)) end
  -- stored events arrive as JSON strings; sending them as they are avoids re-encoding
  local function send_event(subid, json) enqueue(TEXT, '["EVENT",' .. cjson.encode(subid) .. "," .. json .. "]") end
  -- past max_unsent_bytes the client is not reading: what is queued is dropped, and only a
  -- NOTICE saying so is left for the sender, which then closes the connection
  local function give_up()
    queue, queued = {}, 0
    send({ "NOTICE", ("closed: more than %d bytes unsent, the connection reads too slowly"):format(
      limits.max_unsent_bytes) })
    overflow = true
  end
  local function send_live(subid, json)
    send_event(subid, json)
    if not overflow and queued + writing > limits.max_unsent_bytes then give_up() end
  end
  -- the reader's wait while the socket is behind (until it drains below max_queued_bytes)
  local function wait_room()
    while not closed and queued + writing >= limits.max_queued_bytes do
      room_wanted = true
      room:wait(1)
    end
  end

  -- what the connection holds in the worker's shared state (its subscriptions in the fan-out
  -- index, its negentropy sessions) is let go once, by whichever thread ends the connection
  -- neg_reserved: records of this worker's budget a NEG-OPEN holds while it reads them
  local negs, nnegs, neg_reserved = {}, 0, 0
  local function neg_release()
    negentropy_held = negentropy_held - neg_reserved
    neg_reserved = 0
  end
  local finished = false
  local function finish()
    if finished then return end
    finished, closed = true, true
    -- a connection ended while its NEG-OPEN was reading (the writer ends the whole request)
    neg_release()
    for _, handle in pairs(subs) do resty.unwatch(handle) end
    subs = {}
    for _, n in pairs(negs) do
      n.session:close()
      negentropy_held = negentropy_held - n.records
    end
    negs = {}
  end

  local sender = ngx.thread.spawn(function()
    while true do
      if #queue == 0 then
        if closed then return end
        sender_idle = true
        wake:wait(5)
        sender_idle = false
      else
        local frames = queue
        queue, writing, queued = {}, queued, 0
        local _, e = wb.sock:send(frames)
        writing = 0
        if room_wanted then
          room_wanted = false
          room:post(1)
        end
        -- the client went away, read nothing for send_timeout, or let live events pile up (and
        -- has had the NOTICE saying so): the whole request ends here, the reader's pending
        -- read with it
        if e or (overflow and #queue == 0) then
          if e and e:find("timeout", 1, true) then
            ngx.log(ngx.INFO, "relay: closing a connection that read nothing for ", limits.send_timeout, " s")
          end
          finish()
          return ngx.exit(ngx.HTTP_CLOSE)
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

  function handlers.EVENT(msg, data)
    local ev = msg[2]
    if type(ev) ~= "table" then return send({ "NOTICE", "invalid: EVENT needs an event object" }) end
    local id = type(ev.id) == "string" and ev.id or ""
    unsettled = unsettled + 1
    -- the event as the client wrote it (["EVENT", {...}] less its frame): the core parses JSON
    -- faster than it reads a table, and a string crosses into the thread pool as one copy
    local json = #msg == 2 and data:match('^%s*%[%s*"EVENT"%s*,(.*)%]%s*$') or ev
    -- saved with what other connections sent meanwhile (group commit); the OK follows
    resty.save(json, function(ok, m)
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

  -- ends the subscription `subid` if there is one (a CLOSE, or a REQ reusing its id)
  local function end_sub(subid)
    if not subs[subid] then return end
    resty.unwatch(subs[subid])
    subs[subid] = nil
    nsubs = nsubs - 1
  end
  -- a REQ refused: CLOSED, and a live subscription of that id ends with it (the client was told
  -- its id is closed)
  local function refuse_sub(subid, why)
    end_sub(subid)
    send({ "CLOSED", subid, why })
  end

  -- ["REQ"|"COUNT", subid, filter...]: the id and the filters, or nil once the refusal is sent
  local function query_args(msg)
    local subid = subid_of(msg, msg[1])
    if not subid then return nil end
    local filters, ferr = filters_of(msg, 3)
    if not filters then
      if msg[1] == "REQ" then refuse_sub(subid, ferr) else send({ "CLOSED", subid, ferr }) end
      return nil
    end
    return subid, filters
  end

  function handlers.REQ(msg)
    local subid, filters = query_args(msg)
    if not subid then return end
    settle()
    if not subs[subid] and nsubs >= limits.max_subscriptions then
      return send({ "CLOSED", subid, ("blocked: more than %d subscriptions"):format(limits.max_subscriptions) })
    end
    -- the worker's tail delivers what was saved up to now first: the subscription below sees only
    -- what comes after (what the query answers is not sent again as live)
    resty.tail()
    local events, qerr = db:query_events(filters, { json = true, max_limit = limits.max_limit })
    if not events then return refuse_sub(subid, qerr) end
    end_sub(subid)
    -- the worker's index hands this subscription the new events its filters match from now on;
    -- those that come while the stored ones are still being sent wait for the EOSE
    local held, held_bytes = {}, 0
    local handle, werr = resty.watch(filters, function(json)
      if not held then return send_live(subid, json) end
      held[#held + 1], held_bytes = json, held_bytes + #json
      if not overflow and held_bytes + queued + writing > limits.max_unsent_bytes then
        held, held_bytes = {}, 0
        give_up()
      end
    end)
    if not handle then return send({ "CLOSED", subid, werr }) end
    subs[subid], nsubs = handle, nsubs + 1
    -- the stored events go out as the socket drains, not all into the queue at once
    for _, json in ipairs(events) do
      if queued + writing >= limits.max_queued_bytes then
        wait_room()
        if closed or subs[subid] ~= handle then return end
      end
      send_event(subid, json)
    end
    send({ "EOSE", subid })
    local live = held
    held = nil
    for _, json in ipairs(live) do send_live(subid, json) end
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
  local function neg_close(subid, reason)
    if not negs[subid] then return end
    negs[subid].session:close()
    negentropy_held = negentropy_held - negs[subid].records
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
    -- what the worker's other sessions leave of its budget bounds this one's scan
    local busy = "blocked: this relay is reconciling as much as it can now; try again later"
    local left = limits.max_negentropy_worker_records - negentropy_held
    if left <= 0 then return send({ "NEG-ERR", subid, busy }) end
    local max = math.min(limits.max_negentropy_records, left)
    -- the records are counted against the budget while they are read (the read yields)
    neg_reserved, negentropy_held = max, negentropy_held + max
    local items, why = resty.negentropy_items(msg[3], { max = max })
    neg_release()
    if not items then
      if max < limits.max_negentropy_records and why and why:find("^blocked: the filters match more than") then
        why = busy
      end
      return send({ "NEG-ERR", subid, why })
    end
    if closed then return end
    local session = layer2.negentropy(limits.negentropy_frame)
    local ok, serr = session:add_items(items)
    items = nil -- luacheck: ignore (the session holds the records now: the string can go)
    if ok then ok, serr = session:seal() end
    if not ok then
      session:close()
      return send({ "NEG-ERR", subid, serr })
    end
    local records = session:size()
    negentropy_held = negentropy_held + records
    negs[subid], nnegs = { session = session, last = ngx.now(), records = records }, nnegs + 1
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
    if subid then end_sub(subid) end
  end

  -- a message too long to parse: the answer its verb calls for, found at its start, so a client
  -- learns which of its requests failed
  local function refuse_long(data)
    local why = ("blocked: a message of more than %d bytes"):format(limits.max_message_length)
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

  local function handle_text(data)
    if #data > limits.max_message_length then return refuse_long(data) end
    if nnegs > 0 then neg_idle() end
    local msg = cjson.decode(data)
    if type(msg) ~= "table" or type(msg[1]) ~= "string" then
      send({ "NOTICE", "invalid: a message is a JSON array starting with a verb" })
    elseif not handlers[msg[1]] then
      send({ "NOTICE", "invalid: unknown message type " .. msg[1]:sub(1, 20) })
    else
      local ok, herr = pcall(handlers[msg[1]], msg, data)
      if not ok then
        ngx.log(ngx.ERR, "relay: ", herr)
        send({ "NOTICE", "error: the relay failed on this message" })
      end
    end
  end

  local too_long = ("a message of more than %d bytes"):format(limits.max_frame_length)
  local close_code, close_reason
  -- a fragmented message: its parts so far, their bytes, and the first fragment's type
  local parts, parts_bytes, parts_type
  while not closed do
    -- nothing more is read while the socket is behind
    wait_room()
    if closed then break end
    local data, typ, rerr = wb:recv_frame()
    if not data then
      if not (rerr and rerr:find("timeout", 1, true)) then
        if rerr and rerr:find("exceeding max payload len", 1, true) then close_code, close_reason = 1009, too_long end
        break
      end
      if nnegs > 0 then neg_idle() end
    elseif typ == "close" then
      break
    elseif typ == "ping" then
      enqueue(PONG, data)
    elseif typ == "continuation" then
      -- a fragment after the first: kept up to max_frame_length in all, then the whole message
      if not parts then
        close_code, close_reason = 1002, "a continuation frame with no message begun"
        break
      end
      parts[#parts + 1], parts_bytes = data, parts_bytes + #data
      if parts_bytes > limits.max_frame_length then
        close_code, close_reason = 1009, too_long
        break
      end
      if rerr ~= "again" then
        local whole = table.concat(parts)
        if parts_type == "text" then handle_text(whole) end
        parts = nil
      end
    elseif parts then
      close_code, close_reason = 1002, "a new message began before the last one's final fragment"
      break
    elseif rerr == "again" then
      parts, parts_bytes, parts_type = { data }, #data, typ -- the first fragment of a message
    elseif typ == "text" then
      handle_text(data)
    end
  end
  finish()
  if sender_idle then wake:post(1) end
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
