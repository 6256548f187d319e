-- The README's Lua example runs as written.
describe("README", function()
  it("the ten-line example runs", function()
    local f = assert(io.open("README.md"))
    local text = f:read("a")
    f:close()
    local code = assert(text:match("```lua\n(.-)```"), "no lua block in README.md")
    local dir = os.tmpname()
    os.remove(dir)
    code = code:gsub('"data/mystore"', string.format("%q", dir))
    local printed = {}
    local env = setmetatable({ print = function(...) printed[#printed + 1] = table.concat({ tostring(...) }, " ") end },
      { __index = _G })
    local chunk = assert((loadstring or load)(code))
    if setfenv then setfenv(chunk, env) else chunk = assert(load(code, "README", "t", env)) end
    chunk()
    os.execute("rm -rf '" .. dir .. "'")
    assert.equal(3, #printed)
  end)
end)
