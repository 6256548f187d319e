-- NIP-09 as strict as the strictest relays, for every store (lmdb_spec and postgres_spec run it):
-- a deletion request naming another pubkey's address, or whose `e` tags name only stored events
-- of other authors, is refused with its reason and nothing of it stored; unknown targets keep
-- today's tombstones, bound to the request's author.
local layer2 = require("layer2")
local helper = require("spec.helper")

local OTHERS = "invalid: a deletion request may only delete its author's own events (its e tags name only other "
  .. "authors' events)"
local ADDRESS = "invalid: a deletion request may only name its author's own addresses (an a tag names another "
  .. "pubkey's)"

-- open() -> a fresh store; assert: busted's (it lives in the spec file's environment)
return function(open, assert)
  local db = open()
  local A, B = ("0"):rep(63) .. "a", ("0"):rep(63) .. "b"
  local NOW = 1800000000
  local function ev(key, kind, at, tags, content)
    return layer2.event.sign({ kind = kind, created_at = at, tags = tags or {}, content = content or "" }, key)
  end
  local na, nb = ev(A, 1, NOW - 100, {}, "A's note"), ev(B, 1, NOW - 100, {}, "B's note")
  local na2 = ev(A, 1, NOW - 99, {}, "A's note that stays")
  local article_b = ev(B, 30023, NOW - 100, { { "d", "post" } }, "B's article")
  local article_a = ev(A, 30023, NOW - 100, { { "d", "post" } }, "A's article")
  for _, e in ipairs({ na, na2, nb, article_b, article_a }) do assert.is_true(db:save_event(e)) end
  local pk_a, pk_b = na.pubkey, nb.pubkey
  local function refused(del, want)
    local ok, msg = db:save_event(del)
    assert.is_false(ok)
    assert.equal(want, msg)
    assert.equal(0, db:count_events({ ids = { del.id } }), "nothing of it stored")
  end
  -- only another author's event: refused, and it stays
  refused(ev(A, 5, NOW - 50, { { "e", nb.id } }), OTHERS)
  -- another pubkey's address: refused, whatever else it names
  refused(ev(A, 5, NOW - 49, { { "a", "30023:" .. pk_b .. ":post" } }), ADDRESS)
  refused(ev(A, 5, NOW - 48, { { "a", "30023:" .. pk_a .. ":post" }, { "a", "30023:" .. pk_b .. ":post" } }), ADDRESS)
  -- own address, with e tags naming only another's event: still refused
  refused(ev(A, 5, NOW - 47, { { "a", "30023:" .. pk_a .. ":post" }, { "e", nb.id } }), OTHERS)
  assert.same({ nb.id }, helper.ids(db:query_events({ ids = { nb.id } })))
  assert.same({ article_b.id }, helper.ids(db:query_events({ authors = { pk_b }, kinds = { 30023 } })))
  -- its own event among them: accepted, its own goes, the other's stays
  assert.is_true(db:save_event(ev(A, 5, NOW - 40, { { "e", nb.id }, { "e", na.id } })))
  assert.same({}, db:query_events({ ids = { na.id } }))
  assert.same({ nb.id }, helper.ids(db:query_events({ ids = { nb.id } })))
  -- an unknown target: accepted, and its tombstone refuses the event later, from that author only
  local later = ev(A, 1, NOW - 30, {}, "published after its deletion")
  assert.is_true(db:save_event(ev(A, 5, NOW - 20, { { "e", later.id } })))
  local ok, msg = db:save_event(later)
  assert.is_false(ok)
  assert.matches("^blocked: ", msg)
  -- its own address: accepted, and the article goes; a malformed a tag is not an address
  assert.is_true(db:save_event(ev(A, 5, NOW - 10, { { "a", "30023:" .. pk_a .. ":post" }, { "a", "30023:xyz:post" } })))
  assert.same({}, db:query_events({ authors = { pk_a }, kinds = { 30023 } }))
  assert.same({ article_b.id }, helper.ids(db:query_events({ authors = { pk_b }, kinds = { 30023 } })))
  -- and in a batch, each its own verdict
  local batch = { ev(B, 5, NOW - 5, { { "e", na2.id } }), ev(B, 5, NOW - 4, { { "e", nb.id } }),
    ev(B, 5, NOW - 3, { { "a", "30023:" .. pk_a .. ":post" } }) }
  local verdicts = assert(db:save_events(batch))
  assert.same({ false, OTHERS }, { verdicts[1] == true, verdicts[1] })
  assert.is_true(verdicts[2])
  assert.same({ false, ADDRESS }, { verdicts[3] == true, verdicts[3] })
  assert.same({}, db:query_events({ ids = { nb.id } }))
  assert.same({ na2.id }, helper.ids(db:query_events({ ids = { na2.id } })))
  return db
end
