-- layer2.resty.writer: group commit for layer2.resty. Every save of a worker goes through here
-- (layer2.resty.save); start() runs the writer's loop in a timer, each batch in `in_pool`.
local feed = require("layer2.resty.feed")

local writer_api = {}
local in_pool -- in_pool("save_events", events): where batches are written (layer2.resty)
local verify_list -- verify_list(events): their signatures checked, where batches are (layer2.resty)

local function log(msg) ngx.log(ngx.ERR, "layer2: ", msg) end

-- Events from every connection of a worker are saved together: whatever arrived while one batch
-- was being written goes in the next, one write transaction (one fsync) per level for all of it.
-- Saving event by event paid two commits per event, and on a busy machine every commit's wait
-- for the disk also costs a wait for the CPU: ingest fell to a few dozen events a second.
-- The window adapts by itself: an idle writer is woken by the first event and saves it alone;
-- a busy one takes what queued while it wrote (up to MAX_BATCH). No timer is waited on.
-- Each connection has its own queue, and a batch takes from them in turn: a connection that
-- floods waits for room in its own queue (MAX_QUEUED) while another's event goes in the next
-- batch, not behind the flood.
-- While a connection with a few events waits beside others, a batch takes at most SHARE events
-- of each, so that its lone EVENT goes in a short batch rather than with hundreds of a flood's.
-- (A batch sized by time instead cost the flood more than half its rate: each batch pays its
-- fsyncs; so did this cap while only connections with much to save waited.)
local MAX_BATCH, MAX_QUEUED, SHARE = 500, 1000, 32
-- writer.ring: the queues with events waiting, in turn order (see resty.queue); busy while a
-- batch is written, express while an express batch is (see express)
local writer = { ring = {}, shared = nil, wake = nil, idle = false, busy = false, express = false }

local function queued(q) return q.tail - q.head + 1 end

local function batch_limit()
  if #writer.ring < 2 then return MAX_BATCH end
  for _, q in ipairs(writer.ring) do
    if queued(q) <= SHARE then return math.min(MAX_BATCH, SHARE * #writer.ring) end
  end
  return MAX_BATCH -- every connection waiting has much to save: the largest batches save fastest
end

-- The next batch: one event from each waiting queue in turn, until the batch's limit or none is
-- left; the next batch goes on from the queue after the last one served, so turns carry across
-- batches. A queue whose events are in an express batch being written waits for it (first in
-- the next batch): a connection's events commit in the order it sent them. Also returns the
-- queues served (marked in_batch until the batch is written).
-- an item of a queue: { event, done, verified, screen } (see writer_api.save); into a batch's
-- events and done (done.verified: every one verified; done.screens[i]: its screen, if any)
local function add_item(events, done, item)
  events[#events + 1], done[#done + 1] = item[1], item[2]
  done.verified = done.verified and item[3]
  if item[4] then done.screens[#done] = item[4] end
end

local function new_done() return { verified = true, screens = {} } end

local function take_batch()
  local events, done, limit, served, ring, later = {}, new_done(), batch_limit(), {}, {}, {}
  for _, q in ipairs(writer.ring) do
    if q.in_express then later[#later + 1] = q else ring[#ring + 1] = q end
  end
  while #ring > 0 and #events < limit do
    local kept, rest = {}, {}
    for _, q in ipairs(ring) do
      if #events < limit then
        local item = q.items[q.head]
        q.items[q.head], q.head = nil, q.head + 1
        add_item(events, done, item)
        if not q.in_batch then
          q.in_batch = true
          served[#served + 1] = q
        end
        if q.blocked > 0 and queued(q) < MAX_QUEUED then q.room:post(q.blocked) end
        if queued(q) > 0 then kept[#kept + 1] = q else q.waiting = false end
      else
        rest[#rest + 1] = q -- not served this round: first in the next batch
      end
    end
    for _, q in ipairs(kept) do rest[#rest + 1] = q end
    ring = rest
  end
  for _, q in ipairs(ring) do later[#later + 1] = q end
  writer.ring = later
  return events, done, served
end

-- a batch whose every event its caller verified (done.verified) is not verified again
local VERIFIED = { verify = false }

local FAILED = "error: the store failed on this batch"

-- A batch whose policy decides once signatures hold (layer2.relay's screens): every event is
-- verified in the pool first (on threads, off the event loop), then each valid one with a screen
-- is screened here (the policy may yield: a strfry plugin's call). Returns the events to save (all
-- verified now) and their places; results[i] gets what is decided already: a refusal, "shadow".
local function screen_batch(events, done, results)
  local ok, verdicts, err = pcall(verify_list, events)
  if ok and not verdicts then ok, verdicts = false, err end
  if not ok then log("a batch's signature checks failed: " .. tostring(verdicts)) end
  local kept, at = {}, {}
  for i, ev in ipairs(events) do
    local v = ok and verdicts[i] or FAILED
    local screen = done.screens[i]
    if v == true and screen then
      local sok, verdict, why = pcall(screen)
      if not sok then
        log("a screen failed: " .. tostring(verdict))
        v = "error: the relay's policy failed"
      elseif verdict ~= true then
        v = verdict == "shadow" and "shadow" or tostring(why)
      end
    end
    if v == true then
      kept[#kept + 1], at[#at + 1] = ev, i
    else
      results[i] = v
    end
  end
  return kept, at
end

local function write_batch(events, done)
  local results, list, at, opts = {}, events, nil, done.verified and VERIFIED or nil
  if next(done.screens) then
    list, at = screen_batch(events, done, results)
    opts = VERIFIED
  end
  if #list > 0 then
    local ok, verdicts, err = pcall(in_pool, "save_events", list, opts)
    if ok and not verdicts then ok, verdicts = false, err end
    if not ok then log("a batch of saves failed: " .. tostring(verdicts)) end
    for k = 1, #list do results[at and at[k] or k] = ok and verdicts[k] or FAILED end
  end
  for i, fn in ipairs(done) do
    local v = results[i]
    local taken = v == true or v == "shadow"
    local cok, e = pcall(fn, taken, not taken and v or "", v == "shadow")
    if not cok then log("a save's callback failed: " .. tostring(e)) end
  end
  -- this worker's subscribers get the batch now; the others' when they see the signal
  feed.signal()
  local tok, e = pcall(feed.tail)
  if not tok then log("delivering a batch failed: " .. tostring(e)) end
end

-- Express batches. A batch is written in the thread pool, and what arrives meanwhile waits for it
-- to end: behind up to 500 of a flood's events, tens of ms. A connection with few events waiting
-- (SHARE at most) need not wait: while a batch is being written, an express batch takes the events
-- of every such connection and writes them in another pool thread beside it (they take turns with
-- the batch only for LMDB's write lock, a few ms). One express batch at a time. A connection with
-- events in the batch being written is left to the next one, so that a connection's events
-- commit in the order it sent them (a client that sends a replaceable event twice expects both
-- accepted, the second replacing the first).
local function take_light()
  local events, done, rest, served = {}, new_done(), {}, {}
  for _, q in ipairs(writer.ring) do
    if queued(q) <= SHARE and not q.in_batch then
      while q.head <= q.tail do
        local item = q.items[q.head]
        q.items[q.head], q.head = nil, q.head + 1
        add_item(events, done, item)
      end
      q.waiting, q.in_express = false, true
      served[#served + 1] = q
    else
      rest[#rest + 1] = q
    end
  end
  writer.ring = rest
  return events, done, served
end

local function express(premature)
  if not premature then
    while writer.busy do
      local events, done, served = take_light()
      if #events == 0 then break end
      write_batch(events, done)
      for _, q in ipairs(served) do q.in_express = false end
    end
  end
  writer.express = false
end

local function write_loop(premature)
  if premature then return end
  while true do
    if #writer.ring == 0 then
      if ngx.worker.exiting() then return end
      writer.idle = true
      writer.wake:wait(1)
      writer.idle = false
    else
      local events, done, served = take_batch()
      if #events > 0 then
        writer.busy = true
        write_batch(events, done)
        writer.busy = false
      end
      for _, q in ipairs(served) do q.in_batch = false end
      -- with more to save, a pause before the next batch: connections read what came meanwhile
      -- and the OKs go out; and another worker's writer, or an express batch, a moment to take
      -- LMDB's write locks (a batch in the thread pool gave the loop its turns already; a yield
      -- of one turn instead did not make a lone EVENT during a flood faster). sleep(0) would do
      -- without its 1 ms, but nginx builds without OpenResty's delayed-events patch, Debian's
      -- among them, warn at every call. With nothing left the writer waits for the next save at
      -- once: an EVENT sent right after the last OK used to wait out the pause (half its OK
      -- latency, 2.1 against 1.1 ms, for a client that sends its next EVENT on each OK).
      if #writer.ring > 0 then ngx.sleep(0.001) end
    end
  end
end

-- A queue of saves, one per connection (resty.save takes it): batches take from queues in turn.
function writer_api.queue()
  return { items = {}, head = 1, tail = 0, blocked = 0, room = require("ngx.semaphore").new() }
end

-- Queues an event (a table or wire JSON) in `queue` (one of resty.queue(); a queue shared by
-- every caller without one if nil) for the next batch; done(ok, msg, shadowed) is called once it
-- is decided, from the writer (it must not yield). Waits while that queue is full. `verified`:
-- the caller has checked its id and signature: not checked again. `screen`: a function called
-- once the event's signature holds (in the writer, before the save), answering true (save it),
-- "shadow" (done(true, "", true): nothing saved) or false and the refusal (layer2.relay's policy).
function writer_api.save(ev, done, queue, verified, screen)
  local q = queue or writer.shared
  if not q then
    q = writer_api.queue()
    writer.shared = q
  end
  while queued(q) >= MAX_QUEUED do
    q.blocked = q.blocked + 1
    q.room:wait(1)
    q.blocked = q.blocked - 1
  end
  q.tail = q.tail + 1
  q.items[q.tail] = { ev, done, verified == true, screen }
  if not q.waiting then
    q.waiting = true
    writer.ring[#writer.ring + 1] = q
  end
  if writer.busy and not writer.express and queued(q) <= SHARE and not q.in_batch then
    writer.express = true
    ngx.timer.at(0, express)
  end
  if writer.idle then
    writer.idle = false
    writer.wake:post(1)
  end
end

-- Starts the worker's writer: batches go to save(method, events) (a call into the thread pool, or
-- the backend's own method); batches with screens are verified by verify(events) first.
function writer_api.start(save, verify)
  in_pool, verify_list = save, verify
  writer.wake = require("ngx.semaphore").new()
  ngx.timer.at(0, write_loop)
end

return writer_api
