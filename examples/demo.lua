-- `make run`: what layer2 does today, on a deterministic signed data set made by its own signer.
local layer2 = require("layer2")
local gen = require("layer2.gen")

local N = tonumber(arg and arg[1]) or 5000
local clock = os.clock

print(("layer2 %s on %s"):format(layer2.version, _VERSION .. (jit and (" / " .. jit.version) or "")))

local t0 = clock()
local g = gen.new({ seed = 2026, authors = 200, count = N })
local events, wire = {}, {}
for i = 1, N do
  events[i] = g:next()
  wire[i] = layer2.event.encode(events[i])
end
local t_sign = clock() - t0
print(("signed %d events with the project's signer in %.2f s (%.0f events/s)"):format(N, t_sign, N / t_sign))

t0 = clock()
local ok = 0
for i = 1, N do
  if layer2.event.verify(wire[i]) then ok = ok + 1 end
end
local t_verify = clock() - t0
print(("verified %d of %d wire events (parse + id + BIP-340) in %.2f s (%.0f events/s)"):format(ok, N, t_verify,
  N / t_verify))

local bad = wire[1]:gsub('"content":"', '"content":"tampered ', 1)
print("a tampered event is refused: " .. select(2, layer2.event.verify(bad)))
print("a malformed one too:         " .. select(2, layer2.event.verify('{"id":"xyz"}')))

local top_author = events[1].pubkey
local filters = {
  { kinds = { 1 }, limit = 5 },
  { authors = { top_author } },
  { ["#t"] = { "nostr" } },
  { kinds = { 30023 }, since = events[math.floor(N / 2)].created_at },
}
for _, f in ipairs(filters) do
  local json = require("cjson").encode(f)
  local n = 0
  for i = 1, N do
    if layer2.filter.match(f, wire[i]) then n = n + 1 end
  end
  print(("filter %-60s matches %d events"):format(json:sub(1, 60), n))
end
