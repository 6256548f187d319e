#!/usr/bin/env node
// bench/relay's five-line write plugin for strfry: what the layer2-policy relay's accept_event does
const rl = require('readline').createInterface({ input: process.stdin, terminal: false });
rl.on('line', (line) => {
  const ev = JSON.parse(line).event, ok = ev.content.length <= 65536;
  console.log(JSON.stringify({ id: ev.id, action: ok ? 'accept' : 'reject', msg: ok ? '' : 'blocked: too long' }));
});
