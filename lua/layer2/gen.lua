-- Deterministic, signed, realistic nostr events for demos, tests and benchmarks, made with the
-- project's own signer. The same seed gives the same events under Lua 5.4 and LuaJIT.
--
--   local gen = require("layer2.gen").new({ seed = 1, authors = 2000 })
--   local ev = gen:next()      -- a signed event table
--
-- Shape (after the benchmark brief): authors Zipf-like; kinds about 68 % 1, 12 % 7, 5 % 6,
-- 5 % 30023 (with `d` tags, some re-edited), 4 % 10002, 3 % 0, 3 % 3; e/p/t tags; content
-- 20-1,000 bytes; created_at spread over `span` seconds from `start`.
local core = require("layer2.core")

local gen = {}
gen.__index = gen

local WORDS = {
  "nostr", "relay", "zap", "note", "bitcoin", "lightning", "key", "signal", "layer", "cache", "event",
  "the", "a", "of", "and", "to", "in", "is", "it", "you", "that", "for", "on", "with", "as", "this",
  "gm", "pura", "vida", "freedom", "protocol", "client", "market", "music", "photo", "coffee", "dev",
  "lua", "nginx", "store", "fast", "small", "open", "world", "today", "tomorrow", "build", "ship",
}
local TOPICS = { "nostr", "bitcoin", "photography", "music", "dev", "news", "art", "food", "travel", "zaps" }
for i = #TOPICS + 1, 500 do TOPICS[i] = "topic" .. i end -- a long tail of rare hashtags

-- Park-Miller: exact in integer and double arithmetic alike
local function rng(seed)
  local state = seed % 2147483646 + 1
  return function()
    state = state * 16807 % 2147483647
    return state
  end
end

local function hex64(next_int)
  local parts = {}
  for i = 1, 8 do parts[i] = ("%08x"):format(next_int() % 4294967296) end
  return table.concat(parts)
end

function gen.new(opts)
  opts = opts or {}
  local self = setmetatable({}, gen)
  self.next_int = rng(opts.seed or 1)
  self.start = opts.start or 1700000000
  self.span = opts.span or 365 * 86400
  self.total = opts.count or 100000
  self.n = 0
  self.aux = ("00"):rep(32)
  local nauthors = opts.authors or 2000
  self.keys, self.pubkeys = {}, {}
  for i = 1, nauthors do
    local sec, pub
    repeat
      sec = hex64(self.next_int)
      pub = core.schnorr.pubkey(sec)
    until pub
    self.keys[i], self.pubkeys[i] = sec, pub
  end
  -- Zipf-like: a few very active authors and popular hashtags, long tails of both
  self.author_weights = gen.zipf(nauthors, 1.1)
  self.topic_weights = gen.zipf(#TOPICS, 1.0)
  self.recent = {} -- ids to reply to
  self.articles = {} -- {author index, d} of addressable events, re-edited later
  return self
end

function gen:uniform(n) -- 1..n
  return self.next_int() % n + 1
end

function gen:fraction()
  return self.next_int() / 2147483647
end

-- cumulative weights 1/i^s for i = 1..n
function gen.zipf(n, s)
  local cumulative, sum = {}, 0
  for i = 1, n do
    sum = sum + 1 / i ^ s
    cumulative[i] = sum
  end
  return cumulative
end

-- an index drawn from cumulative weights
function gen:draw(cumulative)
  local x = self:fraction() * cumulative[#cumulative]
  local lo, hi = 1, #cumulative
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cumulative[mid] < x then lo = mid + 1 else hi = mid end
  end
  return lo
end

function gen:author()
  return self:draw(self.author_weights)
end

function gen:topic()
  return TOPICS[self:draw(self.topic_weights)]
end

function gen:text(min, max)
  local want = min + self:uniform(max - min + 1) - 1
  local words, len = {}, 0
  while len < want do
    local w = WORDS[self:uniform(#WORDS)]
    words[#words + 1] = w
    len = len + #w + 1
  end
  return table.concat(words, " "):sub(1, want)
end

function gen:kind()
  local r = self:uniform(100)
  if r <= 68 then return 1 end
  if r <= 80 then return 7 end
  if r <= 85 then return 6 end
  if r <= 90 then return 30023 end
  if r <= 94 then return 10002 end
  if r <= 97 then return 0 end
  return 3
end

-- The next signed event (a Lua table).
function gen:next()
  self.n = self.n + 1
  local author = self:author()
  local kind = self:kind()
  -- mostly in order, sometimes backdated by up to a day
  local created_at = self.start + math.floor(self.n * self.span / self.total)
  if self:uniform(10) == 1 then created_at = created_at - self:uniform(86400) end
  local tags, content = {}
  local recent = self.recent
  if kind == 1 then
    content = self:text(20, 1000)
    if #recent > 0 and self:uniform(3) == 1 then
      local target = recent[self:uniform(#recent)]
      tags[#tags + 1] = { "e", target[1], "", "reply" }
      tags[#tags + 1] = { "p", target[2] }
    end
    for _ = 1, self:uniform(3) - 1 do tags[#tags + 1] = { "t", self:topic() } end
  elseif kind == 7 or kind == 6 then
    content = kind == 7 and "+" or ""
    if #recent > 0 then
      local target = recent[self:uniform(#recent)]
      tags[#tags + 1] = { "e", target[1] }
      tags[#tags + 1] = { "p", target[2] }
    end
  elseif kind == 30023 then
    local d
    if #self.articles > 0 and self:uniform(4) == 1 then
      local a = self.articles[self:uniform(#self.articles)] -- a re-edit
      author, d = a[1], a[2]
    else
      d = "article-" .. self.n
      self.articles[#self.articles + 1] = { author, d }
    end
    tags[#tags + 1] = { "d", d }
    tags[#tags + 1] = { "title", self:text(10, 60) }
    tags[#tags + 1] = { "t", self:topic() }
    content = self:text(300, 1000)
  elseif kind == 10002 then
    content = ""
    for i = 1, 2 + self:uniform(4) do tags[#tags + 1] = { "r", "wss://relay" .. i .. ".example.com" } end
  elseif kind == 0 then
    content = ('{"name":"user%d","about":"%s"}'):format(author, self:text(10, 200))
  else -- 3: a follow list
    content = ""
    for _ = 1, 5 + self:uniform(40) do tags[#tags + 1] = { "p", self.pubkeys[self:author()] } end
  end
  local ev = assert(core.event.sign({ created_at = created_at, kind = kind, tags = tags, content = content },
    self.keys[author], self.aux))
  if kind == 1 then
    recent[(#recent < 1000) and (#recent + 1) or self:uniform(1000)] = { ev.id, ev.pubkey }
  end
  return ev
end

return gen
