-- The `learned` file beside L1 (csrc/learned.c) against what a shared directory can hold: a
-- symbolic or hard link, a file of another user or anyone's to write, a file of another layout
-- that a live process still maps, a full filesystem. Each is a clear error or a safe
-- replacement: nothing outside the directory is written, no process dies of SIGBUS.
local layer2 = require("layer2")
local helper = require("spec.helper")

local function quiet() end
local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end
local function size_of(path) return #assert(read(path)) end

-- A store opened and closed once: its L1 folder (where `learned` is) exists.
local function made(opts)
  local dir = helper.tmpdir()
  local db = assert(layer2.open(dir, opts or { log = quiet }))
  db:close()
  return dir, dir .. "/layer1/learned"
end

local function refused(dir, pattern, opts)
  local db, err = layer2.open(dir, opts or { log = quiet })
  if db then db:close() end
  assert.is_nil(db)
  assert.matches(pattern, err)
end

local root = io.popen("id -u"):read("l") == "0"

describe("the learned file", function()
  it("is sized from L1's size_limit, at most a thirty-second of it, and kept at the size it was made", function()
    local dir, path = made({ l1 = { size_limit = 2 * 1024 * 1024 }, log = quiet })
    local small = size_of(path)
    assert.is_true(small <= 2 * 1024 * 1024 / 32, tostring(small))
    local db = assert(layer2.open(dir, { log = quiet }))
    db:close()
    assert.equal(small, size_of(path))
    helper.rmdir(dir)
    local _, big_path = made()
    assert.is_true(size_of(big_path) > 1000000, tostring(size_of(big_path)))
  end)

  it("is never opened through a symbolic link: the link's target is left as it was", function()
    local dir, path = made()
    local target = os.tmpname()
    write(target, "precious")
    os.remove(path)
    assert(os.execute(("ln -s '%s' '%s'"):format(target, path)))
    refused(dir, "^error: '.*/learned' is a symbolic link, which layer2 does not follow: remove it$")
    assert.equal("precious", read(target))
    os.remove(target)
    helper.rmdir(dir)
  end)

  it("refuses a hard link, a file anyone may write and, as root, another user's file", function()
    local dir, path = made()
    local other = path .. ".other"
    assert(os.execute(("ln '%s' '%s'"):format(path, other)))
    refused(dir, "^error: '.*/learned' has 2 hard links, so it may be another file's: remove it$")
    os.remove(other)
    assert(os.execute(("chmod 666 '%s'"):format(path)))
    refused(dir, "^error: '.*/learned' is writable by anyone %(mode 666%): remove it or chmod o%-w$")
    assert(os.execute(("chmod 644 '%s'"):format(path)))
    if root then
      assert(os.execute(("chown 12345 '%s'"):format(path)))
      refused(dir, "^error: '.*/learned' belongs to uid 12345, neither this process's %(0%) nor its directory's %(0%)$")
      assert(os.execute(("chown 0 '%s'"):format(path)))
    end
    local db = assert(layer2.open(dir, { log = quiet }))
    db:close()
    helper.rmdir(dir)
  end)

  it("replaces a file of another layout without truncating it under a process that maps it", function()
    local dir, path = made()
    -- an older build's file: another magic, another size, every byte 1 after the header
    local old_size = 500000
    write(path, "l2lrnd03" .. ("\1"):rep(old_size - 8))
    local flag = os.tmpname()
    os.remove(flag)
    -- a process mapping it (LuaJIT's FFI), which reads and writes every page once told to: a
    -- truncated file would kill it with SIGBUS
    local child = os.tmpname()
    write(child, [[
local ffi = require("ffi")
ffi.cdef("int open(const char *, int, ...); void *mmap(void *, size_t, int, int, int, long); int usleep(unsigned);")
local path, size, flag = arg[1], tonumber(arg[2]), arg[3]
local p = ffi.cast("uint8_t *", ffi.C.mmap(nil, size, 3, 1, ffi.C.open(path, 2), 0))
io.open(flag .. ".ready", "w"):close()
while not io.open(flag) do ffi.C.usleep(10000) end
for i = 4096, size - 1, 4096 do
  if p[i] ~= 1 then os.exit(3) end
  p[i] = 2
end
os.exit(0)
]])
    local done = os.tmpname()
    assert(os.execute(("(luajit '%s' '%s' %d '%s'; echo $? > '%s.rc') &"):format(child, path, old_size, flag, done)))
    while not read(flag .. ".ready") do os.execute("sleep 0.05") end
    local db = assert(layer2.open(dir, { log = quiet }))
    assert.is_true(size_of(path) > 1000000)
    write(flag, "go")
    while not read(done .. ".rc") do os.execute("sleep 0.05") end
    assert.equal("0", read(done .. ".rc"):match("%d+"))
    db:close()
    for _, f in ipairs({ child, flag, flag .. ".ready", done, done .. ".rc" }) do os.remove(f) end
    helper.rmdir(dir)
  end)

  local full_fs = root and os.execute("command -v mount >/dev/null") and it or pending
  full_fs("on a full filesystem is an error at open, not a SIGBUS later; nothing is left half made", function()
    local mnt = helper.tmpdir()
    assert(os.execute(("mkdir -p '%s' && mount -t tmpfs -o size=512k tmpfs '%s'"):format(mnt, mnt)))
    finally(function() os.execute(("umount '%s'"):format(mnt)) helper.rmdir(mnt) end)
    refused(mnt .. "/store", "^error: cannot reserve %d+ bytes for '.*/learned': No space left on device$")
    local p = io.popen(("ls -a '%s/store/layer1'"):format(mnt))
    local names = {}
    for name in p:lines() do names[#names + 1] = name end
    p:close()
    for _, name in ipairs(names) do assert.is_nil(name:match("^learned"), name) end
    -- with room for it (a small L1's file) the same place opens
    local db = assert(layer2.open(mnt .. "/store", { l1 = { size_limit = 1024 * 1024 }, log = quiet }))
    db:close()
  end)
end)
