// The initiator of a NIP-77 reconciliation with nostr-tools' negentropy (an implementation of its
// own), against spec/negentropy/peer.lua (layer2's side) as a child process; for
// spec/negentropy_spec.lua.   node client.mjs ITEMS PEER_COMMAND... -> one JSON line on stdout
import fs from "node:fs";
import { spawn } from "node:child_process";
import readline from "node:readline";
import { nip77 } from "nostr-tools";

const { Negentropy, NegentropyStorageVector } = nip77;

const [itemsFile, ...peer] = process.argv.slice(2);
const storage = new NegentropyStorageVector();
for (const line of fs.readFileSync(itemsFile, "utf8").split("\n")) {
  if (!line) continue;
  const [at, id] = line.split(" ");
  storage.insert(Number(at), id);
}
storage.seal();
const neg = new Negentropy(storage, 60000);
const child = spawn(peer[0], peer.slice(1), { stdio: ["pipe", "pipe", "inherit"] });
const lines = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
const have = [], need = [];
let msg = neg.initiate(), rounds = 0, bytes = 0;
while (msg) {
  rounds++;
  bytes += msg.length / 2;
  child.stdin.write(msg + "\n");
  const reply = (await lines.next()).value;
  if (reply.startsWith("error ")) throw new Error(reply);
  bytes += reply.length / 2;
  msg = neg.reconcile(reply, (id) => have.push(id), (id) => need.push(id));
}
child.stdin.end();
process.stdout.write(JSON.stringify({ have, need, rounds, bytes }) + "\n");
