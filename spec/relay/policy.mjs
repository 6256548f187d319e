// The example relay with a policy file (tools/relay --policy), driven by nostr-tools: a member's
// note, a stranger's and a shadowed one, direct messages refused until NIP-42 AUTH (nostr-tools'
// own auth), then a party's own ones answered.
// usage: node policy.mjs CONFIG.json  -> writes one JSON object with what it saw to CONFIG.out
import fs from "node:fs";
import { Relay, useWebSocketImplementation } from "nostr-tools/relay";
import { finalizeEvent } from "nostr-tools/pure";
import WebSocket from "ws";

useWebSocketImplementation(WebSocket);
const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const key = (hex) => Uint8Array.from(hex.match(/../g).map((b) => parseInt(b, 16)));
const out = {};
const note = (sk, kind, content, tags) =>
  finalizeEvent({ kind, created_at: Math.floor(Date.now() / 1000), tags: tags || [], content }, key(sk));
const outcome = (p) => p.then((r) => [true, r || ""], (e) => [false, String(e && e.message !== undefined ? e.message : e)]);
const req = (relay, filters) => new Promise((resolve) => {
  const ids = [];
  const sub = relay.subscribe(filters, {
    onevent: (ev) => ids.push(ev.id),
    oneose: () => { resolve({ ids }); sub.close(); },
    onclose: (reason) => resolve({ closed: reason }),
  });
});

const relay = await Relay.connect(cfg.url);
relay.publishTimeout = 60000;
const member = note(cfg.alice, 1, "hello");
const stranger = note(cfg.mallory, 1, "hi");
const spam = note(cfg.alice, 1, "spam");
const dm = note(cfg.alice, 4, "secret", [["p", cfg.bob_pubkey]]);
out.member = await outcome(relay.publish(member));
out.stranger = await outcome(relay.publish(stranger));
out.spam = await outcome(relay.publish(spam));
out.dm = await outcome(relay.publish(dm));
out.stored = (await req(relay, [{ kinds: [1] }])).ids;
out.before_auth = await req(relay, [{ kinds: [4], "#p": [cfg.bob_pubkey] }]);
// nostr-tools answers the relay's challenge with bob's key
out.auth = await outcome(relay.auth(async (template) => finalizeEvent(template, key(cfg.bob))));
out.after_auth = await req(relay, [{ kinds: [4], "#p": [cfg.bob_pubkey] }]);
out.others = await req(relay, [{ kinds: [4], "#p": [cfg.mallory_pubkey] }]);
out.ids = { member: member.id, stranger: stranger.id, spam: spam.id, dm: dm.id };
relay.close();
fs.writeFileSync(cfg.out, JSON.stringify(out));
process.exit(0);
