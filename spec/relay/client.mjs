// Drives the example relay with nostr-tools (and ws for raw frames), as a client would.
// usage: node client.mjs CONFIG.json  -> writes one JSON object with what it saw to CONFIG.out
import fs from "node:fs";
import { Relay, useWebSocketImplementation } from "nostr-tools/relay";
import WebSocket from "ws";

useWebSocketImplementation(WebSocket);
const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = {};
const lines = (p) => fs.readFileSync(p, "utf8").split("\n").filter((l) => l.length > 0);

async function publishAll(relay, file) {
  // pipelined: every EVENT goes out at once, each OK is awaited
  const evs = lines(file).map((l) => JSON.parse(l));
  const results = await Promise.all(evs.map((ev) => relay.publish(ev).then(
    (reason) => [true, reason || ""],
    (err) => [false, String(err && err.message !== undefined ? err.message : err)])));
  return results;
}

function req(relay, filters) {
  return new Promise((resolve) => {
    const ids = [];
    const sub = relay.subscribe(filters, {
      onevent: (ev) => ids.push(ev.id),
      oneose: () => { sub.close(); resolve(ids); },
    });
  });
}

// Sends frames on a fresh connection; resolves with the replies once `done(replies)` says so.
function raw(url, frames, done) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    const got = [];
    const finish = () => { ws.close(); resolve(got); };
    ws.on("open", () => { for (const f of frames) ws.send(f); });
    ws.on("message", (m) => { got.push(JSON.parse(m.toString())); if (done(got)) finish(); });
    ws.on("error", (e) => resolve([["error", String(e)]]));
    setTimeout(finish, 60000);
  });
}

// EVENT frames sent as they are (a refused event may have no usable id for a library to await)
function rawPublish(url, file) {
  const frames = lines(file).map((l) => '["EVENT",' + l + "]");
  return raw(url, frames, (got) => got.length === frames.length);
}

const stage = (s) => process.stderr.write(`client: ${s}\n`);
const relay = await Relay.connect(cfg.url);
stage("connected");
relay.publishTimeout = 60000;
out.valid = await publishAll(relay, cfg.valid);
stage("published valid");
out.invalid = await rawPublish(cfg.url, cfg.invalid);
stage("published invalid");
out.reqs = [];
for (const f of cfg.filters) out.reqs.push(await req(relay, [f]));
stage("reqs");
out.count = await relay.count([{ kinds: [1] }], {});
stage("count");

// live: a subscriber on one connection sees what another connection publishes (on another
// relay of the cluster, when watch_url names one). No step waits a fixed time: each waits for
// the answer that proves the step before it done (a busy machine only makes it slower).
const watcher = await Relay.connect(cfg.watch_url || cfg.url);
const waitFor = (what, test) => new Promise((resolve, reject) => {
  const started = Date.now();
  const check = () => {
    if (test()) return resolve();
    if (Date.now() - started > 120000) return reject(new Error("timed out waiting for " + what));
    setTimeout(check, 20);
  };
  check();
});
const seen = [];
let eose = false, sentinel = false;
const live = watcher.subscribe([{ kinds: [1111], "#t": ["layer2-live"] }],
  { onevent: (ev) => seen.push(ev.id), oneose: () => { eose = true; } });
// a second subscription that stays open: its event, published last, shows delivery has caught up
watcher.subscribe([{ kinds: [1112], "#t": ["layer2-live"] }], { onevent: () => { sentinel = true; } });
await waitFor("the live subscription", () => eose);
for (const ev of cfg.live) await relay.publish(ev).catch((e) => stage("live publish refused: " + e));
stage("live published");
await waitFor("the live events", () => seen.length >= cfg.live.length);
out.live_seen = seen.slice();
live.close();
// frames on one connection are handled in order: once this COUNT is answered, the CLOSE was too
await watcher.count([{ kinds: [1111] }], {});
await relay.publish(cfg.after_close).catch((e) => stage("publish refused: " + e));
await relay.publish(cfg.sentinel).catch((e) => stage("sentinel refused: " + e));
await waitFor("the sentinel event", () => sentinel);
out.after_close_seen = seen.length - out.live_seen.length;
watcher.close();

// malformed frames get a NOTICE, and the connection keeps working
out.raw = await raw(cfg.url, ["not json", '["NOPE"]', '{"a":1}', '["REQ","s1",{"kinds":[1],"limit":1}]'],
  (got) => got.some((g) => g[0] === "EOSE"));
relay.close();
// a file, not stdout: process.exit would cut a piped stdout short
fs.writeFileSync(cfg.out, JSON.stringify(out));
process.exit(0);
