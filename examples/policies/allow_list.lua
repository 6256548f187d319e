-- Only the listed pubkeys write; everyone reads. The list is the file's own (edit it, then
-- `nginx -p PREFIX -s reload`), and a file of hex pubkeys, one per line, named by ALLOW_LIST_FILE
-- (or given when loaded: loadfile(path)(list_path)).
local allowed = {
  -- ["<64 hex pubkey>"] = true,
}
local path = ... or os.getenv("ALLOW_LIST_FILE")
if path then
  for line in assert(io.open(path)):lines() do
    local pk = line:match("^%s*(%x+)%s*$")
    if pk and #pk == 64 then allowed[pk:lower()] = true end
  end
end

return {
  name = "allow-list",
  accept_event = function(ev)
    if allowed[ev.pubkey] then return true end
    return false, "blocked: only listed pubkeys may write here"
  end,
}
