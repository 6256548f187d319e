-- The `layer2` command line tool, run as a user runs it (Lua 5.4, whichever interpreter runs the spec).
local helper = require("spec.helper")
local layer2 = require("layer2")

local run = helper.cli

local function tmp()
  local p = os.tmpname()
  os.remove(p)
  return p
end

local function ids_of_file(path)
  local ids = {}
  for line in io.lines(path) do ids[#ids + 1] = layer2.event.parse(line).id end
  table.sort(ids)
  return ids
end

describe("the layer2 command line tool", function()
  local corpus = helper.corpora()[1]
  local data, nlines = corpus.valid, corpus.counts.valid
  -- what the rules keep of it, by the reference
  local nsaved, model, now = 0, require("spec.ref").new(), os.time()
  for _, line in ipairs(helper.lines(data)) do
    local ev = layer2.event.parse(line)
    if model:save(ev, now) and not model.ephemeral(ev.kind) then nsaved = nsaved + 1 end
  end
  local nstored = model:count() -- what is left once replacements and deletions are done
  local dir

  before_each(function() dir = tmp() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'*") end)

  it("import -> export -> import into a fresh store gives the same events", function()
    local code, _, err = run(("--path %s import %s"):format(dir, data))
    assert.equal(0, code, err)
    assert.matches(("imported %d lines .*%d saved"):format(nlines, nsaved), err)
    local out1 = dir .. "-1.jsonl"
    code, _, err = run(("--path %s export --out %s"):format(dir, out1))
    assert.equal(0, code, err)
    code = run(("--path %s-b import %s --no-verify"):format(dir, out1))
    assert.equal(0, code)
    local out2 = dir .. "-2.jsonl"
    local stdout
    code, stdout = run(("--path %s-b export"):format(dir))
    assert.equal(0, code)
    local f = io.open(out2, "w")
    f:write(stdout)
    f:close()
    local a, b = ids_of_file(out1), ids_of_file(out2)
    assert.equal(nstored, #a)
    assert.same(a, b)
    os.execute("rm -rf '" .. dir .. "-b'")
  end)

  it("import --dry-run checks every line as an import would and stores nothing; a bad line makes it exit 1",
    function()
    local code, _, err = run(("--path %s import %s --dry-run"):format(dir, data))
    assert.equal(0, code, err)
    assert.matches(("checked %d lines .*: %d valid, 0 invalid; nothing stored"):format(nlines, nlines), err)
    assert.is_nil(io.open(dir), "no store is made")
    local bad = corpus.invalid
    local nbad = corpus.counts.invalid
    local first = helper.lines(bad)[1]
    code, _, err = run(("--path %s import %s --dry-run"):format(dir, bad))
    assert.equal(1, code, err)
    assert.matches(("checked %d lines .*: 0 valid, %d invalid; nothing stored"):format(nbad, nbad), err)
    assert.matches("line 1: " .. select(2, layer2.event.verify(first)):gsub("%p", "%%%0"), err)
    assert.is_nil(io.open(dir), "no store is made")
  end)

  it("scan and count agree with the library; stats, gc, check and compact work", function()
    assert.equal(0, (run(("--path %s import %s"):format(dir, data))))
    local db = assert(layer2.open(dir))
    for _, f in ipairs({ '{"kinds":[1],"limit":7}', '{"kinds":[0,3]}', '[{"kinds":[7]},{"kinds":[6],"limit":2}]' }) do
      local code, out = run(("--path %s scan '%s'"):format(dir, f))
      assert.equal(0, code)
      local lines = {}
      for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
      local want = db:query_events(f, { json = true, max_limit = 1e12 })
      assert.same(want, lines)
      local c
      code, c = run(("--path %s count '%s'"):format(dir, f))
      assert.equal(0, code)
      assert.equal(db:count_events(f), tonumber(c))
    end
    db:close()
    local code, out = run(("--path %s stats"):format(dir))
    assert.equal(0, code)
    assert.matches("events%s+" .. nstored .. " in L2", out)
    code, out = run(("--path %s stats --json"):format(dir))
    assert.equal(0, code)
    assert.equal(nstored, require("cjson").decode(out).l2.events)
    code, out = run(("--path %s gc"):format(dir))
    assert.equal(0, code)
    assert.matches("^evicted %d+", out)
    code, out = run(("--path %s check"):format(dir))
    assert.equal(0, code)
    assert.equal("ok\n", out)
    local _, err
    code, _, err = run(("--path %s compact %s-c"):format(dir, dir))
    assert.equal(0, code, err)
    local copy = assert(layer2.open(dir .. "-c"))
    assert.equal(nstored, copy:count_events({}))
    assert(copy:check())
    copy:close()
    code, _, err = run(("--path %s compact %s-c"):format(dir, dir))
    assert.equal(2, code)
    assert.matches("already holds a store", err)
    code, out = run(("--path %s nuke --yes"):format(dir))
    assert.equal(0, code)
    assert.matches("^nuked", out)
    code, out = run(("--path %s count '{}'"):format(dir))
    assert.equal(0, code)
    assert.equal("0\n", out)
  end)

  it("bad arguments: one clear line and a non-zero status", function()
    local cases = {
      { "frob", "unknown command 'frob'" },
      { "--path /nonexistent/x stats", "no store at /nonexistent/x" },
      { "import", "import needs a FILE" },
      { "import /nonexistent.jsonl", "cannot read /nonexistent.jsonl" },
      { "--path " .. dir .. " count", "a FILTER_JSON argument is needed" },
      { "--path " .. dir .. " nuke", "add %-%-yes" },
      { "export --pubkey XYZ", "%-%-pubkey takes 64 lowercase hex" },
      { "stats --frob", "stats does not take %-%-frob" },
      { "--path " .. dir .. "-pg --l2 postgres://nowhere.invalid/x import " .. data,
        "error: PostgreSQL: cannot connect: could not translate" },
      { "--l2 mysql://x import " .. data, "%-%-l2 takes a postgres:// URL or a conninfo string" },
      { "--path", "%-%-path needs a value" },
      { "export --dir up", "export does not take %-%-dir" },
    }
    -- sync's (under Lua 5.4 it runs itself again under LuaJIT: the messages come from there)
    local fresh = dir .. "-sync"
    for _, c in ipairs({
      { "sync", "sync needs the relay's URL %(ws://... or wss://...%) first" },
      { "sync http://x/ '{}'", "sync needs the relay's URL" },
      { "sync ws://127.0.0.1:1/", "sync needs a FILTER_JSON after the URL" },
      { "sync ws://127.0.0.1:1/ '[1]'", "the filter is not a JSON object: %[1%]" },
      { "sync ws://127.0.0.1:1/ 'nope'", "the filter is not a JSON object: nope" },
      { "sync ws://127.0.0.1:1/ '{}' --dir sideways", "%-%-dir is down, up or both, not sideways" },
      { "sync ws://127.0.0.1:1/ '{}' --yes", "sync does not take %-%-yes" },
      { "sync ws://127.0.0.1:1/ '{}'", "cannot connect to ws://127.0.0.1:1/" },
    }) do
      cases[#cases + 1] = { "--path " .. fresh .. " " .. c[1], c[2] }
    end
    assert.equal(0, (run(("--path %s import %s"):format(dir, data))))
    table.insert(cases, { "--path " .. dir .. " scan 'not json'", "the filter is not JSON" })
    table.insert(cases, { "--path " .. dir .. " scan '{\"kinds\":[\"x\"]}'", "invalid: kinds%[0%] must be a number" })
    for _, c in ipairs(cases) do
      local code, out, err = run(c[1])
      assert(code ~= 0, c[1])
      assert.equal("", out, c[1])
      assert.matches("^layer2: .*" .. c[2], err, c[1])
      assert.equal(1, select(2, err:gsub("\n", "")), c[1] .. ": one line")
    end
    assert.is_nil(io.open(fresh .. "/layer2/data.mdb"), "a sync refused made no store")
    local code, out = run("")
    assert.equal(2, code)
    assert.matches("^usage: layer2", out)
  end)

  it("works the same with a PostgreSQL L2 (--l2)", function()
    local l2 = ("--path %s --l2 '%s'"):format(dir, require("spec.pg").fresh())
    local code, _, err = run(("%s import %s"):format(l2, data))
    assert.equal(0, code, err)
    assert.matches(("imported %d lines .*%d saved"):format(nlines, nsaved), err)
    local out
    code, out = run(l2 .. " count '{\"kinds\":[1]}'")
    assert.equal(0, code)
    assert.equal(#model:query({ { kinds = { 1 } } }, now, 1e9) .. "\n", out)
    code, out = run(l2 .. " scan '{\"kinds\":[0],\"limit\":3}'")
    assert.equal(0, code)
    assert.equal(3, select(2, out:gsub("\n", "")))
    local pk = layer2.event.parse(out:match("^[^\n]+")).pubkey
    local whole, by_pk = dir .. "-all.jsonl", dir .. "-pk.jsonl"
    assert.equal(0, (run(("%s export --out %s"):format(l2, whole))))
    assert.equal(nstored, #ids_of_file(whole))
    assert.equal(0, (run(("%s export --pubkey %s --out %s"):format(l2, pk, by_pk))))
    local n = #ids_of_file(by_pk)
    assert(n >= 1 and n < nstored, n)
    code, out = run(l2 .. " stats")
    assert.equal(0, code)
    assert.matches("events%s+" .. nstored .. " in L2", out)
    assert.matches("MB on disk %(PostgreSQL postgresql://", out)
    code, out = run(l2 .. " check")
    assert.equal(0, code)
    assert.equal("ok\n", out)
    code, out = run(l2 .. " gc")
    assert.equal(0, code)
    assert.matches("^evicted 0", out)
    code, out = run(l2 .. " nuke --yes")
    assert.equal(0, code)
    assert.matches("^nuked", out)
    code, out = run(l2 .. " count '{}'")
    assert.equal(0, code)
    assert.equal("0\n", out)
  end)

  it("--help for every command", function()
    for _, name in ipairs({ "import", "export", "scan", "count", "stats", "gc", "check", "compact", "nuke" }) do
      local code, out = run(name .. " --help")
      assert.equal(0, code)
      assert.matches("^usage: layer2 .*" .. name, out)
    end
    local code, out = run("--help")
    assert.equal(0, code)
    assert.matches("commands:", out)
  end)

  it("shows a progress bar on a terminal, a summary line in a pipe", function()
    local code, out = run(("--path %s import %s"):format(dir, data),
      function(cmd) return ("script -q -e -c %q /dev/null"):format(cmd) end)
    assert.equal(0, code)
    assert.matches("\rimport %[[#.]+%] +%d+%%", out)
    assert.matches(("imported %d lines"):format(nlines), out)
    local _, _, err = run(("--path %s-p import %s"):format(dir, data))
    assert.not_matches("\r", err)
    assert.not_matches("%[[#.]+%]", err)
    assert.matches(("imported %d lines"):format(nlines), err)
    os.execute("rm -rf '" .. dir .. "-p'")
  end)

  it("Ctrl-C during import leaves a consistent store and says how far it got", function()
    local big = dir .. "-big.jsonl"
    local lines = helper.lines(data)
    local f = io.open(big, "w")
    -- about 170,000 lines: an import still running when the signal comes
    for _ = 1, math.ceil(170000 / #lines) do f:write(table.concat(lines, "\n"), "\n") end
    f:close()
    local code, _, err = run(("--path %s import %s"):format(dir, big), function(cmd)
      return ("%s & pid=$!; sleep 1.5; kill -INT $pid; wait $pid"):format(cmd)
    end)
    assert.equal(130, code, err)
    assert.matches("interrupted: every batch before line %d+ is stored, the store is consistent", err)
    local c2, out = run(("--path %s check"):format(dir))
    assert.equal(0, c2)
    assert.equal("ok\n", out)
    os.remove(big)
  end)
end)
