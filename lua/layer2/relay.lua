-- layer2.relay: the nostr relay protocol over any store, apart from any transport. A session
-- takes a client's text messages (NIP-01 EVENT, REQ, CLOSE, COUNT; NIP-42 AUTH; NIP-77 NEG-OPEN,
-- NEG-MSG, NEG-CLOSE) and hands back the frames to send; the host (examples/openresty/relay.lua
-- over nginx, or any websocket server) carries the frames and says how saving, live delivery and
-- waiting work where it runs. A policy (a table of optional hooks, or the path of a file that
-- returns one) decides what the relay takes and answers, with the client's address and, after
-- NIP-42 AUTH, its pubkey.
--
--   local r = relay.new({ store = db })              -- host functions: see relay.new
--   local s = r:session({ send = function(text) ws:send(text) end })
--   s:message(text)                                  -- each text message the client sends
--   s:close()                                        -- when the connection ends
local cjson = require("cjson.safe")
local layer2 = require("layer2")
local policies = require("layer2.policy")

local relay = {}
local Relay, Session = {}, {}
Relay.__index, Session.__index = Relay, Session

-- The protocol's limits; relay.new's opts.limits (or r:set_limits) change them by name.
relay.LIMITS = {
  max_message_length = 256 * 1024,
  -- a message past max_message_length but within this is read and refused with a reason, the
  -- connection kept; a larger one closes it (the transport's part: status 1009)
  max_frame_length = 1024 * 1024,
  max_subscriptions = 20,
  max_filters = 10,
  max_limit = 500,
  max_subid_length = 64,
  -- NIP-77: records a reconciliation may cover (40 bytes each in memory), sessions per
  -- connection, seconds a session may stay idle, bytes per reply frame (hex doubles it)
  max_negentropy_records = 500000,
  max_negentropy_sessions = 4,
  -- records all of a relay's sessions may hold at once (40 bytes each: 80 MB); past it a
  -- NEG-OPEN is refused before any scan, and one that would pass it is refused at what remains
  max_negentropy_worker_records = 2000000,
  negentropy_idle = 60,
  negentropy_frame = 500000, -- strfry's relay's: fewer rounds (a client's own frames stay small)
  -- a transport's backpressure (examples/openresty/relay.lua): bytes a connection may have
  -- queued before its requests wait, bytes unsent before it is closed, seconds a write may wait
  max_queued_bytes = 512 * 1024,
  max_unsent_bytes = 4 * 1024 * 1024,
  send_timeout = 30,
}

local VERIFIED = { verify = false } -- save options for an event this library verified

-- Live delivery within this process, for a host that gives no watch of its own: the
-- subscriptions indexed together (layer2.fanout), each new event matched once.
local function local_watchers()
  local index, handlers, next_handle = layer2.fanout(), {}, 0
  local w = {}
  function w.watch(filters, fn)
    next_handle = next_handle + 1
    local ok, err = index:add(next_handle, filters)
    if not ok then return nil, err end
    handlers[next_handle] = fn
    return next_handle
  end
  function w.unwatch(handle)
    index:remove(handle)
    handlers[handle] = nil
  end
  function w.publish(json)
    for _, handle in ipairs(index:match(json) or {}) do handlers[handle](json) end
  end
  return w
end

-- The policy: nil (none), a table of hooks, or a file's path.
local HOOKS = { "accept_connection", "accept_event", "accept_req" }
local function load_policy(p)
  if p == nil then return {} end
  if policies.is_file(p) then p = policies.load_file(p, 3) end
  if type(p) ~= "table" then error("layer2.relay.new: a policy is a table of hooks or a file's path", 3) end
  for _, hook in ipairs(HOOKS) do
    if p[hook] ~= nil and type(p[hook]) ~= "function" then
      error(("layer2.relay.new: the policy's %s is not a function"):format(hook), 3)
    end
  end
  return p
end

-- a relay URL as NIP-42 compares it: no trailing slash, scheme and host in lower case
local function normal_url(url)
  url = tostring(url):gsub("/+$", "")
  local scheme_host, rest = url:match("^([%a]+://[^/]+)(.*)$")
  return scheme_host and scheme_host:lower() .. rest or url
end

-- relay.new(opts) -> a relay. opts: store (the store its reads go to: layer2.open's or a store's
-- handle, or a function returning it), limits (names of relay.LIMITS), info ({name, description}
-- for NIP-11), policy (hooks, below), url (this relay's, as clients reach it: what a NIP-42 AUTH
-- event's relay tag names), and the host's parts, each optional:
--   save(ev, done, queue, verified, screen)
--                           saves an event (a table, or its JSON), then calls done(ok, msg,
--                           shadowed); verified: its id and signature were checked here (for
--                           the policy); screen: given to a host that `screens` (below)
--   screens                 true: the host's save checks signatures itself (in batches, off its
--                           event loop) and then calls screen() for each event whose signature
--                           holds: true (save it), "shadow" (answer done(true, "", true), save
--                           nothing) or false and the refusal; the policy's accept_event runs
--                           there, and this library does not verify an event first
--   queue()                 a connection's token for save (its saves keep their order)
--   watch(filters, fn)      -> handle | nil, err: fn(json) for each new matching event
--   unwatch(handle)
--   broadcast(json)         an ephemeral event accepted: to every watcher (it is never stored)
--   before_query()          called before a REQ's query (the host's live feed catches up)
--   negentropy_items(filters, opts)
--   waiter()                -> {wait = fn(seconds), post = fn(n)}: a REQ after an EVENT waits
--                              for that EVENT's OK (a host whose saves finish later gives it)
--   now()                   seconds (monotonic), for idle negentropy sessions
--   log(msg)                what went wrong inside the relay
-- The policy's hooks, each optional, each given `client` ({id, ip, pubkey: set by AUTH}):
--   accept_connection(client)            -> true | false, reason: a refused session is not made
--   accept_event(ev, client)             -> true | false, "prefix: why" | "shadow": the event (a
--                                           table, its signature checked) is saved, refused, or
--                                           answered OK and dropped
--   accept_req(filters, client, verb)    -> true | false, "prefix: why": for REQ, COUNT and
--                                           NEG-OPEN; a refusal is their CLOSED or NEG-ERR
-- A hook that raises refuses ("error: the relay's policy failed"), and is logged.
function relay.new(opts)
  opts = opts or {}
  local unknown = require("layer2.core").unknown_option(opts, "layer2.relay.new", { "store", "limits", "info",
    "policy", "url", "save", "screens", "queue", "watch", "unwatch", "broadcast", "before_query", "negentropy_items",
    "waiter", "now", "log" })
  if unknown then error(unknown, 2) end
  if opts.store == nil then error("layer2.relay.new: a store is needed (opts.store)", 2) end
  local store = opts.store
  local self = setmetatable({ limits = {}, info = opts.info or {}, negentropy_held = 0 }, Relay)
  for k, v in pairs(relay.LIMITS) do self.limits[k] = v end
  self:set_limits(opts.limits or {})
  self.store = type(store) == "function" and store or function() return store end
  -- what the host does not give, the store does at once (a plain-Lua host) and this process's
  -- watchers deliver
  self.save = opts.save or function(ev, done, _, verified)
    done(self.store():save_event(ev, verified and VERIFIED or nil))
  end
  self.screens = opts.save ~= nil and opts.screens == true
  self.queue = opts.queue or function() return nil end
  if opts.watch then
    self.watch, self.unwatch, self.broadcast = opts.watch, opts.unwatch, opts.broadcast or function() end
  else
    local w = local_watchers()
    self.watch, self.unwatch, self.broadcast, self.publish = w.watch, w.unwatch, w.publish, w.publish
  end
  self.before_query = opts.before_query or function() end
  self.negentropy_items = opts.negentropy_items or function(filters, o)
    return self.store():negentropy_items(filters, o)
  end
  self.waiter = opts.waiter
  self.now = opts.now or layer2.monotonic
  self.log = opts.log or function(msg) io.stderr:write("relay: ", msg, "\n") end
  self:set_policy(opts.policy)
  self:set_url(opts.url)
  return self
end

-- r:set_policy(p): the policy from now on (a table of hooks, a file's path, or nil for none).
function Relay:set_policy(p) self.policy = load_policy(p) end

-- r:set_url(url): what a NIP-42 AUTH event's relay tag must name (nil: any).
function Relay:set_url(url) self.url = url and normal_url(url) end

-- Sets limits by name; an unknown name or a value that is not a positive number is an error,
-- not a limit silently ignored.
function Relay:set_limits(t)
  for name, value in pairs(t) do
    if self.limits[name] == nil then error("relay: no limit is called " .. tostring(name), 2) end
    if type(value) ~= "number" or value <= 0 then
      error(("relay: limit %s takes a positive number, not %s"):format(name, tostring(value)), 2)
    end
    self.limits[name] = value
  end
end

-- The NIP-11 document (JSON).
function Relay:info_document()
  local l = self.limits
  return cjson.encode({
    name = self.info.name or "a layer2 relay",
    description = self.info.description or "a nostr relay with a layer2 store",
    software = "layer2",
    version = layer2.version,
    supported_nips = { 1, 9, 11, 40, 42, 45, 77 },
    limitation = { max_message_length = l.max_message_length, max_subscriptions = l.max_subscriptions,
      max_filters = l.max_filters, max_limit = l.max_limit, max_subid_length = l.max_subid_length },
  })
end

-- r:session(conn) -> a session for one connection. conn: send(text) (a frame to send; never
-- waits), and optionally:
--   live(subid, json)  a live event (a host may close a connection that lets them pile up;
--                      send is used without it)
--   drain()            waits while the connection is behind, between the stored events of an
--                      answer; false once it is gone
--   unsent()           bytes sent but not yet written: with the live events held while an
--                      answer's stored ones go out, bounded by max_unsent_bytes
--   overflow()         past that bound: the host drops what waits and closes the connection
--                      (without it, a NOTICE says so)
--   send_frames(bytes, n)
--                      a websocket host's: n whole frames (text, final, unmasked) to write as
--                      they are; a REQ's stored events then come as one string built in C
--                      (db:query_frames), not a string per event
local sessions_made = 0

-- a NIP-42 challenge: 16 random bytes in hex, from the kernel (an AUTH event answers one
-- connection's challenge only: one seen elsewhere cannot be replayed)
local urandom
local function challenge()
  urandom = urandom or assert(io.open("/dev/urandom", "rb"))
  return (urandom:read(16):gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

function Relay:session(conn)
  if type(conn) ~= "table" or type(conn.send) ~= "function" then
    error("layer2.relay: a session needs conn.send(text)", 2)
  end
  sessions_made = sessions_made + 1
  local client = { id = conn.id or sessions_made, ip = conn.ip }
  local ok, why = self:ask("accept_connection", client)
  if not ok then return nil, why end
  local s = setmetatable({
    relay = self, conn = conn, client = client, subs = {}, nsubs = 0, negs = {}, nnegs = 0, neg_reserved = 0,
    unsettled = 0, settled = self.waiter and self.waiter(), saves = self.queue(), closed = false,
    challenge = challenge(),
  }, Session)
  -- NIP-42: a relay with a policy asks each client to authenticate, which it may do or not
  if next(self.policy) then s:send({ "AUTH", s.challenge }) end
  return s
end

-- The policy's answer to hook(...): true (also without the hook), or false and the message,
-- prefixed as NIP-01 asks (`default` when the policy gave none).
function Relay:ask(hook, ...)
  local fn = self.policy[hook]
  if not fn then return true end
  local ok, verdict, why = pcall(fn, ...)
  if not ok then
    self.log(("the policy's %s failed: %s"):format(hook, tostring(verdict)))
    return false, "error: the relay's policy failed"
  end
  return verdict, why
end

local function refusal(why, prefix)
  why = why ~= nil and tostring(why) or "refused by the relay's policy"
  return why:match("^[%w-]+: ") and why or prefix .. ": " .. why
end

-- ---- a session ----

function Session:send(msg) self.conn.send(cjson.encode(msg)) end

-- relay.event_frame(subid, json): an EVENT frame around a stored event's JSON, which goes in as it is
function relay.event_frame(subid, json) return '["EVENT",' .. cjson.encode(subid) .. "," .. json .. "]" end
local event_frame = relay.event_frame

-- the client reads too slowly for what it asked to hear
function Session:overflow()
  if self.conn.overflow then return self.conn.overflow() end
  self:send({ "NOTICE", ("closed: more than %d bytes unsent, the connection reads too slowly"):format(
    self.relay.limits.max_unsent_bytes) })
end

function Session:send_live(subid, json)
  if self.conn.live then return self.conn.live(subid, json) end
  self.conn.send(event_frame(subid, json))
end

local function filters_of(limits, msg, from)
  local filters = {}
  for i = from, #msg do
    if type(msg[i]) ~= "table" then return nil, "invalid: filter " .. (i - from + 1) .. " is not an object" end
    filters[#filters + 1] = msg[i]
  end
  if #filters == 0 then return nil, "invalid: no filter" end
  if #filters > limits.max_filters then return nil, ("invalid: more than %d filters"):format(limits.max_filters) end
  return filters
end

function Session:subid_of(msg, verb)
  local subid = msg[2]
  if type(subid) ~= "string" or #subid == 0 or #subid > self.relay.limits.max_subid_length then
    self:send({ "NOTICE", "invalid: " .. verb .. " needs a subscription id of 1 to 64 characters" })
    return nil
  end
  return subid
end

-- ends the subscription `subid` if there is one (a CLOSE, or a REQ reusing its id)
function Session:end_sub(subid)
  if not self.subs[subid] then return end
  self.relay.unwatch(self.subs[subid])
  self.subs[subid] = nil
  self.nsubs = self.nsubs - 1
end

-- a REQ refused: CLOSED, and a live subscription of that id ends with it (the client was told
-- its id is closed)
function Session:refuse_sub(subid, why)
  self:end_sub(subid)
  self:send({ "CLOSED", subid, why })
end

-- ["REQ"|"COUNT", subid, filter...]: the id and the filters, or nil once the refusal is sent
function Session:query_args(msg)
  local subid = self:subid_of(msg, msg[1])
  if not subid then return nil end
  local filters, ferr = filters_of(self.relay.limits, msg, 3)
  if filters then
    local ok, why = self.relay:ask("accept_req", filters, self.client, msg[1])
    if not ok then filters, ferr = nil, refusal(why, "restricted") end
  end
  if not filters then
    if msg[1] == "REQ" then self:refuse_sub(subid, ferr) else self:send({ "CLOSED", subid, ferr }) end
    return nil
  end
  return subid, filters
end

-- events of this connection not decided yet: a REQ or COUNT after an EVENT waits for them, so a
-- client reads its own writes
function Session:settle()
  while self.unsettled > 0 and self.settled do self.settled.wait(5) end
end

local verbs = {}

function verbs.EVENT(self, msg, data)
  local ev = msg[2]
  if type(ev) ~= "table" then return self:send({ "NOTICE", "invalid: EVENT needs an event object" }) end
  local id = type(ev.id) == "string" and ev.id or ""
  local r = self.relay
  -- the event as the client wrote it (["EVENT", {...}] less its frame): the core parses JSON
  -- faster than it reads a table, and a string crosses into nginx's thread pool as one copy
  local json = #msg == 2 and data:match('^%s*%[%s*"EVENT"%s*,(.*)%]%s*$') or ev
  local verified, screen = false, nil
  if r.policy.accept_event then
    -- the policy decides on an event whose signature holds (a forged one never reaches it)
    local client = self.client
    screen = function()
      local verdict, why = r:ask("accept_event", ev, client)
      if verdict == true or verdict == "shadow" then return verdict end
      return false, refusal(why, "blocked")
    end
    if not r.screens then
      -- checked here, then the store is told, and does not check it again
      local valid, verr = layer2.event.verify(json)
      verified = valid
      if not valid then return self:send({ "OK", id, false, verr }) end
      local verdict, why = screen()
      if verdict == "shadow" then return self:send({ "OK", id, true, "" }) end
      if verdict ~= true then return self:send({ "OK", id, false, why }) end
      screen = nil
    end
  end
  self.unsettled = self.unsettled + 1
  r.save(json, function(ok, m, shadowed)
    local deliver = ok and not shadowed
    if deliver and type(ev.kind) == "number" and ev.kind >= 20000 and ev.kind < 30000 then
      r.broadcast(layer2.event.encode(ev))
    elseif deliver and r.publish then -- this process's watchers (a host's own watch has its feed)
      r.publish(type(json) == "string" and json or layer2.event.encode(ev))
    end
    self:send({ "OK", id, ok and true or false, m or "" })
    self.unsettled = self.unsettled - 1
    if self.unsettled == 0 and self.settled then self.settled.post(1) end
  end, self.saves, verified, screen)
end

function verbs.REQ(self, msg)
  local subid, filters = self:query_args(msg)
  if not subid then return end
  self:settle()
  local r, limits = self.relay, self.relay.limits
  if not self.subs[subid] and self.nsubs >= limits.max_subscriptions then
    return self:send({ "CLOSED", subid, ("blocked: more than %d subscriptions"):format(limits.max_subscriptions) })
  end
  -- the host's live feed delivers what was saved up to now first: the subscription below sees
  -- only what comes after (what the query answers is not sent again as live)
  r.before_query()
  -- each stored event's frame is its JSON between a prefix made once and "]"; a websocket host
  -- gets them all as frames built in C
  local store, prefix = r.store(), '["EVENT",' .. cjson.encode(subid) .. ","
  local events, n, qerr
  local framed = self.conn.send_frames and store.query_frames
  if framed then
    events, n = store:query_frames(filters, prefix, { max_limit = limits.max_limit })
    if not events then qerr = n end
  else
    events, qerr = store:query_events(filters, { json = true, max_limit = limits.max_limit })
  end
  if not events then return self:refuse_sub(subid, qerr) end
  self:end_sub(subid)
  -- new events the filters match from now on; those that come while the stored ones are still
  -- being sent wait for the EOSE, as many as max_unsent_bytes allows with what is unsent
  local held, held_bytes = {}, 0
  local handle, werr = r.watch(filters, function(json)
    if not held then return self:send_live(subid, json) end
    held[#held + 1], held_bytes = json, held_bytes + #json
    if held_bytes + (self.conn.unsent and self.conn.unsent() or 0) > limits.max_unsent_bytes then
      held, held_bytes = {}, 0
      self:overflow()
    end
  end)
  if not handle then return self:send({ "CLOSED", subid, werr }) end
  self.subs[subid], self.nsubs = handle, self.nsubs + 1
  -- the stored events go out as the connection drains, not all into its queue at once (framed:
  -- the answer goes once the queue has room, as one write)
  local drain, send = self.conn.drain, self.conn.send
  if framed then
    if drain and (not drain() or self.closed or self.subs[subid] ~= handle) then return end
    if n > 0 then self.conn.send_frames(events, n) end
  else
    for _, json in ipairs(events) do
      if drain and (not drain() or self.closed or self.subs[subid] ~= handle) then return end
      send(prefix .. json .. "]")
    end
  end
  self:send({ "EOSE", subid })
  local live = held
  held = nil
  for _, json in ipairs(live) do self:send_live(subid, json) end
end

function verbs.COUNT(self, msg)
  local subid, filters = self:query_args(msg)
  if not subid then return end
  self:settle()
  local n, cerr = self.relay.store():count_events(filters)
  if not n then return self:send({ "CLOSED", subid, cerr }) end
  self:send({ "COUNT", subid, { count = n } })
end

function verbs.CLOSE(self, msg)
  local subid = self:subid_of(msg, "CLOSE")
  if subid then self:end_sub(subid) end
end

-- NIP-42: ["AUTH", event] answers the session's challenge; an OK says whether it holds. The
-- pubkey it proves is client.pubkey from then on, for the policy's hooks.
local AUTH_WINDOW = 600 -- seconds, either way

local function tag_value(ev, name)
  for _, t in ipairs(type(ev.tags) == "table" and ev.tags or {}) do
    if type(t) == "table" and t[1] == name then return t[2] end
  end
end

function verbs.AUTH(self, msg, data)
  local ev = msg[2]
  if type(ev) ~= "table" then return self:send({ "NOTICE", "invalid: AUTH needs an event object" }) end
  local id = type(ev.id) == "string" and ev.id or ""
  local function refuse(why) self:send({ "OK", id, false, why }) end
  local valid, verr = layer2.event.verify(#msg == 2 and data:match('^%s*%[%s*"AUTH"%s*,(.*)%]%s*$') or ev)
  if not valid then return refuse(verr) end
  if ev.kind ~= 22242 then return refuse("invalid: an AUTH event is of kind 22242") end
  if tag_value(ev, "challenge") ~= self.challenge then return refuse("invalid: the challenge is not this connection's") end
  local url = self.relay.url
  local named = tag_value(ev, "relay")
  if url and (type(named) ~= "string" or normal_url(named) ~= url) then
    return refuse("invalid: the relay tag names another relay")
  end
  if math.abs(os.time() - ev.created_at) > AUTH_WINDOW then
    return refuse("invalid: created_at is more than 10 minutes from now")
  end
  self.client.pubkey = ev.pubkey
  self:send({ "OK", id, true, "" })
end

-- ---- NIP-77: a reconciliation session per id, over what the store's authority holds ----

-- records of the relay's budget a NEG-OPEN holds while it reads them
function Session:neg_release()
  self.relay.negentropy_held = self.relay.negentropy_held - self.neg_reserved
  self.neg_reserved = 0
end

function Session:neg_close(subid, reason)
  local n = self.negs[subid]
  if not n then return end
  n.session:close()
  self.relay.negentropy_held = self.relay.negentropy_held - n.records
  self.negs[subid], self.nnegs = nil, self.nnegs - 1
  if reason then self:send({ "NEG-ERR", subid, reason }) end
end

-- closes the sessions idle for longer than negentropy_idle (a host calls it on a quiet read too)
function Session:neg_idle()
  if self.nnegs == 0 then return end
  local now, idle = self.relay.now(), self.relay.limits.negentropy_idle
  for subid, n in pairs(self.negs) do
    if now - n.last > idle then self:neg_close(subid, ("closed: idle for more than %d s"):format(idle)) end
  end
end

function Session:neg_reply(subid, n, message)
  local reply, why = n.session:reconcile(message)
  if not reply then return self:neg_close(subid, why) end
  n.last = self.relay.now()
  self:send({ "NEG-MSG", subid, reply })
end

verbs["NEG-OPEN"] = function(self, msg)
  local subid = self:subid_of(msg, "NEG-OPEN")
  if not subid then return end
  if type(msg[3]) ~= "table" or type(msg[4]) ~= "string" then
    return self:send({ "NEG-ERR", subid, "invalid: NEG-OPEN needs a filter and an initial message" })
  end
  local allowed, refused = self.relay:ask("accept_req", { msg[3] }, self.client, "NEG-OPEN")
  if not allowed then return self:send({ "NEG-ERR", subid, refusal(refused, "restricted") }) end
  self:settle()
  self:neg_close(subid)
  self:neg_idle()
  local r, limits = self.relay, self.relay.limits
  if self.nnegs >= limits.max_negentropy_sessions then
    return self:send({ "NEG-ERR", subid, ("blocked: more than %d negentropy sessions"):format(
      limits.max_negentropy_sessions) })
  end
  -- what the relay's other sessions leave of its budget bounds this one's scan
  local busy = "blocked: this relay is reconciling as much as it can now; try again later"
  local left = limits.max_negentropy_worker_records - r.negentropy_held
  if left <= 0 then return self:send({ "NEG-ERR", subid, busy }) end
  local max = math.min(limits.max_negentropy_records, left)
  -- the records are counted against the budget while they are read (the read may yield)
  self.neg_reserved, r.negentropy_held = max, r.negentropy_held + max
  local items, why = r.negentropy_items(msg[3], { max = max })
  self:neg_release()
  if not items then
    if max < limits.max_negentropy_records and why and why:find("^blocked: the filters match more than") then
      why = busy
    end
    return self:send({ "NEG-ERR", subid, why })
  end
  if self.closed then return end
  local session = layer2.negentropy(limits.negentropy_frame)
  local ok, serr = session:add_items(items)
  items = nil -- luacheck: ignore (the session holds the records now: the string can go)
  if ok then ok, serr = session:seal() end
  if not ok then
    session:close()
    return self:send({ "NEG-ERR", subid, serr })
  end
  local records = session:size()
  r.negentropy_held = r.negentropy_held + records
  self.negs[subid], self.nnegs = { session = session, last = r.now(), records = records }, self.nnegs + 1
  self:neg_reply(subid, self.negs[subid], msg[4])
end

verbs["NEG-MSG"] = function(self, msg)
  local subid = self:subid_of(msg, "NEG-MSG")
  if not subid then return end
  local n = self.negs[subid]
  if not n then return self:send({ "NEG-ERR", subid, "closed: no negentropy session with this id" }) end
  if type(msg[3]) ~= "string" then return self:neg_close(subid, "invalid: NEG-MSG needs a message") end
  self:neg_reply(subid, n, msg[3])
end

verbs["NEG-CLOSE"] = function(self, msg)
  local subid = self:subid_of(msg, "NEG-CLOSE")
  if subid then self:neg_close(subid) end
end

-- ---- messages ----

-- a message too long to parse: the answer its verb calls for, found at its start, so a client
-- learns which of its requests failed
function Session:refuse_long(data)
  local why = ("blocked: a message of more than %d bytes"):format(self.relay.limits.max_message_length)
  local verb = data:match('^%s*%[%s*"([%u-]+)"')
  local subid = data:match('^%s*%[%s*"[%u-]+"%s*,%s*"([^"\\]*)"')
  local id = verb == "EVENT" and data:match('^%s*%[%s*"EVENT"%s*,%s*{%s*"id"%s*:%s*"(%x+)"')
  if subid and (verb == "NEG-OPEN" or verb == "NEG-MSG") then
    self:neg_close(subid)
    self:send({ "NEG-ERR", subid, why })
  elseif subid and (verb == "REQ" or verb == "COUNT") then
    self:send({ "CLOSED", subid, why })
  elseif id and #id == 64 then
    self:send({ "OK", id, false, why })
  else
    self:send({ "NOTICE", why })
  end
end

-- s:message(text): one text message of the client, answered through conn.send.
function Session:message(data)
  if self.closed then error("layer2.relay: a message for a closed session", 2) end
  if #data > self.relay.limits.max_message_length then return self:refuse_long(data) end
  self:neg_idle()
  local msg = cjson.decode(data)
  if type(msg) ~= "table" or type(msg[1]) ~= "string" then
    return self:send({ "NOTICE", "invalid: a message is a JSON array starting with a verb" })
  end
  local verb = verbs[msg[1]]
  if not verb then return self:send({ "NOTICE", "invalid: unknown message type " .. msg[1]:sub(1, 20) }) end
  local ok, err = pcall(verb, self, msg, data)
  if not ok then
    self.relay.log(tostring(err))
    self:send({ "NOTICE", "error: the relay failed on this message" })
  end
end

-- s:close(): the connection ended; what it held (subscriptions, negentropy sessions, a
-- NEG-OPEN's reservation while it was reading) is let go, once.
function Session:close()
  if self.closed then return end
  self.closed = true
  self:neg_release()
  for _, handle in pairs(self.subs) do self.relay.unwatch(handle) end
  self.subs, self.nsubs = {}, 0
  for _, n in pairs(self.negs) do
    n.session:close()
    self.relay.negentropy_held = self.relay.negentropy_held - n.records
  end
  self.negs, self.nnegs = {}, 0
end

return relay
