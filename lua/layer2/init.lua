-- layer2: a two-level nostr event store. The C core (layer2.core) does parsing, the nostr rules
-- and storage; this file wires the Lua surface.
local core = require("layer2.core")
local backend = require("layer2.backend")

local layer2 = {
  version = core.version,
  event = core.event,
  filter = core.filter,
  schnorr = core.schnorr,
  lmdb = core.lmdb,
  postgres = core.postgres, -- the shared L2 of a cluster: layer2.postgres.open(conninfo, opts)
  open = backend.open, -- the two-level backend: layer2.open(path, opts)
  fanout = core.fanout, -- a relay worker's live subscriptions, indexed: layer2.fanout()
  negentropy = core.negentropy, -- NIP-77 set reconciliation: layer2.negentropy([frame_limit])
  child = core.child, -- a child process spoken to in lines (a strfry write plugin): layer2.child(cmd)
  monotonic = core.monotonic, -- seconds on a clock that never jumps
  sleep = core.sleep, -- blocks the process: for plain-Lua loops, never inside nginx
}

return layer2
