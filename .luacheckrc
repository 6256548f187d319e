std = "max"
-- the data benchmarks make (bench/compare extracts an older tree there)
exclude_files = { "bench/data/**" }
files["spec"] = { std = "+busted" }
max_line_length = 130
files["lua/layer2/resty.lua"] = { std = "max+ngx_lua" }
files["lua/layer2/resty"] = { std = "max+ngx_lua" }
-- ngx.run_worker_thread (lua-nginx-module 0.10.20+) is newer than luacheck's ngx_lua definitions
files["lua/layer2/resty_pool.lua"] = { std = "max+ngx_lua", read_globals = { ngx = { fields = { "run_worker_thread" } } } }
files["examples/openresty"] = { std = "max+ngx_lua" }
