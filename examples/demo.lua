-- `make demo`: what layer2 does, on a deterministic signed data set made by its own signer:
-- sign, verify, store in LMDB, query, delete, replace, count, check.
local layer2 = require("layer2")
local gen = require("layer2.gen")
local cjson = require("cjson")

local N = tonumber(arg and arg[1]) or 5000
local dir = (arg and arg[2]) or "data/demo"
local clock = os.clock

print(("layer2 %s on %s"):format(layer2.version, _VERSION .. (jit and (" / " .. jit.version) or "")))

local t0 = clock()
local g = gen.new({ seed = 2026, authors = 200, count = N })
local events, wire = {}, {}
for i = 1, N do
  events[i] = g:next()
  wire[i] = layer2.event.encode(events[i])
end
print(("signed %d events with the project's signer in %.2f s"):format(N, clock() - t0))

os.execute("rm -rf '" .. dir .. "'")
local db = assert(layer2.lmdb.open(dir))
t0 = clock()
local half = math.floor(N / 2)
for i = 1, half do db:save_event(wire[i]) end
local t_save = clock() - t0
local k = half
t0 = clock()
local counts = assert(db:import(function()
  k = k + 1
  return wire[k]
end))
print(("saved %d events one by one (%.0f/s of CPU, each a durable transaction), imported %d in batches (%.0f/s)"):format(
  half, half / t_save, N - half, (N - half) / (clock() - t0)))
print(("  import counts: %s"):format(cjson.encode(counts)))

print("a tampered event is refused: " .. select(2, db:save_event((wire[1]:gsub('"content":"', '"content":"x', 1)))))
print("a duplicate too:             " .. select(2, db:save_event(wire[2])))

local top_author = events[1].pubkey
local queries = {
  { kinds = { 1 }, limit = 5 },
  { authors = { top_author }, limit = 20 },
  { ["#t"] = { "nostr" }, limit = 10 },
  { { kinds = { 0 }, limit = 3 }, { kinds = { 30023 }, limit = 3 } },
}
for _, q in ipairs(queries) do
  t0 = clock()
  local res = assert(db:query_events(q, { json = true }))
  print(("query %-60s -> %3d events in %4.0f µs, newest %s"):format(cjson.encode(q):sub(1, 60), #res,
    (clock() - t0) * 1e6, res[1] and layer2.event.parse(res[1]).id:sub(1, 12) or "-"))
end

local victim = events[3]
local other = g.pubkeys[1] ~= victim.pubkey and g.keys[1] or g.keys[2]
local del = assert(layer2.event.sign({ kind = 5, created_at = victim.created_at + 1, tags = { { "e", victim.id } },
  content = "" }, other))
print(("a NIP-09 deletion by another author leaves the event: %s; count by id now %d"):format(
  tostring(db:save_event(del)), db:count_events({ ids = { victim.id } })))

print(("store: %d events, %d index entries, %.1f MB on disk, check: %s"):format(db:stats().events,
  db:stats().index_entries, db:stats().file_bytes / 1e6, db:check() and "clean" or "PROBLEMS"))
db:close()
print("the store is in " .. dir .. "; run `make run` again to rebuild it")
