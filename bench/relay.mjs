// bench/relay client: one relay, one node process, one clock (performance.now) for every time.
//   node relay.mjs CONFIG.json OUT.json
// CONFIG (written by bench/relay.lua): { url, file,
//   publish: { from, count, clients, window },                 pipelined EVENTs, every OK awaited
//   req: [{ limit, n, warmup }],                               REQ round trips on one connection
//   reqmix: { from, count, n, seed, pids, client },            distinct REQs, each asked once; the
//                                                              CPU the relay's processes (pids) used;
//                                                              client: bench/reqmix.c's binary asks them
//   fanout: { from, count, rate, connections, perConnection, grace, seed } }   live delivery
// OUT: the same sections with what was measured (times in ms, rates in events/s).
import fs from "node:fs";
import os from "node:os";
import { execFileSync } from "node:child_process";
import readline from "node:readline";
import { performance } from "node:perf_hooks";
import WebSocket from "ws";
import { matchFilter } from "nostr-tools/filter";

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const outPath = process.argv[3];
const now = () => performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// a relay that stops answering fails the section instead of hanging the bench
const STALL_MS = 30000;

// the lines [from, from + count) of the JSONL file: the signed text as sent, and its parse
function eventsOf(file, from, count) {
  const lines = fs.readFileSync(file, "utf8").split("\n").slice(from, from + count).filter((l) => l);
  if (lines.length < count) throw new Error(`${file} has fewer than ${from + count} lines`);
  return lines.map((text) => ({ text, ev: JSON.parse(text) }));
}

// What the REQ mix's filters are made from, for the lines [from, from + count) of a file read as a
// stream (a million events' JSON is longer than a string may be): each event's id, pubkey, kind,
// created_at and its p and t tags.
async function mixSource(file, from, count) {
  const evs = [];
  let i = 0;
  for await (const line of readline.createInterface({ input: fs.createReadStream(file), crlfDelay: Infinity })) {
    if (i >= from + count) break;
    if (i++ < from || !line) continue;
    const ev = JSON.parse(line);
    evs.push({ id: ev.id, pubkey: ev.pubkey, kind: ev.kind, created_at: ev.created_at,
      tags: ev.tags.filter((t) => t[0] === "p" || t[0] === "t") });
  }
  if (evs.length < count) throw new Error(`${file} has fewer than ${from + count} lines`);
  return evs;
}

function percentiles(values) {
  const v = Float64Array.from(values).sort();
  const at = (q) => (v.length ? v[Math.min(v.length - 1, Math.floor(v.length * q))] : null);
  return { p50: at(0.5), p99: at(0.99), max: v.length ? v[v.length - 1] : null, n: v.length };
}

// permessage-deflate off: the example relay (lua-resty-websocket) has none, so neither relay compresses
function connect(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

// NOTICEs and OK refusals by their text (the machine-readable prefix and a little more), to report
function tally(counts, text) {
  const key = String(text).slice(0, 80);
  counts[key] = (counts[key] || 0) + 1;
}

// One connection's share of the publish: at most `window` EVENTs unacknowledged, the next one sent
// as each OK comes. Resolves when every EVENT has its OK, or after STALL_MS without one.
function pipeline(ws, part, window, stats) {
  return new Promise((resolve) => {
    const sentAt = new Map();
    let next = 0, answered = 0, lastProgress = now();
    const fill = () => {
      while (next < part.length && sentAt.size < window) {
        const { text, ev } = part[next++];
        sentAt.set(ev.id, now());
        ws.send('["EVENT",' + text + "]");
      }
    };
    const finish = () => {
      clearInterval(watchdog);
      stats.unanswered += part.length - answered;
      resolve();
    };
    const watchdog = setInterval(() => { if (now() - lastProgress > STALL_MS) finish(); }, 1000);
    ws.on("message", (data) => {
      const msg = JSON.parse(data);
      if (msg[0] === "NOTICE") return tally(stats.notices, msg[1]);
      if (msg[0] !== "OK" || !sentAt.has(msg[1])) return;
      stats.latencies.push(now() - sentAt.get(msg[1]));
      sentAt.delete(msg[1]);
      if (msg[2]) stats.accepted++;
      else tally(stats.refused, msg[3]);
      answered++;
      lastProgress = now();
      if (answered === part.length) finish();
      else fill();
    });
    if (part.length === 0) finish();
    else fill();
  });
}

// Publish rate: the events round robin over `clients` connections (opened first, not timed), each
// pipelining its share; the time runs from the first EVENT sent to the last OK received.
async function publish(url, { from, count, clients, window }) {
  const events = eventsOf(cfg.file, from, count);
  const sockets = await Promise.all(Array.from({ length: clients }, () => connect(url)));
  const stats = { accepted: 0, unanswered: 0, latencies: [], refused: {}, notices: {} };
  const t0 = now();
  await Promise.all(sockets.map((ws, i) => pipeline(ws, events.filter((_, k) => k % clients === i), window, stats)));
  const ms = now() - t0;
  for (const ws of sockets) ws.close();
  return { published: count, clients, window, accepted: stats.accepted, unanswered: stats.unanswered,
    older_in_order: outdated(events.map(({ ev }) => ev)).size,
    seconds: ms / 1000, rate: count / (ms / 1000), ok: percentiles(stats.latencies),
    refused: stats.refused, notices: stats.notices };
}

// REQ round trips in sequence on one connection: REQ, its events, EOSE (then CLOSE); the first
// `warmup` are not counted, so both relays answer warm.
async function roundTrips(url, { limit, n, warmup }) {
  const ws = await connect(url);
  const times = [], returned = [], closed = {};
  for (let i = 0; i < warmup + n; i++) {
    const subid = "rt" + i;
    const t = now();
    let events = 0;
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`REQ ${subid}: no EOSE in ${STALL_MS} ms`)), STALL_MS);
      const onMessage = (data) => {
        const msg = JSON.parse(data);
        if (msg[1] !== subid) return;
        if (msg[0] === "EVENT") events++;
        else if (msg[0] === "EOSE" || msg[0] === "CLOSED") {
          if (msg[0] === "CLOSED") tally(closed, msg[2]);
          clearTimeout(timer);
          ws.off("message", onMessage);
          resolve();
        }
      };
      ws.on("message", onMessage);
      ws.send(JSON.stringify(["REQ", subid, { kinds: [1], limit }]));
    });
    if (i >= warmup) {
      times.push(now() - t);
      returned.push(events);
    }
    ws.send(JSON.stringify(["CLOSE", subid]));
  }
  ws.close();
  return { limit, n, warmup, ...percentiles(times), returned_min: Math.min(...returned),
    returned_max: Math.max(...returned), closed };
}

// The REQ mix: `n` distinct filters made from the published events [from, from + count) (seeded: the
// same for both relays), each asked once on one connection, one at a time: ids (1-20), authors
// (1-3), an author with a kind, #t, #p, kinds, a time window, each with a limit from 20 to 500.
// Per REQ the time to its EOSE and the events it returned (the relays compare them).
const MIX_CLASSES = ["ids", "authors", "author and kind", "#t", "#p", "kinds", "time window"];

function mixFilters(evs, { n, seed }) {
  const random = prng(seed);
  const distinct = (values) => [...new Set(values)];
  const authors = distinct(evs.map((ev) => ev.pubkey));
  const tagValues = (name) => distinct(evs.flatMap((ev) => ev.tags.filter((t) => t[0] === name).map((t) => t[1])));
  const ps = tagValues("p"), ts = tagValues("t");
  const kindsSeen = distinct(evs.map((ev) => ev.kind)).sort((a, b) => a - b);
  const times = evs.map((ev) => ev.created_at).sort((a, b) => a - b);
  const one = (pool) => pool[Math.floor(random() * pool.length)];
  const pick = (pool, k) => distinct(Array.from({ length: k }, () => one(pool))).sort();
  const limits = [20, 50, 100, 200, 500];
  // one of each class in turn (MIX_CLASSES names them): REQ i is of class i % 7
  const classes = [
    () => ({ ids: distinct(Array.from({ length: 1 + Math.floor(random() * 20) }, () => one(evs).id)).sort() }),
    () => ({ authors: pick(authors, 1 + Math.floor(random() * 3)) }),
    () => ({ authors: pick(authors, 1), kinds: [one([0, 1, 3, 6, 7])] }),
    () => ({ "#t": pick(ts, 1 + Math.floor(random() * 2)) }),
    () => ({ "#p": pick(ps, 1) }),
    () => ({ kinds: pick(kindsSeen, 1 + Math.floor(random() * 2)) }),
    () => {
      const a = times[Math.floor(random() * times.length)], span = 60 + Math.floor(random() * 3600);
      return { since: a, until: a + span };
    },
  ];
  const seen = new Set(), filters = [];
  while (filters.length < n) {
    const f = classes[filters.length % classes.length]();
    if (!f.ids) f.limit = one(limits);
    const key = JSON.stringify(f);
    if (seen.has(key)) continue;
    seen.add(key);
    filters.push(f);
  }
  return filters;
}

// CPU time in ms that the processes `pids` (every thread of each) have used so far, from
// /proc/PID/task/TID/schedstat (ns on a CPU); null without pids or /proc
function cpuOf(pids) {
  if (!pids || pids.length === 0) return null;
  let ns = 0;
  try {
    for (const pid of pids) {
      for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
        ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
      }
    }
  } catch {
    return null;
  }
  return ns / 1e6;
}

// The mix asked by bench/reqmix.c's client (cfgMix.client, built by the caller), its REQs in a file,
// one per line: node's own client took as much CPU as the mix took time, and set the pace for both
// relays. The relay's CPU meanwhile is its processes' (cfgMix.pids).
function reqMix(url, cfgMix, filters) {
  const file = `${os.tmpdir()}/reqmix-${process.pid}.jsonl`;
  fs.writeFileSync(file, filters.map((f, i) => JSON.stringify(["REQ", "m" + i, f])).join("\n") + "\n");
  const { hostname, port } = new URL(url);
  const relayCpu0 = cpuOf(cfgMix.pids);
  const out = execFileSync(cfgMix.client, [hostname, port, file], { encoding: "utf8", maxBuffer: 64 << 20, timeout: 600000 });
  const relayCpu = relayCpu0 === null ? null : cpuOf(cfgMix.pids) - relayCpu0;
  fs.rmSync(file);
  const times = [], counts = [], closed = {};
  let clientCpu = null, total = null;
  for (const line of out.split("\n")) {
    if (!line) continue;
    const f = line.split(" ");
    if (f[0] === "cpu" || f[0] === "total") {
      if (f[0] === "cpu") clientCpu = Number(f[1]);
      else total = Number(f[1]);
      continue;
    }
    counts.push(Number(f[0]));
    times.push(Number(f[1]));
    if (f[2] === "1") tally(closed, JSON.parse(f.slice(3).join(" "))[2]);
  }
  if (times.length !== filters.length) throw new Error(`reqmix answered ${times.length} of ${filters.length} REQs`);
  const v = Float64Array.from(times).sort();
  return { n: filters.length, total_ms: total, relay_cpu_ms: relayCpu, client_cpu_ms: clientCpu, ...percentiles(times),
    p90: v[Math.floor(v.length * 0.9)], events: counts.reduce((a, b) => a + b, 0), counts, times, classes: MIX_CLASSES,
    closed };
}

// mulberry32: the same subscriptions for both relays and every run
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// The fan-out's subscriptions, as clients open them: per connection (of `perConnection`) about 75 %
// follows (1-2 authors, half of them kinds 1/6 only), 12 % mentions (#p, half kinds 1/7), 12 %
// hashtags (#t, 1-2 of them, half kind 1), and on the first 31 connections one `kinds` filter (a
// subset of the rarer kinds 0, 3, 6, 10002, 30023; kind 1 alone would be 2/3 of the stream per
// subscriber). Authors, p and t values are drawn uniformly from those in the events to publish, so
// each matches something. Every filter has limit 0 (no stored events: the events are dated in the
// past, so since=now would match none of them) and is distinct from all the others.
function subscriptions(events, { connections, perConnection, seed }) {
  const random = prng(seed);
  const distinct = (values) => [...new Set(values)];
  const authors = distinct(events.map(({ ev }) => ev.pubkey));
  const tagValues = (name) =>
    distinct(events.flatMap(({ ev }) => ev.tags.filter((t) => t[0] === name).map((t) => t[1])));
  const ps = tagValues("p"), ts = tagValues("t");
  const pick = (pool, k) => distinct(Array.from({ length: k }, () => pool[Math.floor(random() * pool.length)])).sort();
  const rare = [0, 3, 6, 10002, 30023];
  const kindSets = Array.from({ length: 31 }, (_, i) => rare.filter((_, b) => (i + 1) & (1 << b)));
  const make = (conn, j) => {
    const half = j % 2 === 0;
    if (j === perConnection - 1 && conn < kindSets.length) return { kinds: kindSets[conn] };
    if (j < perConnection * 0.75 || j === perConnection - 1) {
      const f = { authors: pick(authors, 1 + Math.floor(random() * 2)) };
      return half ? f : { kinds: [1, 6], ...f };
    }
    if (j < perConnection * 0.87) return half ? { "#p": pick(ps, 1) } : { kinds: [1, 7], "#p": pick(ps, 1) };
    const f = { "#t": pick(ts, 1 + Math.floor(random() * 2)) };
    return half ? f : { kinds: [1], ...f };
  };
  const seen = new Set(), subs = [];
  for (let conn = 0; conn < connections; conn++) {
    for (let j = 0; j < perConnection; j++) {
      let filter, key;
      do {
        filter = make(conn, j);
        key = JSON.stringify(filter);
      } while (seen.has(key));
      seen.add(key);
      subs.push({ subid: `f${conn}_${j}`, conn, filter: { ...filter, limit: 0 } });
    }
  }
  return subs;
}

// The deliveries due: every (subscription, event) where an accepted event matches the filter. The
// candidates come from an index on each filter's most selective field, then matchFilter decides.
function expectedDeliveries(subs, accepted) {
  const index = new Map();
  const add = (key, sub) => { if (!index.has(key)) index.set(key, []); index.get(key).push(sub); };
  for (const sub of subs) {
    const f = sub.filter;
    if (f.authors) f.authors.forEach((a) => add("a:" + a, sub));
    else if (f["#p"]) f["#p"].forEach((v) => add("p:" + v, sub));
    else if (f["#t"]) f["#t"].forEach((v) => add("t:" + v, sub));
    else f.kinds.forEach((k) => add("k:" + k, sub));
  }
  const expected = new Set();
  for (const ev of accepted) {
    const tagKeys = ev.tags.filter((t) => t[0] === "p" || t[0] === "t").map((t) => t[0] + ":" + t[1]);
    const keys = ["a:" + ev.pubkey, "k:" + ev.kind, ...tagKeys];
    for (const key of new Set(keys)) {
      for (const sub of index.get(key) || []) if (matchFilter(sub.filter, ev)) expected.add(sub.subid + " " + ev.id);
    }
  }
  return expected;
}

// What a newer event of a replaceable (0, 3, 10000-19999) or addressable (30000-39999) kind
// replaces: the same author and kind (and d tag). null for the other kinds.
function replaceKey(ev) {
  if (ev.kind === 0 || ev.kind === 3 || (ev.kind >= 10000 && ev.kind < 20000)) return ev.pubkey + ":" + ev.kind;
  if (ev.kind >= 30000 && ev.kind < 40000) {
    const d = ev.tags.find((t) => t[0] === "d");
    return ev.pubkey + ":" + ev.kind + ":" + (d ? d[1] : "");
  }
  return null;
}

// The ids of `events`, taken in their order, that are not the newest of their replaceKey: those a
// newer one precedes (a relay refuses them when they come in this order), or with `after` those a
// newer one follows (replaced later in the stream: a relay that delivers from its store after the
// write may no longer hold them by then).
function outdated(events, after = false) {
  const newest = new Map(), ids = new Set();
  const order = after ? events.slice().reverse() : events;
  for (const ev of order) {
    const key = replaceKey(ev);
    if (key === null) continue;
    const newer = newest.has(key) && (after ? newest.get(key) >= ev.created_at : newest.get(key) > ev.created_at);
    if (newer) ids.add(ev.id);
    newest.set(key, Math.max(ev.created_at, newest.get(key) ?? 0));
  }
  return ids;
}

// Opens one subscriber connection and its REQs; resolves when each REQ has its EOSE (or CLOSED).
// Live EVENTs then go to onEvent(subid, id).
async function subscriber(url, subs, onEvent, closed) {
  const ws = await connect(url);
  let waiting = subs.length;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`subscriptions: ${waiting} REQs without EOSE`)), STALL_MS);
    ws.on("message", (data) => {
      const msg = JSON.parse(data);
      if (msg[0] === "EVENT") onEvent(msg[1], msg[2].id);
      else if (msg[0] === "EOSE" || msg[0] === "CLOSED") {
        if (msg[0] === "CLOSED") tally(closed, msg[2]);
        if (--waiting === 0) {
          clearTimeout(timer);
          resolve();
        }
      } else if (msg[0] === "NOTICE") tally(closed, "NOTICE " + msg[1]);
    });
    for (const s of subs) ws.send(JSON.stringify(["REQ", s.subid, s.filter]));
  });
  return ws;
}

// Fan-out: the subscriptions opened (all EOSE'd) on their connections, then one more connection
// publishes the events at `rate` per second (paced by the clock, not in bursts), awaiting OKs as
// they come; then `grace` seconds for stragglers. Latency: from the publisher's send of an EVENT
// to a subscriber's receipt of it, first receipt per subscription.
async function fanout(url, { from, count, rate, connections, perConnection, grace, seed }) {
  const events = eventsOf(cfg.file, from, count);
  const subs = subscriptions(events, { connections, perConnection, seed });
  const sentAt = new Map(), received = new Map(), latencies = [], closed = {};
  let duplicates = 0;
  const onEvent = (subid, id) => {
    const key = subid + " " + id;
    if (received.has(key)) {
      duplicates++;
      return;
    }
    received.set(key, true);
    if (sentAt.has(id)) latencies.push(now() - sentAt.get(id));
  };
  const t0 = now();
  const sockets = await Promise.all(Array.from({ length: connections },
    (_, c) => subscriber(url, subs.filter((s) => s.conn === c), onEvent, closed)));
  const setupSeconds = (now() - t0) / 1000;

  const pub = await connect(url);
  const accepted = [], refused = {};
  let answered = 0;
  const allAnswered = new Promise((resolve) => {
    pub.on("message", (data) => {
      const msg = JSON.parse(data);
      if (msg[0] !== "OK") return;
      if (msg[2]) accepted.push(msg[1]);
      else tally(refused, msg[3]);
      if (++answered === count) resolve();
    });
  });
  const start = now();
  let sent = 0;
  while (sent < count) {
    const due = Math.min(count, Math.floor(((now() - start) * rate) / 1000) + 1);
    for (; sent < due; sent++) {
      sentAt.set(events[sent].ev.id, now());
      pub.send('["EVENT",' + events[sent].text + "]");
    }
    await sleep(1);
  }
  const publishSeconds = (now() - start) / 1000;
  await Promise.race([allAnswered, sleep(STALL_MS)]);
  await sleep(grace * 1000);
  for (const ws of [pub, ...sockets]) ws.close();

  const acceptedIds = new Set(accepted);
  const acceptedEvents = events.map(({ ev }) => ev).filter((ev) => acceptedIds.has(ev.id));
  const expected = expectedDeliveries(subs, acceptedEvents);
  let delivered = 0, unexpected = 0, missedSuperseded = 0;
  for (const key of received.keys()) {
    if (expected.has(key)) delivered++;
    else unexpected++;
  }
  const replaced = outdated(acceptedEvents, true);
  for (const key of expected) if (!received.has(key) && replaced.has(key.split(" ")[1])) missedSuperseded++;
  return { subscriptions: subs.length, connections, closed, setup_seconds: setupSeconds,
    published: count, accepted: accepted.length, unanswered: count - answered, refused,
    publish_seconds: publishSeconds, rate: count / publishSeconds, grace,
    expected: expected.size, delivered, missed: expected.size - delivered, missed_superseded: missedSuperseded,
    superseded: replaced.size, duplicates, unexpected,
    latency: percentiles(latencies) };
}

// one EVENT sent on ws, its OK awaited: ms
function okLatency(ws, text, id) {
  const sent = now();
  return new Promise((resolve) => {
    const onMsg = (data) => {
      const msg = JSON.parse(data);
      if (msg[0] === "OK" && msg[1] === id) { ws.off("message", onMsg); resolve(now() - sent); }
    };
    ws.on("message", onMsg);
    ws.send('["EVENT",' + text + "]");
  });
}

// Fairness: one connection sends `count` EVENTs at once (no window) while another sends one EVENT
// every `interval` ms, each awaited: that lone EVENT's OK latency, while the flood is still going;
// and first, the same on the idle relay (`idle` EVENTs, after the flood's and the lone ones).
async function flood(url, { from, count, probes, interval, idle }) {
  const events = eventsOf(cfg.file, from, count + probes + idle);
  const flooder = await connect(url), prober = await connect(url);
  const alone = [];
  for (const { text, ev } of events.slice(count + probes)) {
    await sleep(interval);
    alone.push(await okLatency(prober, text, ev.id));
  }
  const stats = { accepted: 0, unanswered: 0, latencies: [], refused: {}, notices: {} };
  const t0 = now();
  const flooding = pipeline(flooder, events.slice(0, count), count, stats);
  let floodDone = false;
  flooding.then(() => { floodDone = true; });
  // only the lone EVENTs sent while the flood is still being answered count: one after it would
  // measure an idle relay
  const lone = [];
  let during = 0;
  for (const { text, ev } of events.slice(count, count + probes)) {
    await sleep(interval);
    if (floodDone) break;
    lone.push(await okLatency(prober, text, ev.id));
    during++;
  }
  await flooding;
  const seconds = (now() - t0) / 1000;
  flooder.close();
  prober.close();
  return { count, probes, interval, during, flood_seconds: seconds, flood_unanswered: stats.unanswered,
    lone: { ...percentiles(lone), p90: lone.length ? Float64Array.from(lone).sort()[Math.floor(lone.length * 0.9)] : null },
    idle: percentiles(alone) };
}

const out = {};
if (cfg.publish) out.publish = await publish(cfg.url, cfg.publish);
if (cfg.req) {
  out.req = [];
  for (const r of cfg.req) out.req.push(await roundTrips(cfg.url, r));
}
if (cfg.reqmix) {
  out.reqmix = reqMix(cfg.url, cfg.reqmix, mixFilters(await mixSource(cfg.file, cfg.reqmix.from, cfg.reqmix.count), cfg.reqmix));
}
if (cfg.fanout) out.fanout = await fanout(cfg.url, cfg.fanout);
if (cfg.flood) out.flood = await flood(cfg.url, cfg.flood);
fs.writeFileSync(outPath, JSON.stringify(out));
process.exit(0);
