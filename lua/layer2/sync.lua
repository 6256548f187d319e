-- Syncing a store with another relay (`layer2 sync`): NIP-77 reconciliation over the events a
-- filter matches, then the transfers it calls for, on the same websocket: REQ by ids for what
-- only the relay has (saved in one batch per REQ, signatures checked), EVENT for what only this
-- store has (OKs counted). The transport is the caller's: any object with send(text) and
-- receive(timeout), so this file needs no websocket library.
--
-- Memory: 40 bytes per local item (the reconciliation's sorted vector, in C) plus the ids that
-- differ, kept until sent or fetched; nothing per event beyond a batch of 500.
local layer2 = require("layer2")
local cjson = require("cjson")

local sync = {}

-- subscription ids: one character, as every EVENT sent back carries its REQ's ("n" is the
-- reconciliation; a REQ's id is free again once it is answered and closed)
local SUB = "n"
local REQ_IDS = "0123456789"
local FETCH_IDS = 500 -- ids a REQ asks for at first (the answer cap of most relays, ours included)
local FETCH_IN_FLIGHT = 4 -- REQs outstanding at once
local PUBLISH_HIGH, PUBLISH_LOW = 200, 100 -- EVENTs awaiting their OK: send up to HIGH, refill below LOW
local FRAME_LIMIT = 60000 -- bytes of a negentropy message before hex: under 128 KiB on the wire

-- Counters of a run, updated as it goes (an interrupted run still has them).
local function new_stats()
  return { items = 0, have = 0, need = 0, rounds = 0, fetched = 0, saved = 0, duplicate = 0, refused = 0,
    published = 0, publish_refused = 0, gone = 0, missing = 0, bytes_sent = 0, bytes_received = 0, notices = {} }
end

-- The raw event of an EVENT message (as sent: re-encoding numbers through cjson could round them).
local function raw_event(text)
  return text:match('^%s*%[%s*"EVENT"%s*,%s*"[^"]*"%s*,%s*(%b{})%s*%]%s*$')
end

local function chunk(queue, from, n)
  local out = {}
  for i = from, math.min(#queue, from + n - 1) do out[#out + 1] = queue[i] end
  return out
end

-- sync.run(db, conn, filter, opts) -> stats, or raises with a message. db: a layer2.open backend
-- or a store (the items come from L2, the authority; fetched events are saved through db).
-- filter: a NIP-01 filter table. opts: dir ("down", "up", "both"; default "down"), timeout
-- (seconds without a message, default 30), max_items (local items, default 5,000,000),
-- stats (a table to fill), progress(stats) after each message, notice(text).
function sync.run(db, conn, filter, opts)
  opts = opts or {}
  local dir = opts.dir or "down"
  if dir ~= "down" and dir ~= "up" and dir ~= "both" then error("sync: dir is down, up or both", 2) end
  local down, up = dir ~= "up", dir ~= "down"
  local timeout = opts.timeout or 30
  local st = opts.stats or new_stats()
  for k, v in pairs(new_stats()) do if st[k] == nil then st[k] = v end end
  local authority = db.l2 or db

  local items, why = authority:negentropy_items({ filter }, { max = opts.max_items or 5000000 })
  if not items then error("this store: " .. why, 0) end
  local neg = layer2.negentropy(FRAME_LIMIT)
  assert(neg:add_items(items))
  st.items = assert(neg:seal())
  items = nil -- luacheck: ignore 311 (the vector is in C now; let the string go)

  local function send(msg)
    local text = cjson.encode(msg)
    st.bytes_sent = st.bytes_sent + #text
    local ok, err = conn.send(text)
    if not ok then error("the connection failed: " .. tostring(err), 0) end
  end

  local need, have, seen = {}, {}, {}
  local need_next, have_next = 1, 1
  local fetching, nfetching, fetch_ids = {}, 0, FETCH_IDS
  local awaiting, nawaiting = {}, 0
  local neg_done, neg_answered = false, false

  send({ "NEG-OPEN", SUB, filter, neg:initiate() })
  st.rounds = 1

  local function queue_ids(ids, list, count_field, wanted)
    for _, id in ipairs(ids) do
      if not seen[id] then
        seen[id] = true
        st[count_field] = st[count_field] + 1
        if wanted then list[#list + 1] = id end
      end
    end
  end

  local function fetch_more()
    while nfetching < FETCH_IN_FLIGHT and need_next <= #need do
      local ids = chunk(need, need_next, fetch_ids)
      need_next = need_next + #ids
      local subid
      for i = 1, #REQ_IDS do
        subid = REQ_IDS:sub(i, i)
        if not fetching[subid] then break end
      end
      local asked = {}
      for _, id in ipairs(ids) do asked[id] = true end
      fetching[subid], nfetching = { asked = asked, events = {} }, nfetching + 1
      send({ "REQ", subid, { ids = ids, limit = #ids } })
    end
  end

  local function publish_more()
    if nawaiting > PUBLISH_LOW then return end
    while nawaiting < PUBLISH_HIGH and have_next <= #have do
      local ids = chunk(have, have_next, PUBLISH_HIGH - nawaiting)
      have_next = have_next + #ids
      local events = assert(authority:query_events({ ids = ids, limit = #ids }, { json = true }))
      st.gone = st.gone + #ids - #events -- deleted or replaced since the reconciliation
      for _, json in ipairs(events) do
        local id = json:match('"id"%s*:%s*"(%x+)"')
        awaiting[id], nawaiting = true, nawaiting + 1
        st.bytes_sent = st.bytes_sent + #json + 10
        local ok, err = conn.send('["EVENT",' .. json .. "]")
        if not ok then error("the connection failed: " .. tostring(err), 0) end
      end
    end
  end

  -- a REQ answered: its events saved in one batch. A relay whose answers stop short of what was
  -- asked caps them: what is left is asked again in REQs of that size; ids a REQ gets nothing
  -- for are gone from the relay since the reconciliation.
  local function fetched(subid)
    local f = fetching[subid]
    fetching[subid], nfetching = nil, nfetching - 1
    send({ "CLOSE", subid })
    local left = {}
    for id in pairs(f.asked) do left[#left + 1] = id end
    if #f.events == 0 then
      st.missing = st.missing + #left
    elseif #left > 0 then
      fetch_ids = math.min(fetch_ids, #f.events)
      table.sort(left)
      for _, id in ipairs(left) do need[#need + 1] = id end
    end
    if #f.events == 0 then return end
    local verdicts, err = db:save_events(f.events)
    if not verdicts then error("this store: " .. tostring(err), 0) end
    for _, v in ipairs(verdicts) do
      if v == true then st.saved = st.saved + 1
      elseif tostring(v):match("^duplicate:") then st.duplicate = st.duplicate + 1
      else st.refused = st.refused + 1 end
    end
  end

  local handlers = {}
  handlers["NEG-MSG"] = function(msg)
    if msg[2] ~= SUB or type(msg[3]) ~= "string" then return end
    neg_answered = true
    local reply, have_ids, need_ids = neg:reconcile(msg[3])
    if type(have_ids) == "string" then error("the relay's negentropy message: " .. have_ids, 0) end
    queue_ids(have_ids, have, "have", up)
    queue_ids(need_ids, need, "need", down)
    if reply then
      st.rounds = st.rounds + 1
      send({ "NEG-MSG", SUB, reply })
    else
      neg_done = true
      send({ "NEG-CLOSE", SUB })
    end
  end
  handlers["NEG-ERR"] = function(msg)
    if msg[2] == SUB then error("the relay refused the sync: " .. tostring(msg[3]), 0) end
  end
  function handlers.EVENT(msg, text)
    local f = fetching[msg[2]]
    local ev = type(msg[3]) == "table" and f and f.asked[msg[3].id] and raw_event(text)
    if not ev then return end -- not asked for: not taken
    f.asked[msg[3].id] = nil
    f.events[#f.events + 1] = ev
    st.fetched = st.fetched + 1
  end
  function handlers.EOSE(msg)
    if fetching[msg[2]] then fetched(msg[2]) end
  end
  function handlers.CLOSED(msg)
    if fetching[msg[2]] then error("the relay refused a REQ: " .. tostring(msg[3]), 0) end
  end
  function handlers.OK(msg)
    if not awaiting[msg[2]] then return end
    awaiting[msg[2]], nawaiting = nil, nawaiting - 1
    if msg[3] == true then st.published = st.published + 1
    else st.publish_refused = st.publish_refused + 1 end
  end
  function handlers.NOTICE(msg)
    local text = tostring(msg[2])
    -- a relay without NIP-77 says so in a NOTICE to NEG-OPEN (strfry's sync reads it the same way)
    if not neg_answered and (text:lower():match("unknown") or text:lower():match("unsupported")
      or text:lower():match("invalid")) then
      error("the relay does not speak NIP-77: " .. text, 0)
    end
    st.notices[#st.notices + 1] = text
    if opts.notice then opts.notice(text) end
  end

  while not (neg_done and need_next > #need and nfetching == 0 and have_next > #have and nawaiting == 0) do
    fetch_more()
    publish_more()
    local text, err = conn.receive(timeout)
    if not text then
      error(("the relay stopped answering (%s; waited up to %d s)"):format(tostring(err), timeout), 0)
    end
    st.bytes_received = st.bytes_received + #text
    local ok, msg = pcall(cjson.decode, text)
    if ok and type(msg) == "table" and handlers[msg[1]] then handlers[msg[1]](msg, text) end
    if opts.progress then opts.progress(st) end
  end
  neg:close()
  return st
end

sync.new_stats = new_stats

return sync
