// A real OpenID Provider for the Access tests: npm oidc-provider under Node, on 127.0.0.1.
//
// node oidc_provider.js CONFIG.json, where CONFIG.json holds
//   {"clients": [{"client_id", "client_secret", "redirect_uris": [...]}],
//    "users": [{"email", "password", "groups": [...]}],
//    "tls": {"cert": PATH, "key": PATH} (optional)}
// It listens on a free port of 127.0.0.1 and prints "oidc-provider listening ISSUER" once ready.
// Its own login and consent interactions are plain HTML forms (no JavaScript), so a test's
// browser fills them as a person would. PKCE (S256) is required of every client.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { generateKeyPairSync } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = new Map(config.users.map((u) => [u.email.toLowerCase(), u]));

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!doctype html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>`
  + `<body><h1>${escape(title)}</h1>${body}</body></html>`;

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 65536) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

let provider;

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, page('Bad interaction', ''));
  const { prompt, params, session } = details;
  if (req.method === 'GET') {
    if (prompt.name === 'login') {
      return send(res, 200, page('Sign in to the test provider',
        `<form method="post" action="/interaction/${escape(uid)}/login">`
        + '<label>E-mail <input name="email" type="email" autocomplete="username"></label>'
        + '<label>Password <input name="password" type="password"></label>'
        + '<button type="submit">Sign in</button></form>'));
    }
    return send(res, 200, page('Allow access',
      `<p>${escape(params.client_id)} asks for: ${escape(params.scope)}</p>`
      + `<form method="post" action="/interaction/${escape(uid)}/confirm">`
      + '<button type="submit">Allow</button></form>'));
  }
  if (action === 'login' && prompt.name === 'login') {
    const form = await readForm(req);
    const user = users.get((form.get('email') || '').toLowerCase());
    if (!user || user.password !== form.get('password')) {
      return send(res, 401, page('Wrong e-mail or password', `<a href="/interaction/${escape(uid)}">Try again</a>`));
    }
    return provider.interactionFinished(req, res, { login: { accountId: user.email } },
      { mergeWithLastSubmission: false });
  }
  if (action === 'confirm' && prompt.name === 'consent') {
    const grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { details: missing } = prompt;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } },
      { mergeWithLastSubmission: true });
  }
  return send(res, 400, page('Unexpected step', ''));
}

async function handler(req, res) {
  const match = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm))?$/.exec(req.url.split('?')[0]);
  if (!match) return provider.callback()(req, res);
  try {
    await interaction(req, res, match[1], match[2]);
  } catch (err) {
    const status = err instanceof errors.SessionNotFound ? 400 : 500;
    send(res, status, page('Interaction failed', `<p>${escape(err.message)}</p>`));
  }
}

const server = config.tls
  ? https.createServer({ cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) }, handler)
  : http.createServer(handler);

server.listen(0, '127.0.0.1', async () => {
  const issuer = `${config.tls ? 'https' : 'http'}://127.0.0.1:${server.address().port}`;
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'RS256', use: 'sig', kid: 'test-key-1' };
  provider = new Provider(issuer, {
    clients: config.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      redirect_uris: c.redirect_uris,
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    jwks: { keys: [jwk] },
    cookies: { keys: ['adit-test-provider-cookie-key'] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
    // The ID token carries the requested claims (email, groups), as most providers' do.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, i) => `/interaction/${i.uid}` },
    findAccount: (ctx, id) => {
      const user = users.get(id);
      if (!user) return undefined;
      return {
        accountId: id,
        claims: async () => ({ sub: id, email: user.email, email_verified: true, groups: user.groups }),
      };
    },
  });
  // The tests read this line: the provider is ready at ISSUER.
  process.stdout.write(`oidc-provider listening ${issuer}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
