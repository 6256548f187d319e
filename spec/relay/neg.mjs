// NIP-77 through the example relay with nostr-tools' NegentropySync, as a client syncs: for each
// of cfg.runs ({filter, items: "created_at id" file}), the ids the client has that the relay
// lacks (have) and those it lacks (need); then raw frames for the error answers.
// usage: node neg.mjs CONFIG.json  -> writes one JSON object to CONFIG.out
import fs from "node:fs";
import WebSocket from "ws";
import { Relay, useWebSocketImplementation } from "nostr-tools/relay";
import { nip77 } from "nostr-tools";

useWebSocketImplementation(WebSocket);
const { NegentropySync, NegentropyStorageVector } = nip77;
const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));

function storage(file) {
  const s = new NegentropyStorageVector();
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    if (!line) continue;
    const [at, id] = line.split(" ");
    s.insert(Number(at), id);
  }
  s.seal();
  return s;
}

async function sync(relay, run) {
  const have = [], need = [];
  const reason = await new Promise((resolve) => {
    const neg = new NegentropySync(relay, storage(run.items), run.filter, {
      onhave: (id) => have.push(id),
      onneed: (id) => need.push(id),
      onclose: (why) => resolve(why || null),
    });
    neg.start();
    setTimeout(() => resolve("timed out"), 60000);
  });
  return { have, need, reason };
}

// Frames sent as they are; resolves with the replies once `count` came.
function raw(frames, count) {
  return new Promise((resolve) => {
    const ws = new WebSocket(cfg.url);
    const got = [];
    ws.on("open", () => { for (const f of frames) ws.send(f); });
    ws.on("message", (m) => {
      got.push(JSON.parse(m.toString()));
      if (got.length === count) { ws.close(); resolve(got); }
    });
    setTimeout(() => { ws.close(); resolve(got); }, 30000);
  });
}

// A frame past what the relay reads at all: how the connection closes.
function closing(frame) {
  return new Promise((resolve) => {
    const ws = new WebSocket(cfg.url);
    ws.on("open", () => ws.send(frame));
    ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() }));
    ws.on("error", () => {});
    setTimeout(() => resolve({ code: "timed out" }), 30000);
  });
}

const relay = await Relay.connect(cfg.url);
const out = { runs: [] };
for (const run of cfg.runs) out.runs.push(await sync(relay, run));
relay.close();
out.errors = await raw(cfg.bad, cfg.bad_replies);
out.huge = await closing('["NEG-MSG","huge","' + "00".repeat(cfg.huge_bytes / 2) + '"]');
fs.writeFileSync(cfg.out, JSON.stringify(out));
process.exit(0);
