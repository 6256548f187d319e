-- The throwaway PostgreSQL server of the test run (tools/pg run starts it; `make test` does):
-- a fresh database per use, and the server's stop and start for the outage specs.
local pg = {}

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

function pg.conninfo()
  local c = os.getenv("LAYER2_PG")
  if not c then error("no PostgreSQL server: run the specs under tools/pg run (make test does)", 2) end
  return c
end

function pg.dir() return os.getenv("LAYER2_PG_DIR") end

-- The shell command running SQL through psql as the server's superuser. Without the sanitizer
-- runtime the ASan suite preloads: psql (not built for it) hangs at start with it.
function pg.psql_command(sql, db)
  return ("env -u LD_PRELOAD psql -qAtX -h '%s' -U postgres -d %s -c %q"):format(pg.dir(), db or "postgres", sql)
end

-- SQL through psql; returns psql's output.
function pg.psql(sql, db)
  local p = assert(io.popen(pg.psql_command(sql, db) .. " 2>&1"))
  local out = p:read("a")
  p:close()
  return out
end

local serial = 0
-- A new, empty database; its conninfo (extra is appended, e.g. "application_name=x").
function pg.fresh(extra)
  serial = serial + 1
  local name = ("l2_%d_%d_%d"):format(os.time() % 100000, math.random(1, 1e6), serial)
  local out = pg.psql("CREATE DATABASE " .. name)
  assert(out == "", out)
  local c = pg.conninfo():gsub("dbname=%S+", "dbname=" .. name)
  return extra and (c .. " " .. extra) or c, name
end

function pg.stop() assert(sh("env -u LD_PRELOAD tools/pg stop '" .. pg.dir() .. "'"), "pg_ctl stop failed") end
function pg.start() assert(sh("env -u LD_PRELOAD tools/pg start '" .. pg.dir() .. "' >/dev/null"), "pg_ctl start failed") end

return pg
