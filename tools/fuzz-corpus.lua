-- Seeds the fuzzers' corpora from files of JSON events, valid and refused (the generated corpus,
-- and the real one when present): tools/fuzz-corpus.lua OUTDIR FILE...
local layer2 = require("layer2")
local out = arg[1]

local function write(dir, name, text)
  local f = assert(io.open(("%s/%s/%s"):format(out, dir, name), "wb"))
  f:write(text)
  f:close()
end

for _, d in ipairs({ "event_parse", "filter_parse", "binary_decode", "store", "negentropy", "deferred" }) do
  os.execute("mkdir -p " .. out .. "/" .. d)
end
local n, lines = 0, {}
for k = 2, #arg do
  for line in io.lines(arg[k]) do
    n = n + 1
    lines[#lines + 1] = line
    if n % 7 == 0 then write("event_parse", "e" .. n, line) end
    local bin = layer2.event.pack(line)
    if bin and n % 11 == 0 then write("binary_decode", "b" .. n, bin) end
  end
end
local filters = { '{"kinds":[1],"limit":10}', '{"ids":["' .. ("a"):rep(64) .. '"]}', '{"#e":["x","y"],"since":1}',
  '{"authors":["' .. ("b"):rep(64) .. '"],"kinds":[0,3],"until":99}', '{"#t":["nostr"],"limit":0}', "{}",
  '{"search":"q"}', '[{"kinds":[7]}]' }
for i, f in ipairs(filters) do write("filter_parse", "f" .. i, f) end
for i = 1, 40 do
  local chunk = {}
  for k = 1, 20 do chunk[k] = lines[(i * 37 + k * 101) % #lines + 1] end
  chunk[#chunk + 1] = filters[i % #filters + 1]
  write("store", "s" .. i, table.concat(chunk, "\n"))
end
-- NIP-77 messages: the first message of sessions over the corpus's events, and a reply to each
local events, seen = {}, {}
for i = 1, #lines, 3 do
  local ev = layer2.event.parse(lines[i])
  if ev and not seen[ev.id] then
    seen[ev.id] = true
    events[#events + 1] = ev
  end
end
for i, size in ipairs({ 0, 1, 31, 200, #events }) do
  local client, relay = layer2.negentropy(), layer2.negentropy(4096)
  for k = 1, math.min(size, #events) do
    assert(client:add(events[k].created_at, events[k].id))
    if k % 3 ~= 0 then assert(relay:add(events[k].created_at, events[k].id)) end
  end
  assert(client:seal())
  assert(relay:seal())
  local msg = client:initiate()
  local function bytes(hex) return (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)) end
  write("negentropy", "n" .. i, bytes(msg))
  write("negentropy", "r" .. i, bytes(assert(relay:reconcile(msg))))
end
-- A worker's kept L1 writes (fills with their bodies, remembered answers, reads), as a deferring
-- handle over a store of the corpus's events takes them
local dir = os.tmpname()
os.remove(dir)
local db = assert(layer2.open(dir, { nosync = true, log = function() end,
  l1 = { size_limit = 64 * 2 ^ 20, admit = "always" } }))
local k = 0
assert(db:import(function()
  k = k + 1
  return lines[k]
end))
local private = require("layer2.core").backend_private
private.defer_writes(db, true)
for i, f in ipairs({ { kinds = { 1 }, limit = 5 }, { ids = { events[1] and events[1].id or ("a"):rep(64) } },
  { limit = 3 } }) do
  for _ = 1, 2 do db:query_events(f) end
  local records = private.take_deferred(db, true)
  if records then write("deferred", "d" .. i, records) end
end
db:close()
os.execute("rm -rf " .. dir)

