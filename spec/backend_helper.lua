-- What the backend specs (spec/backend*_spec.lua) share: a two-level store over an LMDB L2,
-- L2s that fail or hide changes, random filters.
local layer2 = require("layer2")
local helper = require("spec.helper")

local M = {}

M.NOW = 1760000000 -- past the generated events, before the machine's clock (future_limit)
M.MiB = 1024 * 1024

function M.quiet() end

-- An L2 that fails while link.down, by raising or by refusing with error:
function M.flaky_l2(real, link)
  return setmetatable({}, { __index = function(_, name)
    return function(_, ...)
      if link.down then
        if name == "save_event" then error("connection refused") end
        return nil, "error: L2 is unreachable"
      end
      return real[name](real, ...)
    end
  end })
end

-- random filters drawn from the events themselves (see the LMDB brute-force spec)
function M.random_filter(events, rand)
  local function pick() return events[rand(#events)] end
  local f = {}
  for _ = 1, rand(2) do
    local which = rand(7)
    if which == 1 then f.ids = { pick().id, pick().id }
    elseif which == 2 then f.authors = { pick().pubkey }
    elseif which == 3 then f.kinds = { pick().kind }
    elseif which == 4 then f.since = pick().created_at
    elseif which == 5 then f["until"] = pick().created_at
    else
      local e = pick()
      for _, t in ipairs(e.tags) do
        if #t[1] == 1 and t[2] then
          f["#" .. t[1]] = { t[2] }
          break
        end
      end
    end
  end
  if rand(3) > 1 then f.limit = rand(30) end
  return f
end

-- A two-level backend at a new directory over an LMDB L2 beside it, and what closes and removes both.
function M.two_levels(l1opts)
  local dir = helper.tmpdir()
  local l2 = assert(layer2.lmdb.open(dir .. "-l2", { nosync = true }))
  local db = assert(layer2.open(dir, { l2 = l2, nosync = true, log = M.quiet, l1 = l1opts }))
  return db, function()
    db:close()
    l2:close()
    helper.rmdir(dir)
    helper.rmdir(dir .. "-l2")
  end
end

-- an L2 table over an LMDB store: the store methods pass through; `hide` makes changes
-- invisible, as a transaction that took its sequence number but has not committed yet is
function M.wrapped_l2(store, with_feed)
  local l2 = { hidden = {} }
  for _, m in ipairs({ "save_event", "query_events", "count_events", "delete_event", "import", "export", "nuke",
    "sync", "path", "close", "stats" }) do
    l2[m] = function(_, ...) return store[m](store, ...) end
  end
  if with_feed then
    l2.changes_since = function(self, cursor, max, opts)
      local all = store:changes_since(cursor, max, opts)
      local out = {}
      for _, ch in ipairs(all) do
        if self.hidden[ch.seq] then break end -- nothing after an uncommitted one is final either
        out[#out + 1] = ch
      end
      return out, out[#out] and out[#out].seq or cursor
    end
  end
  return l2
end

return M
