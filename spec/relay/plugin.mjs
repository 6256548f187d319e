// A relay running strfry's whitelist plugin (spec/relay/strfry_whitelist.js, alice listed), driven by
// nostr-tools: alice's note, mallory's (refused with the plugin's message), a shadowed one, then
// mallory authenticated as alice (NIP-42), whose note the plugin now takes.
// usage: node plugin.mjs CONFIG.json  -> writes one JSON object with what it saw to CONFIG.out
import fs from "node:fs";
import { Relay, useWebSocketImplementation } from "nostr-tools/relay";
import { finalizeEvent } from "nostr-tools/pure";
import WebSocket from "ws";

useWebSocketImplementation(WebSocket);
const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const key = (hex) => Uint8Array.from(hex.match(/../g).map((b) => parseInt(b, 16)));
const out = {};
const note = (sk, content) => finalizeEvent({ kind: 1, created_at: Math.floor(Date.now() / 1000), tags: [], content }, key(sk));
const outcome = (p) => p.then((r) => [true, r || ""], (e) => [false, String(e && e.message !== undefined ? e.message : e)]);

const relay = await Relay.connect(cfg.url);
relay.publishTimeout = 60000;
const listed = note(cfg.alice, "hello");
const stranger = note(cfg.mallory, "hi");
const spam = note(cfg.alice, "spam");
out.listed = await outcome(relay.publish(listed));
out.stranger = await outcome(relay.publish(stranger));
out.spam = await outcome(relay.publish(spam));
// a forged event (its content changed after signing) is refused before any policy sees it
out.forged = await outcome(relay.publish({ ...note(cfg.alice, "signed"), content: "changed" }));
out.auth = await outcome(relay.auth(async (template) => finalizeEvent(template, key(cfg.alice))));
const authed = note(cfg.mallory, "now as alice");
out.authed = await outcome(relay.publish(authed));
out.stored = await new Promise((resolve) => {
  const ids = [];
  const sub = relay.subscribe([{ kinds: [1] }], { onevent: (ev) => ids.push(ev.id), oneose: () => { resolve(ids.sort()); sub.close(); } });
});
out.ids = { listed: listed.id, stranger: stranger.id, spam: spam.id, authed: authed.id };
relay.close();
fs.writeFileSync(cfg.out, JSON.stringify(out));
process.exit(0);
