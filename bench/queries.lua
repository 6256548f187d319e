-- The query classes the store benchmarks time (bench/store.lua, bench/postgres.lua), drawn from a
-- sample of the data set so that every run asks the same questions.
local event = require("layer2").event

local queries = {}

-- Every 50th event of the JSONL file at path, and the file's size in bytes.
function queries.sample(path)
  local bytes, sample, n = 0, {}, 0
  for line in io.lines(path) do
    n = n + 1
    bytes = bytes + #line + 1
    if n % 50 == 1 then sample[#sample + 1] = event.parse(line) end
  end
  return bytes, sample
end

local function by_count(counts)
  local list = {}
  for k, n in pairs(counts) do list[#list + 1] = { k, n } end
  table.sort(list, function(a, b) return a[2] > b[2] or (a[2] == b[2] and a[1] < b[1]) end)
  return list
end

-- { {name, make(i) -> filter or REQ}, ... }
function queries.classes(sample)
  local by_author, tags = {}, {}
  for _, ev in ipairs(sample) do
    by_author[ev.pubkey] = (by_author[ev.pubkey] or 0) + 1
    for _, t in ipairs(ev.tags) do
      if t[1] == "t" then tags[t[2]] = (tags[t[2]] or 0) + 1 end
    end
  end
  local authors, ttags = by_count(by_author), by_count(tags)
  local top, median = authors[1][1], authors[math.floor(#authors / 2)][1]
  local frequent_t, rare_t = ttags[1][1], ttags[#ttags][1]
  local first, last = sample[1].created_at, sample[#sample].created_at
  local function pick(i) return sample[(i * 7919) % #sample + 1] end
  return {
    { "1 id", function(i) return { ids = { pick(i).id } } end },
    { "100 ids", function(i)
      local ids = {}
      for k = 1, 100 do ids[k] = pick(i * 100 + k).id end
      return { ids = ids }
    end },
    { "top author", function() return { authors = { top } } end },
    { "median author", function() return { authors = { median } } end },
    { "kind 1", function() return { kinds = { 1 } } end },
    { "frequent #t", function() return { ["#t"] = { frequent_t } } end },
    { "rare #t", function() return { ["#t"] = { rare_t } } end },
    { "author + kind", function(i) return { authors = { pick(i).pubkey }, kinds = { 1, 7 } } end },
    { "time range", function(i)
      local t = first + (i * 104729) % math.max(1, last - first)
      return { since = t, ["until"] = t + 86400 }
    end },
    { "3-filter REQ", function(i)
      return { { kinds = { 0 }, authors = { pick(i).pubkey } }, { ["#e"] = { pick(i + 1).id } }, { kinds = { 1 } } }
    end },
  }
end

-- Sets every filter's limit (a REQ's too).
function queries.limit(f, limit)
  if f[1] then
    for _, g in ipairs(f) do g.limit = limit end
  else
    f.limit = limit
  end
  return f
end

function queries.percentile(v, p)
  table.sort(v)
  return v[math.max(1, math.ceil(#v * p))]
end

return queries
