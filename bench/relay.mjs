// bench/relay client: N websocket clients publish events concurrently, then REQ round trips.
// usage: node relay.mjs URL EVENTS_FILE COUNT CLIENTS OUT.json
import fs from "node:fs";
import WebSocket from "ws";

const [url, file, countArg, clientsArg, outPath] = process.argv.slice(2);
const count = Number(countArg), clients = Number(clientsArg);
const lines = fs.readFileSync(file, "utf8").split("\n").filter((l) => l).slice(0, count);
const open = () => new Promise((res) => { const ws = new WebSocket(url); ws.on("open", () => res(ws)); });

async function publish(ws, part) {
  return new Promise((resolve) => {
    let left = part.length, ok = 0;
    if (left === 0) return resolve(0);
    ws.on("message", (m) => {
      const msg = JSON.parse(m.toString());
      if (msg[0] === "OK") { if (msg[2]) ok++; if (--left === 0) resolve(ok); }
    });
    for (const l of part) ws.send('["EVENT",' + l + "]");
  });
}

const sockets = await Promise.all(Array.from({ length: clients }, open));
const parts = sockets.map((_, i) => lines.filter((_, k) => k % clients === i));
let t0 = process.hrtime.bigint();
const oks = await Promise.all(sockets.map((ws, i) => publish(ws, parts[i])));
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
for (const ws of sockets) ws.close();

async function roundTrips(limit, n) {
  const ws = await open();
  const times = [];
  for (let i = 0; i < n; i++) {
    const t = process.hrtime.bigint();
    await new Promise((resolve) => {
      const onMsg = (m) => {
        const msg = JSON.parse(m.toString());
        if (msg[0] === "EOSE") { ws.off("message", onMsg); resolve(); }
      };
      ws.on("message", onMsg);
      ws.send(JSON.stringify(["REQ", "b" + i, { kinds: [1], limit }]));
    });
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
    ws.send(JSON.stringify(["CLOSE", "b" + i]));
  }
  ws.close();
  times.sort((a, b) => a - b);
  return { p50: times[Math.floor(n * 0.5)], p99: times[Math.min(n - 1, Math.floor(n * 0.99))] };
}
const out = { published: lines.length, accepted: oks.reduce((a, b) => a + b, 0), seconds: secs,
  req50: await roundTrips(50, 200), req500: await roundTrips(500, 100) };
fs.writeFileSync(outPath, JSON.stringify(out));
process.exit(0);
