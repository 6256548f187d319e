-- An existing strfry write-policy plugin, run as strfry runs it: the event and its source as a JSON
-- line on the plugin's stdin, its decision as a JSON line on its stdout (layer2.strfry_plugin). Name
-- the plugin's command here, or in STRFRY_PLUGIN (plain Lua; nginx clears the environment), or
-- when loaded: loadfile(path)(command). A plugin that is a file is started anew when it changes.
local command = ... or os.getenv("STRFRY_PLUGIN") or "/etc/strfry/plugins/write-policy.js"
return require("layer2.strfry_plugin").policy(command)
