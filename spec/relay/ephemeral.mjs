// An ephemeral event published on one relay of a cluster reaches a subscriber on another.
// usage: node ephemeral.mjs CONFIG.json  -> writes one JSON object with what it saw to CONFIG.out
import fs from "node:fs";
import { Relay, useWebSocketImplementation } from "nostr-tools/relay";
import { finalizeEvent } from "nostr-tools/pure";
import WebSocket from "ws";

useWebSocketImplementation(WebSocket);
const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const key = Uint8Array.from(cfg.key.match(/../g).map((b) => parseInt(b, 16)));
const watcher = await Relay.connect(cfg.watch_url);
const seen = [];
let eose = false;
watcher.subscribe([{ kinds: [20001] }], { onevent: (ev) => seen.push(ev.id), oneose: () => { eose = true; } });
const until = (test, ms) => new Promise((resolve) => {
  const started = Date.now();
  const check = () => (test() || Date.now() - started > ms ? resolve(test()) : setTimeout(check, 20));
  check();
});
await until(() => eose, 60000);
const relay = await Relay.connect(cfg.url);
const ev = finalizeEvent({ kind: 20001, created_at: Math.floor(Date.now() / 1000), tags: [], content: "now" }, key);
const ok = await relay.publish(ev).then(() => true, (e) => String(e));
await until(() => seen.length > 0, 30000);
// a while more: a node's own event must not come back to it twice
await new Promise((r) => setTimeout(r, 1500));
fs.writeFileSync(cfg.out, JSON.stringify({ ok, id: ev.id, seen }));
relay.close();
watcher.close();
process.exit(0);
