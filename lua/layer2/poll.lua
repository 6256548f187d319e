-- Polling a shared L2 (docs/DESIGN.md §3): what other nodes wrote reaches this node's L1, and the
-- on_event handlers here fire for it with origin "l2". Driven by db:poll() (one step).
--
-- With a change feed (L2 has changes_since: PostgreSQL, LMDB) the cursor is a sequence number.
-- Sequence order is not commit order: a transaction can take seq 10, commit after seq 11 did,
-- and be invisible to a poll that saw 11. So each poll re-reads from the high-water mark of
-- `poll_overlap` polls ago and skips the changes it has already applied; L1's own duplicate
-- check is the last guard. The window's start persists in L1 (meta "poll_cursor"), because it
-- describes what L1 holds: an L1 that is wiped starts again with it.
--
-- Without one (a plain Lua L2) it asks for everything created in the last
-- `poll_frequency * poll_overlap` seconds, as the original did; backdated events are missed.
local poll = {}

local PAGE = 1000

function poll.overlap(db)
  local o = db.poll_overlap or 4
  if o < 2 then o = 4 end
  return math.floor(o)
end

-- Applies one change to L1; counts what it did in report.
local function apply(db, ch, report)
  if ch.op == "saved" then
    if ch.event and db:save_l1(ch.event, { verify = false }) then
      report.received = report.received + 1
      db:signal(ch.event, "l2")
    end
  elseif ch.op == "deleted" and ch.id then
    -- keep the tombstone: L1 decides alone while L2 is down
    if db.l1:delete_event(ch.id) then report.deleted = report.deleted + 1 end
  elseif ch.op == "replaced" and ch.id then
    db.l1:delete_event(ch.id, true)
  end
end

local function by_cursor(db, report)
  local st = db.poll_state
  if not st then
    local start = tonumber(db.l1:meta("poll_cursor") or "") or 0
    st = { marks = { start }, seen = {}, high = start }
    db.poll_state = st
  end
  local cursor, high = st.marks[1], st.high
  while true do
    local ok, changes, next_cursor = db:call_l2("changes_since", cursor, PAGE, { json = true })
    if not ok then
      report.error = changes
      return
    end
    for _, ch in ipairs(changes) do
      if not st.seen[ch.seq] then
        st.seen[ch.seq] = true
        apply(db, ch, report)
      end
      if ch.seq > high then high = ch.seq end
    end
    if #changes < PAGE then break end
    cursor = next_cursor
  end
  st.high = high
  st.marks[#st.marks + 1] = high
  while #st.marks > poll.overlap(db) do table.remove(st.marks, 1) end
  local start = st.marks[1]
  for seq in pairs(st.seen) do
    if seq <= start then st.seen[seq] = nil end -- never read again
  end
  db.l1:meta("poll_cursor", tostring(start))
end

local function by_time(db, report, now)
  local span = math.max(db.poll_frequency or 0, 1) * poll.overlap(db)
  local ok, events = db:call_l2("query_events", { since = (now or os.time()) - span }, { max_limit = 100000 })
  if not ok then
    report.error = events
    return
  end
  for _, ev in ipairs(events or {}) do apply(db, { op = "saved", event = ev }, report) end
end

-- One poll step into report (received, deleted; error when L2 could not be asked).
function poll.step(db, report, now)
  if type(db.l2.changes_since) == "function" then by_cursor(db, report) else by_time(db, report, now) end
  -- kept in L1, which every process of this node shares: /metrics in any worker sees the lag
  if not report.error then db.l1:meta("poll_at", tostring(os.time())) end
  return report
end

return poll
