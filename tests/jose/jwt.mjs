// Test tokens from an implementation that is not outboxd's: npm `jose` mints the good
// ones, node:crypto builds the hostile ones byte by byte.
//   node jwt.mjs keys DIR [KID_PREFIX]        keys of every algorithm: DIR/private.json, DIR/jwks.json
//   node jwt.mjs sign DIR KID CLAIMS_JSON     a token signed by jose with key KID
//   node jwt.mjs hostile DIR NAME CLAIMS_JSON one hostile token (names below)
//   node jwt.mjs many DIR < LINES             many at once: each line "LABEL sign KID CLAIMS" or
//                                             "LABEL hostile NAME CLAIMS"; prints "LABEL TOKEN" lines
// CLAIMS_JSON may use "exp":"+N" (N seconds from now); likewise nbf and iat.
import * as jose from 'jose';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const [cmd, dir, a, b] = process.argv.slice(2);
const algs = { hs: 'HS256', rs: 'RS256', ps: 'PS256', es: 'ES256', ed: 'EdDSA' };
const b64 = (buf) => Buffer.from(buf).toString('base64url');

function claims(text) {
  const c = JSON.parse(text);
  const now = Math.floor(Date.now() / 1000);
  for (const k of ['exp', 'nbf', 'iat'])
    if (typeof c[k] === 'string' && /^[+-]\d+$/.test(c[k])) c[k] = now + Number(c[k]);
  return c;
}

async function keys(prefix = '') {
  fs.mkdirSync(dir, { recursive: true });
  const priv = {}, pub = [];
  for (const [short, alg] of Object.entries(algs)) {
    const kid = prefix + short;
    let privJwk, pubJwk;
    if (alg === 'HS256') {
      privJwk = { kty: 'oct', k: b64(crypto.randomBytes(32)) };
      pubJwk = { ...privJwk };
    } else {
      const { publicKey, privateKey } = await jose.generateKeyPair(alg, { extractable: true });
      privJwk = await jose.exportJWK(privateKey);
      pubJwk = await jose.exportJWK(publicKey);
    }
    priv[kid] = { ...privJwk, kid, alg };
    pub.push({ ...pubJwk, kid, alg, use: 'sig' });
  }
  fs.writeFileSync(path.join(dir, 'private.json'), JSON.stringify(priv));
  fs.writeFileSync(path.join(dir, 'jwks.json'), JSON.stringify({ keys: pub }));
}

async function privateKey(kid) {
  const jwk = JSON.parse(fs.readFileSync(path.join(dir, 'private.json')))[kid];
  if (!jwk) throw new Error(`no key ${kid}`);
  return { jwk, key: await jose.importJWK(jwk, jwk.alg) };
}

async function sign(kid, text) {
  const { jwk, key } = await privateKey(kid);
  return new jose.SignJWT(claims(text)).setProtectedHeader({ alg: jwk.alg, kid, typ: 'JWT' }).sign(key);
}

// Signs header.payload (given as raw JSON text) with HMAC-SHA256 and the raw secret.
function hmacToken(headerText, payloadText, secret) {
  const input = `${b64(headerText)}.${b64(payloadText)}`;
  return `${input}.${b64(crypto.createHmac('sha256', secret).update(input).digest())}`;
}

async function hostile(name, text) {
  const priv = JSON.parse(fs.readFileSync(path.join(dir, 'private.json')));
  const hsKid = Object.keys(priv).find((k) => priv[k].alg === 'HS256');
  const rsKid = Object.keys(priv).find((k) => priv[k].alg === 'RS256');
  const esKid = Object.keys(priv).find((k) => priv[k].alg === 'ES256');
  const secret = Buffer.from(priv[hsKid].k, 'base64url');
  const good = await sign(hsKid, text);
  const [h, p, s] = good.split('.');
  const c = claims(text);
  switch (name) {
    case 'alg_none':
      return `${b64(JSON.stringify({ alg: 'none', kid: hsKid }))}.${p}.`;
    case 'hs256_with_rsa_pem': {
      // The classic forgery: HMAC keyed with the RSA public key as PEM, under the RSA key's kid.
      const pem = crypto.createPublicKey({ key: priv[rsKid], format: 'jwk' }).export({ type: 'spki', format: 'pem' });
      return hmacToken(JSON.stringify({ alg: 'HS256', kid: rsKid }), JSON.stringify(c), pem);
    }
    case 'unknown_kid': {
      const { privateKey: k } = await jose.generateKeyPair('ES256');
      return new jose.SignJWT(c).setProtectedHeader({ alg: 'ES256', kid: 'nobody-knows-me' }).sign(k);
    }
    case 'payload_changed':
      return `${h}.${b64(JSON.stringify({ ...c, runs: ['*'], admin: true }))}.${s}`;
    case 'signature_changed': {
      const sig = Buffer.from(s, 'base64url');
      sig[5] ^= 0x01;
      return `${h}.${p}.${b64(sig)}`;
    }
    case 'truncated':
      return good.slice(0, good.length - 12);
    case 'bad_base64url':
      // The same bytes in standard base64 with padding.
      return `${h}.${p}.${Buffer.from(s, 'base64url').toString('base64')}`;
    case 'duplicate_exp': {
      // A second exp (in the future) after an expired first one, correctly signed.
      const body = JSON.stringify({ ...c, exp: Math.floor(Date.now() / 1000) - 3600 }).slice(0, -1) +
        `,"exp":${Math.floor(Date.now() / 1000) + 3600}}`;
      return hmacToken(JSON.stringify({ alg: 'HS256', kid: hsKid }), body, secret);
    }
    case 'huge':
      return hmacToken(JSON.stringify({ alg: 'HS256', kid: hsKid }), JSON.stringify({ ...c, pad: 'x'.repeat(100 * 1024) }), secret);
    case 'es256_der': {
      const input = `${b64(JSON.stringify({ alg: 'ES256', kid: esKid }))}.${b64(JSON.stringify(c))}`;
      const key = crypto.createPrivateKey({ key: priv[esKid], format: 'jwk' });
      const der = crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'der' });
      return `${input}.${b64(der)}`;
    }
    default:
      throw new Error(`unknown hostile token ${name}`);
  }
}

if (cmd === 'keys') await keys(a);
else if (cmd === 'sign') console.log(await sign(a, b));
else if (cmd === 'hostile') console.log(await hostile(a, b));
else if (cmd === 'many') {
  for (const line of fs.readFileSync(0, 'utf8').split('\n')) {
    const m = line.match(/^(\S+) (sign|hostile) (\S+) (.*)$/);
    if (!m) continue;
    console.log(`${m[1]} ${m[2] === 'sign' ? await sign(m[3], m[4]) : await hostile(m[3], m[4])}`);
  }
}
else {
  console.error('usage: jwt.mjs keys DIR [PREFIX] | sign DIR KID CLAIMS | hostile DIR NAME CLAIMS');
  process.exit(2);
}
