-- The README's Lua example runs as written and prints what its comments say: each `print` line's
-- `--> a  b` comment lists the values printed, two spaces apart (a remark in parentheses after
-- them is not a value).
describe("README", function()
  it("the ten-line example runs and prints the values its comments show", function()
    local f = assert(io.open("README.md"))
    local text = f:read("a")
    f:close()
    local code = assert(text:match("```lua\n(.-)```"), "no lua block in README.md")
    local want = {}
    for line in code:gmatch("[^\n]+") do
      local shown = line:match("^%s*print%(.*%-%->%s*(.-)%s*$")
      if shown then
        shown = shown:gsub("%s*%(.*%)$", "")
        local values = {}
        for v in (shown .. "  "):gmatch("(.-)  +") do values[#values + 1] = v end
        want[#want + 1] = values
      end
    end
    assert(#want >= 3, "the example shows what it prints")
    local dir = os.tmpname()
    os.remove(dir)
    code = code:gsub('"data/mystore"', string.format("%q", dir))
    local printed = {}
    local function capture(...)
      local values = {}
      for i = 1, select("#", ...) do values[i] = tostring((select(i, ...))) end
      printed[#printed + 1] = values
    end
    local env = setmetatable({ print = capture }, { __index = _G })
    local chunk = assert((loadstring or load)(code))
    if setfenv then setfenv(chunk, env) else chunk = assert(load(code, "README", "t", env)) end
    chunk()
    os.execute("rm -rf '" .. dir .. "'")
    assert.same(want, printed)
  end)
end)
