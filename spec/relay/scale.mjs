// Drives the example relay with many connections for spec/relay_scale_spec.lua (raw frames over
// ws: refused events may have no id a library could await).
// usage: node scale.mjs CONFIG.json  -> writes one JSON object with what it saw to CONFIG.out
// cfg.mode: "durability", "verdicts" or "fanout" (see each function).
import fs from "node:fs";
import WebSocket from "ws";

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const lines = (p) => fs.readFileSync(p, "utf8").split("\n").filter((l) => l.length > 0);
const idOf = (line) => JSON.parse(line).id;
const stage = (s) => process.stderr.write(`scale: ${s}\n`);

// A connection: every JSON message it receives goes to onMessage; closed resolves when it ends.
function connect(onMessage) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(cfg.url);
    ws.closed = new Promise((done) => ws.on("close", done));
    ws.on("message", (m) => onMessage(JSON.parse(m.toString()), ws));
    ws.on("open", () => resolve(ws));
    ws.on("error", reject);
  });
}

// Resolves once test() holds, checked every 10 ms; never waits a fixed time for anything else.
function until(what, test, seconds = 300) {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const check = () => {
      if (test()) return resolve();
      if (Date.now() - started > seconds * 1000) return reject(new Error("timed out waiting for " + what));
      setTimeout(check, 10);
    };
    check();
  });
}

// Sends every line as an EVENT on its own connection; resolves with [id, ok, message] per OK, in
// the order they came, once each line has its OK or the connection ended. onOk(id, ok) sees each.
async function publish(part, onOk = () => {}) {
  const oks = [];
  const ws = await connect((msg) => {
    if (msg[0] !== "OK") return;
    oks.push([msg[1], msg[2], msg[3]]);
    onOk(msg[1], msg[2]);
    if (oks.length === part.length) ws.close();
  });
  for (const l of part) ws.send('["EVENT",' + l + "]");
  if (part.length === 0) ws.close();
  await ws.closed;
  return oks;
}

// 16 clients publish at once; each OK true is appended to cfg.acked as it arrives (the spec kills
// the workers meanwhile). Then what got no OK is sent again on new connections (the master starts
// new workers; until then the listening socket holds them): each gets its OK.
async function durability() {
  const parts = cfg.parts.map(lines);
  const first = await Promise.all(parts.map((part) => publish(part, (id, ok) => {
    if (ok) fs.appendFileSync(cfg.acked, id + "\n");
  })));
  const answered = new Set(first.flat().map((r) => r[0]));
  stage(`first pass: ${answered.size} answered`);
  const again = parts.map((part) => part.filter((l) => !answered.has(idOf(l))));
  const second = await Promise.all(again.map((part) => publish(part)));
  return { first: first.flat(), second: second.flat() };
}

// Each connection sends its lines at once (so they share batches); the OKs per connection.
async function verdicts() {
  return { oks: await Promise.all(cfg.parts.map((p) => publish(lines(p)))) };
}

// cfg.subs[c]: the subscriptions of connection c, [subid, filters]; every connection also holds
// "sentinel" on cfg.sentinel's tag. Once every subscription has its EOSE, cfg.events are
// published on one more connection, then the sentinel: a connection that received it has
// received everything saved before it. Returns the ids each subscription received.
async function fanout() {
  const got = cfg.subs.map(() => ({}));
  const eose = cfg.subs.map(() => 0);
  const done = cfg.subs.map(() => false);
  const conns = await Promise.all(cfg.subs.map((subs, c) => connect((msg) => {
    if (msg[0] === "EOSE") eose[c]++;
    else if (msg[0] === "EVENT" && msg[1] === "sentinel") done[c] = true;
    else if (msg[0] === "EVENT") (got[c][msg[1]] = got[c][msg[1]] || []).push(msg[2].id);
    else if (msg[0] === "CLOSED" || msg[0] === "NOTICE") stage("refused: " + JSON.stringify(msg));
  })));
  conns.forEach((ws, c) => {
    for (const [subid, filters] of cfg.subs[c]) ws.send(JSON.stringify(["REQ", subid, ...filters]));
    ws.send(JSON.stringify(["REQ", "sentinel", { "#t": [cfg.sentinel_tag], limit: 0 }]));
  });
  await until("every EOSE", () => eose.every((n, c) => n === cfg.subs[c].length + 1));
  stage("subscribed");
  const oks = await publish(lines(cfg.events));
  await publish([cfg.sentinel]);
  await until("the sentinel on every connection", () => done.every((d) => d));
  for (const ws of conns) ws.close();
  return { got, oks };
}

const modes = { durability, verdicts, fanout };
const out = await modes[cfg.mode]();
// a file, not stdout: process.exit would cut a piped stdout short
fs.writeFileSync(cfg.out, JSON.stringify(out));
process.exit(0);
