-- The `layer2` command line tool: import, export, scan, count, stats, gc, check, compact, nuke,
-- upgrade, sync.
local layer2 = require("layer2")
local cjson = require("cjson")

local cli = {}

local USAGE = [[
usage: layer2 [--path DIR] [--l2 URL] COMMAND [ARGS]

commands:
  import FILE|-        import JSON lines into the store (into L2; L1 fills on demand)
      --no-verify      trust the dump: skip id and signature checks
      --dry-run        check every line (and signature) as an import would; store nothing
  export               write every event as JSON lines to stdout
      --pubkey HEX     only events by, or tagging, this pubkey (repeatable)
      --out FILE       write to FILE instead of stdout
  scan FILTER_JSON     print the events matching a NIP-01 filter (or a JSON array of filters)
  count FILTER_JSON    print how many events match
  stats [--json]       events, stubs, bytes used / limit, horizon, outbox, hit counts
  gc                   one eviction step, drain the outbox, remove expired events
  check                verify that every index entry and every event agree
  compact OUT          write a compacted copy of the store into the directory OUT
  nuke --yes           delete every event of the store
  upgrade              rewrite a store made by an older layer2 into this one's format
  sync URL FILTER_JSON reconcile with another relay (NIP-77), then fetch what only it has
      --dir DIR        down (default): fetch; up: publish what only this store has; both
      --json           the summary as JSON

options:
  --path DIR           the store (default ./data): DIR/layer1 and DIR/layer2
  --l2 CONNINFO        a PostgreSQL L2 (postgres://user@host/db, or "host=... dbname=...");
                       L1 stays in DIR/layer1
  -h, --help           this text; `layer2 COMMAND --help` for one command
]]

local HELP = {
  import = "usage: layer2 [--path DIR] import FILE|- [--no-verify] [--dry-run]\n"
    .. "Imports JSON lines (one event each) into L2, verifying ids and signatures on two threads\n"
    .. "unless --no-verify. Shows progress on a terminal. Ctrl-C stops after a whole batch.\n"
    .. "--dry-run reads and checks every line the same way, opens no store and stores nothing;\n"
    .. "it exits 1 when a line is invalid.\n",
  export = "usage: layer2 [--path DIR] export [--pubkey HEX]... [--out FILE]\n"
    .. "Writes every event of L2 as JSON lines, or only those by, or tagging, the given pubkeys.\n",
  scan = "usage: layer2 [--path DIR] scan FILTER_JSON\nPrints the matching events as JSON lines, newest first.\n",
  count = "usage: layer2 [--path DIR] count FILTER_JSON\nPrints the number of matching events (NIP-45).\n",
  stats = "usage: layer2 [--path DIR] stats [--json]\nPrints the store's figures.\n",
  gc = "usage: layer2 [--path DIR] gc\nRuns one eviction step, drains the outbox and removes expired events.\n",
  check = "usage: layer2 [--path DIR] check\nExits 0 when the store is consistent; prints each problem otherwise.\n",
  compact = "usage: layer2 [--path DIR] compact OUT\nWrites a compacted copy of both levels into OUT.\n",
  nuke = "usage: layer2 [--path DIR] nuke --yes\nDeletes every event of both levels.\n",
  upgrade = "usage: layer2 [--path DIR] upgrade\n"
    .. "Rewrites the store at DIR (both levels, DIR/layer1 and DIR/layer2, or DIR itself when it is one\n"
    .. "LMDB store) into this layer2's format, each in one transaction: stopped or killed, a store is\n"
    .. "as it was, and upgrading again starts over. Stop whatever uses the store first.\n",
  sync = "usage: layer2 [--path DIR] sync URL FILTER_JSON [--dir down|up|both] [--json]\n"
    .. "Reconciles the events FILTER_JSON matches here with those it matches on the relay at URL (ws:// or\n"
    .. "wss://) by NIP-77 negentropy, then fetches what only the relay has (REQ by ids, 500 a batch, each\n"
    .. "batch saved in one transaction, signatures checked) and/or publishes what only this store has.\n"
    .. "Progress on a terminal, a summary line otherwise. Ctrl-C stops after a whole batch; running it\n"
    .. "again finishes the work (nothing is fetched or sent twice once it is on both sides).\n"
    .. "Runs on LuaJIT (lua-http); started under Lua 5.4 it runs itself again under luajit.\n",
}

local Fail = {}

local function fail(msg)
  error(setmetatable({ msg = msg }, Fail), 0)
end

local function isatty_stderr()
  local ok = os.execute("test -t 2")
  return ok == true or ok == 0
end

-- A progress line on stderr when it is a terminal; a one-line summary otherwise.
local function progress_bar(label, total, unit)
  local tty = isatty_stderr()
  local start, last = layer2.monotonic(), -1
  local bar = {}
  -- a line of the caller's (a function, called only when it will be shown)
  function bar.show(text)
    if not tty then return end
    local now = layer2.monotonic()
    if last >= 0 and now - last < 0.2 then return end
    last = now
    io.stderr:write("\r", label, text(now - start), "\27[K")
  end
  function bar.update(done, shown)
    bar.show(function(elapsed)
      local rate = (shown or done) / math.max(elapsed, 1e-3)
      if total and total > 0 then
        local frac = math.min(1, done / total)
        local width = 24
        local fill = math.floor(frac * width)
        local eta = frac > 0 and elapsed * (1 - frac) / frac or 0
        return (" [%s%s] %3d%%  %s  %.0f %s/s  ETA %d:%02d"):format(("#"):rep(fill), ("."):rep(width - fill),
          math.floor(frac * 100), unit == "bytes" and ("%.1f/%.1f MB"):format(done / 1e6, total / 1e6)
          or ("%d/%d"):format(done, total), rate, unit == "bytes" and "events" or unit, math.floor(eta / 60),
          math.floor(eta % 60))
      end
      return ("  %d %s  %.0f/s"):format(done, unit, rate)
    end)
  end
  function bar.note(msg)
    io.stderr:write(tty and "\r\27[K" or "", msg, "\n")
  end
  function bar.finish(summary)
    if tty then io.stderr:write("\r\27[K") end
    io.stderr:write(summary, "\n")
  end
  function bar.elapsed() return layer2.monotonic() - start end
  return bar
end

local function parse_args(argv)
  local opts = { path = "./data", rest = {}, flags = {}, pubkeys = {} }
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--path" or a == "--l2" or a == "--pubkey" or a == "--out" or a == "--dir" then
      local v = argv[i + 1]
      if not v then fail(a .. " needs a value") end
      if a == "--pubkey" then opts.pubkeys[#opts.pubkeys + 1] = v else opts[a:sub(3)] = v end
      i = i + 2
    elseif a == "-h" or a == "--help" then
      opts.help = true
      i = i + 1
    elseif a:sub(1, 2) == "--" then
      opts.flags[a:sub(3)] = true
      i = i + 1
    else
      opts.rest[#opts.rest + 1] = a
      i = i + 1
    end
  end
  return opts
end

local KNOWN_FLAGS = { import = { ["no-verify"] = true, ["dry-run"] = true }, stats = { json = true }, nuke = { yes = true },
  sync = { json = true } }

local function open_store(opts, must_exist)
  if opts.l2 and not (opts.l2:match("^postgres") or opts.l2:find("=", 1, true)) then
    fail("--l2 takes a postgres:// URL or a conninfo string (\"host=... dbname=...\")")
  end
  if must_exist and not opts.l2 then
    local f = io.open(opts.path .. "/layer2/data.mdb")
    if not f then fail("no store at " .. opts.path .. " (import into it first, or give --path)") end
    f:close()
  end
  local db, err = layer2.open(opts.path, { l2 = opts.l2, log = function(m) io.stderr:write("layer2: ", m, "\n") end })
  if not db then fail(err) end
  return db
end

local function filter_arg(opts)
  local f = opts.rest[2]
  if not f then fail("a FILTER_JSON argument is needed, e.g. '{\"kinds\":[1],\"limit\":10}'") end
  local ok, parsed = pcall(cjson.decode, f)
  if not ok or type(parsed) ~= "table" then fail("the filter is not JSON: " .. tostring(f)) end
  return f
end

local commands = {}

function commands.import(opts)
  local src = opts.rest[2]
  if not src then fail("import needs a FILE, or - for standard input") end
  local total, source
  if src == "-" then
    source = io.stdin
  else
    local f = io.open(src, "rb")
    if not f then fail("cannot read " .. src) end
    total = f:seek("end")
    f:close()
    source = src
  end
  local dry = opts.flags["dry-run"]
  local db = not dry and open_store(opts)
  local bar = progress_bar(dry and "check" or "import", total, "bytes")
  local lines_done, refused = 0, 0
  local import_opts = {
    verify = not opts.flags["no-verify"],
    progress = function(lines, bytes)
      lines_done = lines
      bar.update(bytes, lines)
    end,
    on_refused = function(line, msg)
      refused = refused + 1
      if refused <= 5 then bar.note(("line %d: %s"):format(line, msg)) end
    end,
  }
  local ok, counts, err
  if dry then
    ok, counts, err = pcall(layer2.event.check_lines, source, import_opts)
  else
    ok, counts, err = pcall(db.import, db, source, import_opts)
    db:close()
  end
  if not ok then
    if tostring(counts):match("interrupted") then
      bar.finish(dry and ("interrupted after line %d"):format(lines_done) or
        ("interrupted: every batch before line %d is stored, the store is consistent"):format(lines_done + 1))
      return 130
    end
    error(counts, 0)
  end
  if not counts then fail(err) end
  local head = ("%s %d lines in %.1f s (%.0f lines/s): "):format(dry and "checked" or "imported", counts.lines,
    bar.elapsed(), counts.lines / math.max(bar.elapsed(), 1e-3))
  if dry then
    bar.finish(head .. ("%d valid, %d invalid; nothing stored"):format(counts.valid, counts.invalid))
    return counts.invalid > 0 and 1 or 0
  end
  bar.finish(head .. ("%d saved, %d duplicate, %d replaced, %d deleted, %d blocked, %d ephemeral, %d invalid"):format(
    counts.saved, counts.duplicate, counts.replaced, counts.deleted, counts.blocked, counts.ephemeral, counts.invalid))
  return 0
end

function commands.export(opts)
  for _, pk in ipairs(opts.pubkeys) do
    if not pk:match("^%x+$") or #pk ~= 64 or pk:find("%u") then fail("--pubkey takes 64 lowercase hex characters") end
  end
  local db = open_store(opts, true)
  local out = io.stdout
  if opts.out then
    out = io.open(opts.out, "w")
    if not out then fail("cannot write " .. opts.out) end
  end
  local total = db.l2:stats().events
  local bar = progress_bar("export", #opts.pubkeys == 0 and total or nil, "events")
  local n, err = db:export(out, #opts.pubkeys > 0 and opts.pubkeys or nil, {
    progress = function(done) bar.update(done) end,
  })
  if opts.out then out:close() else out:flush() end
  db:close()
  if not n then fail(err) end
  bar.finish(("exported %d events in %.1f s"):format(n, bar.elapsed()))
  return 0
end

function commands.scan(opts)
  local f = filter_arg(opts)
  local db = open_store(opts, true)
  local res, err = db:query_events(f, { json = true, max_limit = 1e12 })
  db:close()
  if not res then fail(err) end
  for _, line in ipairs(res) do io.stdout:write(line, "\n") end
  return 0
end

function commands.count(opts)
  local f = filter_arg(opts)
  local db = open_store(opts, true)
  local n, err = db:count_events(f)
  db:close()
  if not n then fail(err) end
  print(n)
  return 0
end

function commands.stats(opts)
  local db = open_store(opts, true)
  local st = db:stats()
  if opts.flags.json then
    db:close()
    print(cjson.encode(st))
    return 0
  end
  local l1, l2 = st.l1, st.l2 or {}
  print(("events      %d in L2, %d in L1 (%d stubs)"):format(l2.events or 0, l1.events, l1.stubs))
  print(("L1 bytes    %.1f MB used of %s (file %.1f MB)"):format(l1.used_bytes / 1e6,
    st.size_limit and ("%.1f MB"):format(st.size_limit / 1e6) or "no limit", l1.file_bytes / 1e6))
  if l2.disk_bytes then
    print(("L2 bytes    %.1f MB on disk (PostgreSQL %s)"):format(l2.disk_bytes / 1e6, db.l2:path()))
  else
    print(("L2 bytes    %.1f MB used (file %.1f MB)"):format((l2.used_bytes or 0) / 1e6, (l2.file_bytes or 0) / 1e6))
  end
  print(("horizon     %d"):format(st.horizon))
  print(("outbox      %d"):format(st.outbox))
  print(("hits        l1 %d, stubs %d, l2 %d, known missing %d, remembered answers %d (this process)"):format(
    st.hits.l1, st.hits.stubs, st.hits.l2, st.hits.missing, st.hits.answers))
  print(("policy      %s"):format(st.policy))
  db:close()
  return 0
end

function commands.gc(opts)
  local db = open_store(opts, true)
  local r = db:gc(true)
  local expired = assert(db:sweep())
  db:close()
  print(("evicted %d, stubs removed %d, outbox sent %d, expired removed %d"):format(r.evicted, r.dropped,
    r.sent or 0, expired))
  return 0
end

function commands.check(opts)
  local db = open_store(opts, true)
  local ok, problems = db:check()
  db:close()
  if ok then
    print("ok")
    return 0
  end
  for _, p in ipairs(problems) do io.stderr:write(p, "\n") end
  io.stderr:write(("layer2: %d problems found\n"):format(#problems))
  return 1
end

function commands.compact(opts)
  local out = opts.rest[2]
  if not out then fail("compact needs an OUT directory") end
  local db = open_store(opts, true)
  -- a PostgreSQL L2 is the server's to compact (VACUUM); L1 is copied either way
  local levels = db.own_l2 and db.l2.copy and { "layer1", "layer2" } or { "layer1" }
  local total = 0
  for _, level in ipairs(levels) do total = total + (level == "layer1" and db.l1 or db.l2):stats().used_bytes end
  local bar = progress_bar("compact", total, "bytes")
  local written = 0
  for _, level in ipairs(levels) do
    local store = level == "layer1" and db.l1 or db.l2
    local base = written
    local n, err = store:copy(out .. "/" .. level, { progress = function(b) bar.update(base + b) end })
    if not n then
      db:close()
      fail(err)
    end
    written = written + n
  end
  db:close()
  bar.finish(("compacted into %s: %.1f MB in %.1f s"):format(out, written / 1e6, bar.elapsed()))
  return 0
end

function commands.nuke(opts)
  if not opts.flags.yes then fail("nuke deletes every event: add --yes to do it") end
  local db = open_store(opts, true)
  local ok, err = db:nuke()
  db:close()
  if not ok then fail(err) end
  print("nuked " .. opts.path)
  return 0
end

function commands.upgrade(opts)
  local stores = {}
  for _, level in ipairs({ "layer1", "layer2" }) do
    local f = io.open(opts.path .. "/" .. level .. "/data.mdb")
    if f then
      f:close()
      stores[#stores + 1] = opts.path .. "/" .. level
    end
  end
  if #stores == 0 then stores[1] = opts.path end
  for _, path in ipairs(stores) do
    local bar = progress_bar("upgrade " .. path, nil, "events")
    local n, already = layer2.lmdb.upgrade(path, { progress = function(done)
      bar.update(done)
    end })
    if not n then fail(already) end
    bar.finish(already and ("%s: already in this format"):format(path)
      or ("%s: upgraded, %d events re-indexed in %.1f s"):format(path, n, bar.elapsed()))
  end
  return 0
end

-- lua-http, the websocket client, is packaged by Debian for LuaJIT and Lua 5.1 to 5.3, not for 5.4:
-- under 5.4 the command runs again under luajit, with the LuaJIT build of the module beside this one.
local function sync_under_luajit(argv)
  local core = package.searchpath("layer2.core", package.cpath) or ""
  local jit_core = core:gsub("/lua5%.4/layer2/core%.so$", "/luajit/layer2/core.so")
  local f = jit_core ~= core and io.open(jit_core)
  if not f then
    fail("sync needs lua-http, which Debian packages for LuaJIT, not Lua 5.4: run it as "
      .. "`luajit $(command -v layer2) sync ...` with layer2 built for LuaJIT (make builds both)")
  end
  f:close()
  local lua_dir = package.searchpath("layer2.cli", package.path):gsub("/layer2/cli%.lua$", "")
  -- this module's directories first, then LuaJIT's own defaults (";;")
  local path = lua_dir .. "/?.lua;" .. lua_dir .. "/?/init.lua;;"
  local cpath = jit_core:gsub("/layer2/core%.so$", "") .. "/?.so;;"
  local function q(v) return "'" .. tostring(v):gsub("'", "'\\''") .. "'" end
  local cmd = { "LUA_PATH=" .. q(path), "LUA_CPATH=" .. q(cpath), "luajit", q(arg and arg[0] or "layer2") }
  for _, a in ipairs(argv) do cmd[#cmd + 1] = q(a) end
  local ok, how, code = os.execute(table.concat(cmd, " "))
  if how == "signal" then return 128 + code end
  return ok and 0 or code
end

-- lua-http 0.4, Debian 12's websocket client, loaded with three lines changed:
-- - it reads a frame of 126 to 65,535 bytes only when all of it has arrived by the time its
--   header is read (lua-http issue #140: the payload is not waited for and the read fails as
--   "timed out"); over a network such frames often come in pieces. Fixed as its pull request
--   #197 does.
-- - it checks each text frame's UTF-8 and masks each frame it sends a byte at a time in Lua:
--   most of the time of a sync. layer2's C does both (layer2.core.websocket).
-- A lua-http whose lines differ is loaded as it is, without the change that no longer applies.
local WEBSOCKET_PATCHES = {
  { "(\n%s*fill_length = fill_length %- 2)(\n)", "%1 + frame.length%2" },
  { "\nlocal function validate_utf8%(s%)\n",
    "\nlocal validate_utf8 = require(\"layer2.core\").websocket.utf8\nlocal function validate_utf8_in_lua(s)\n" },
  { "\nlocal function apply_mask%(str, key%)\n",
    "\nlocal apply_mask = require(\"layer2.core\").websocket.mask\nlocal function apply_mask_in_lua(str, key)\n" },
}

local function websocket_module()
  local path = package.searchpath("http.websocket", package.path)
  local f = path and io.open(path)
  if not f then return require("http.websocket") end
  local source = f:read("a")
  f:close()
  for _, p in ipairs(WEBSOCKET_PATCHES) do
    local patched, n = source:gsub(p[1], p[2])
    if n == 1 then source = patched end
  end
  package.loaded["http.websocket"] = assert(load(source, "@" .. path))("http.websocket")
  return package.loaded["http.websocket"]
end

local function ws_connect(url, timeout)
  local websocket = websocket_module()
  local ok, ws = pcall(websocket.new_from_uri, url)
  if not ok then fail(("%s is not a websocket URL (ws:// or wss://): %s"):format(url, tostring(ws))) end
  local connected, err = ws:connect(timeout)
  if not connected then fail(("cannot connect to %s: %s"):format(url, tostring(err))) end
  return {
    send = function(text) return ws:send(text) end,
    receive = function(t)
      while true do
        local data, opcode_or_err = ws:receive(t)
        if not data then return nil, opcode_or_err end
        if opcode_or_err == "text" then return data end
      end
    end,
    close = function() ws:close(nil, nil, 1) end,
  }
end

function commands.sync(opts, argv)
  local ok_http = pcall(require, "http.websocket")
  if not ok_http and not jit then return sync_under_luajit(argv) end
  if not ok_http then fail("sync needs lua-http (Debian: apt install lua-http)") end
  local url, filter_json = opts.rest[2], opts.rest[3]
  if not url or not url:match("^wss?://") then fail("sync needs the relay's URL (ws://... or wss://...) first") end
  if not filter_json then fail("sync needs a FILTER_JSON after the URL, e.g. '{\"kinds\":[1]}' ('{}': everything)") end
  local okf, filter = pcall(cjson.decode, filter_json)
  if not okf or type(filter) ~= "table" or filter[1] ~= nil then
    fail("the filter is not a JSON object: " .. filter_json)
  end
  local dir = opts.dir or "down"
  if dir ~= "down" and dir ~= "up" and dir ~= "both" then fail("--dir is down, up or both, not " .. dir) end
  local conn = ws_connect(url, 10)
  local db = open_store(opts)
  local bar = progress_bar("sync", nil, "events")
  local st = require("layer2.sync").new_stats()
  local function summary()
    return ("%s %s: %d items here, %d only here, %d only there, %d round trips; fetched %d (%d saved, %d duplicate, "
      .. "%d refused, %d gone there since), published %d (%d refused, %d gone here since); %d bytes sent, %d received, "
      .. "%.1f s"):format(dir, url, st.items, st.have, st.need, st.rounds, st.fetched, st.saved, st.duplicate,
      st.refused, st.missing, st.published, st.publish_refused, st.gone, st.bytes_sent, st.bytes_received,
      bar.elapsed())
  end
  local ok, err = pcall(require("layer2.sync").run, db, conn, filter, {
    dir = dir, stats = st,
    notice = function(text) bar.note("NOTICE from the relay: " .. text) end,
    progress = function()
      bar.show(function()
        return ("  round %d, %d only here, %d only there; fetched %d, published %d"):format(st.rounds, st.have, st.need,
          st.fetched, st.published)
      end)
    end,
  })
  pcall(conn.close)
  db:close()
  st.seconds = bar.elapsed()
  if not ok then
    if tostring(err):match("interrupted") then
      bar.finish("interrupted: every batch fetched before is stored; run the same command again to finish\n"
        .. summary())
      return 130
    end
    bar.finish(summary())
    fail(tostring(err))
  end
  bar.finish(summary())
  if opts.flags.json then
    st.notices = nil
    print(cjson.encode(st))
  end
  return 0
end

function cli.main(argv)
  local ok, code = pcall(function()
    local opts = parse_args(argv or {})
    local name = opts.rest[1]
    if not name then
      io.stdout:write(USAGE)
      return opts.help and 0 or 2
    end
    if not commands[name] then fail("unknown command '" .. name .. "' (layer2 --help lists them)") end
    if opts.help then
      io.stdout:write(HELP[name])
      return 0
    end
    for flag in pairs(opts.flags) do
      if not (KNOWN_FLAGS[name] or {})[flag] then fail(("%s does not take --%s"):format(name, flag)) end
    end
    if opts.dir and name ~= "sync" then fail(name .. " does not take --dir") end
    return commands[name](opts, argv)
  end)
  if ok then return code end
  if getmetatable(code) == Fail then
    io.stderr:write("layer2: ", code.msg, "\n")
    return 2
  end
  io.stderr:write("layer2: ", tostring(code), "\n")
  return 1
end

return cli
