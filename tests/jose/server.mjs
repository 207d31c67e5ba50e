// Small servers for the authorization tests (loopback only, no dependencies):
//   node server.mjs jwks PORT CERT KEY FILE MAX_AGE   HTTPS: GET /jwks.json serves FILE (read per request)
//                                                     with Cache-Control: max-age=MAX_AGE
//   node server.mjs token PORT FILE                   HTTP: any GET answers FILE's content (a token),
//                                                     allowing the caller's origin with credentials (CORS)
//   node server.mjs auth PORT STATE                   HTTP forward-auth backend: STATE (read per request)
//                                                     is {"cookies":{"session value":status},
//                                                     "delay_ms":N,"max_age":N}; unknown cookies get 401
// Each request is logged to stdout as one line: "call <run id> <cookie> <original uri>".
// Prints "listening" once the port is open.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';

const [mode, port, ...rest] = process.argv.slice(2);

function log(req) {
  console.log(`call ${req.headers['x-outboxd-run-id'] || '-'} ${req.headers.cookie || '-'} ${req.headers['x-original-uri'] || req.url}`);
}

let server;
if (mode === 'jwks') {
  const [cert, key, file, maxAge] = rest;
  server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
    log(req);
    if (req.url !== '/jwks.json') { res.writeHead(404).end(); return; }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': `public, max-age=${maxAge}` });
    res.end(fs.readFileSync(file));
  });
} else if (mode === 'auth') {
  const [stateFile] = rest;
  server = http.createServer((req, res) => {
    log(req);
    const state = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
    const m = (req.headers.cookie || '').match(/(?:^|;\s*)session=([^;]*)/);
    const status = (m && state.cookies[m[1]]) || 401;
    setTimeout(() => {
      const headers = { 'Content-Type': 'text/plain' };
      if (state.max_age !== undefined) headers['Cache-Control'] = `max-age=${state.max_age}`;
      res.writeHead(status, headers).end(`${status}\n`);
    }, state.delay_ms || 0);
  });
} else if (mode === 'token') {
  const [file] = rest;
  server = http.createServer((req, res) => {
    log(req);
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Cache-Control': 'no-store', Vary: 'Origin',
      'Access-Control-Allow-Origin': req.headers.origin || '*', 'Access-Control-Allow-Credentials': 'true' });
    res.end(fs.readFileSync(file, 'utf8').trim());
  });
} else {
  console.error('usage: server.mjs jwks PORT CERT KEY FILE MAX_AGE | auth PORT STATE');
  process.exit(2);
}
server.listen(Number(port), '127.0.0.1', () => console.log('listening'));
