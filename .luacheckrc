std = "max"
files["spec"] = { std = "+busted" }
max_line_length = 130
files["lua/layer2/resty.lua"] = { std = "max+ngx_lua" }
files["examples/openresty"] = { std = "max+ngx_lua" }
