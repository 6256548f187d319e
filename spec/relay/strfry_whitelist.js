#!/usr/bin/env node
// strfry's own example write-policy plugin (strfry docs/plugins.md, "Example: Whitelist"), with a
// shadowReject for one word and the request's source and AUTH echoed in its reject message, so a
// spec sees what the relay sent. WHITELIST: the pubkeys that may write, comma-separated.
const whiteList = {};
for (const pk of (process.env.WHITELIST || '').split(',')) if (pk) whiteList[pk] = true;

const rl = require('readline').createInterface({ input: process.stdin, output: process.stdout, terminal: false });

console.log('plugin started'); // not JSON: the relay skips it, as strfry does

rl.on('line', (line) => {
  const req = JSON.parse(line);
  if (req.type !== 'new') {
    console.error('unexpected request type');
    return;
  }
  const res = { id: req.event.id };
  if (req.event.content === 'spam') {
    res.action = 'shadowReject';
  } else if (whiteList[req.event.pubkey] || (req.authed && whiteList[req.authed])) {
    res.action = 'accept';
  } else {
    res.action = 'reject';
    res.msg = `blocked: not on white-list (${req.sourceType} ${req.sourceInfo}${req.authed ? ' authed ' + req.authed : ''})`;
  }
  console.log(JSON.stringify(res));
});
