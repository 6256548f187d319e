-- An example nostr relay on OpenResty + layer2: the protocol is layer2.relay's (NIP-01, NIP-11,
-- NIP-45 COUNT, NIP-77); this file is its transport over nginx's websockets: one writer per
-- connection, backpressure, live subscriptions across workers (layer2.resty), and /metrics.
local cjson = require("cjson.safe")
local layer2_relay = require("layer2.relay")
local resty = require("layer2.resty")
local server = require("nginx.websocket.server")
-- frames built here are written by the connection's socket together (see the sender)
local build_frame = require("nginx.websocket.protocol").build_frame
local TEXT, PONG = 0x1, 0xA
local semaphore = require("ngx.semaphore")

local relay = {}

-- the worker's relay: reads from the worker's backend, saves in resty's batches (group commit),
-- live events through resty's feed and index, waits on nginx's semaphores
local protocol = layer2_relay.new({
  store = resty.db,
  info = { name = "layer2 example relay", description = "a nostr relay on OpenResty with a two-level layer2 store" },
  save = resty.save,
  -- resty's writer checks a batch's signatures in the thread pool, then asks the policy
  screens = true,
  queue = resty.queue,
  watch = resty.watch,
  unwatch = resty.unwatch,
  broadcast = resty.broadcast,
  before_query = resty.tail,
  negentropy_items = resty.negentropy_items,
  waiter = function()
    local sem = semaphore.new()
    return { wait = function(seconds) sem:wait(seconds) end, post = function(n) sem:post(n) end }
  end,
  now = ngx.now,
  log = function(msg) ngx.log(ngx.ERR, "relay: ", msg) end,
})
-- the limits (layer2.relay.LIMITS lists them; NIP-11 shows some)
relay.limits = protocol.limits

-- Sets limits by name (nginx.conf's init_worker: tools/relay --limit NAME=VALUE); an unknown
-- name or a value that is not a positive number is an error, not a limit silently ignored.
function relay.set_limits(t) protocol:set_limits(t) end

-- nginx.conf's init_worker: the policy file (tools/relay --policy: loaded in every worker; one that
-- cannot be loaded stops the worker's start with its error) and the URL clients reach the relay
-- at (--url: what a NIP-42 AUTH names). Returns the file's path when the file has an eviction
-- policy too (select), for layer2.resty.init_worker's `policy`, which loads it in the thread pool.
function relay.configure(t)
  local ok, err = pcall(protocol.set_policy, protocol, t.policy)
  if not ok then
    -- this worker serves nothing rather than serve without its rules
    relay.broken = "the relay's policy could not be loaded: see the error log"
    error(err, 2)
  end
  protocol:set_url(t.url)
  if t.policy and protocol.policy.select then return t.policy end
  return nil
end

function relay.handle()
  if relay.broken then
    ngx.status = 503
    ngx.say(relay.broken)
    return
  end
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
      ngx.say(protocol:info_document())
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
  local limits = relay.limits
  wb.sock:settimeouts(60000, limits.send_timeout * 1000, 60000)

  -- ---- the connection's one writer ----
  -- Frames wait in `queue` (`queued` bytes) and go out together, one send for all of them (a
  -- REQ's 500 events are 500 frames, one system call); `writing` bytes are in that send. Only
  -- the sender thread writes the socket, pongs included (two writers collide: "socket busy").
  local queue, queued, writing = {}, 0, 0
  local wake, sender_idle = semaphore.new(), false
  local room, room_wanted = semaphore.new(), false
  local closed, overflow = false, false

  -- whole frames, written as they are
  local function queue_frames(bytes)
    if overflow then return end
    queue[#queue + 1] = bytes
    queued = queued + #bytes
    if sender_idle then
      sender_idle = false
      wake:post(1)
    end
  end
  local function enqueue(opcode, payload)
    if not overflow then queue_frames(build_frame(true, opcode, #payload, payload, false)) end
  end
  -- past max_unsent_bytes the client is not reading: what is queued is dropped, and only a
  -- NOTICE saying so is left for the sender, which then closes the connection
  local function give_up()
    queue, queued = {}, 0
    enqueue(TEXT, ('["NOTICE","closed: more than %d bytes unsent, the connection reads too slowly"]'):format(
      limits.max_unsent_bytes))
    overflow = true
  end
  -- the reader's wait while the socket is behind (until it drains below max_queued_bytes)
  local function wait_room()
    while not closed and queued + writing >= limits.max_queued_bytes do
      room_wanted = true
      room:wait(1)
    end
  end

  local session, refused = protocol:session({
    ip = ngx.var.remote_addr,
    send = function(text) enqueue(TEXT, text) end,
    live = function(subid, json)
      enqueue(TEXT, layer2_relay.event_frame(subid, json))
      if not overflow and queued + writing > limits.max_unsent_bytes then give_up() end
    end,
    drain = function()
      wait_room()
      return not closed
    end,
    unsent = function() return queued + writing end,
    overflow = give_up,
    -- a REQ's stored events: frames built in C
    send_frames = queue_frames,
  })
  if not session then
    -- the policy's accept_connection said no: the client is told why, then the door closes
    wb:send_text(cjson.encode({ "NOTICE", refused }))
    return wb:send_close(1008, refused:sub(1, 120))
  end
  -- what the connection holds in the worker's shared state (its subscriptions in the fan-out
  -- index, its negentropy sessions) is let go once, by whichever thread ends the connection
  local function finish()
    closed = true
    session:close()
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

  -- A client that sends faster than the worker reads has its messages already in the socket's
  -- buffer: recv_frame returns them without yielding, and the worker would do nothing else until
  -- its queue of saves is full (a burst of hundreds of messages, tens of ms: another client's lone
  -- EVENT waited that long to be read, and its OK to be sent). After READ_RUN messages in one turn
  -- of the event loop (its cached clock unchanged) the reader gives the loop a turn (sleep(0) warns
  -- on nginx builds without OpenResty's patch). Counted per turn: a client asking one REQ at a time
  -- waited up to 1 ms every 16th REQ when every 32nd message slept.
  local READ_RUN, run, run_turn = 32, 0, 0
  local function handled()
    local turn = ngx.now()
    if turn ~= run_turn then run, run_turn = 0, turn end
    run = run + 1
    if run >= READ_RUN then
      run = 0
      ngx.sleep(0.001)
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
      session:neg_idle()
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
        if parts_type == "text" then
          session:message(whole)
          handled()
        end
        parts = nil
      end
    elseif parts then
      close_code, close_reason = 1002, "a new message began before the last one's final fragment"
      break
    elseif rerr == "again" then
      parts, parts_bytes, parts_type = { data }, #data, typ -- the first fragment of a message
    elseif typ == "text" then
      session:message(data)
      handled()
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
