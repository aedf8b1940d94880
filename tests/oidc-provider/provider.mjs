// Minimal, real OpenID Connect provider for the CRM API end-to-end tests.
//
// NOT FOR PRODUCTION: keys live in memory, storage is in memory, and a login is
// completed without any user interaction from the `login_hint` parameter.
//
// Usage:
//   OIDC_CONFIG='{"port":0,"issuer":null,"clients":[...],"accounts":{...}}' node provider.mjs
//
// Config (JSON in the OIDC_CONFIG environment variable):
//   port      listen port on 127.0.0.1; 0 (default) picks a free port.
//   issuer    null (default): the issuer is http://127.0.0.1:PORT.
//             A string: the provider advertises that issuer (discovery `issuer`,
//             ID token `iss`, authorization response `iss`) while still being
//             served at http://127.0.0.1:PORT (for the issuer-mismatch test).
//   clients   array of client metadata; client_id, client_secret, redirect_uris
//             required. Defaults: response_types ["code"], grant_types
//             ["authorization_code","refresh_token"], token_endpoint_auth_method
//             "client_secret_basic", id_token_signed_response_alg "RS256".
//             Any other field is passed through to oidc-provider (e.g.
//             "token_endpoint_auth_method":"client_secret_post").
//   accounts  object: account id (the `sub`) -> claims (email, email_verified,
//             name, given_name, family_name, preferred_username, ...).
//   keep_sessions  false (default): the provider ignores the `_session` cookie
//             sent by the client, so every authorization request goes through
//             the interaction and the login_hint alone decides who logs in.
//             true: normal OP session behaviour (SSO across requests).
//   ttl       optional object overriding token lifetimes in seconds
//             (AuthorizationCode, AccessToken, IdToken, RefreshToken,
//             Interaction, Session, Grant).
//
// Once listening, exactly one line is written to stdout:
//   {"issuer":"<advertised issuer>","port":PORT,"base_url":"http://127.0.0.1:PORT"}
// Everything else (oidc-provider notices and warnings, errors) goes to stderr.
// SIGTERM / SIGINT exit with status 0.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

// oidc-provider prints its development NOTICEs with console.info (stdout);
// stdout is reserved for the single machine-readable line below.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { default: Provider } = await import('oidc-provider');

function fail(msg) {
  process.stderr.write(`provider.mjs: ${msg}\n`);
  process.exit(2);
}

let config;
try {
  config = JSON.parse(process.env.OIDC_CONFIG ?? '');
} catch (err) {
  fail(`OIDC_CONFIG must hold a JSON object: ${err.message}`);
}
if (!config || typeof config !== 'object' || Array.isArray(config)) {
  fail('OIDC_CONFIG must hold a JSON object');
}

const port = config.port ?? 0;
const accounts = config.accounts ?? {};
const keepSessions = config.keep_sessions === true;
if (!Number.isInteger(port) || port < 0 || port > 65535) fail('port must be an integer 0..65535');
if (typeof accounts !== 'object' || Array.isArray(accounts)) fail('accounts must be an object');
if (config.issuer != null && typeof config.issuer !== 'string') fail('issuer must be null or a string');
if (!Array.isArray(config.clients ?? [])) fail('clients must be an array');

const clients = (config.clients ?? []).map((c) => ({
  response_types: ['code'],
  grant_types: ['authorization_code', 'refresh_token'],
  token_endpoint_auth_method: 'client_secret_basic',
  id_token_signed_response_alg: 'RS256',
  ...c,
}));

// One RS256 signing key, generated per run, never written to disk.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `test-${crypto.randomBytes(6).toString('hex')}`,
  alg: 'RS256',
  use: 'sig',
};

const ttl = {
  AuthorizationCode: 60,
  AccessToken: 600,
  ClientCredentials: 600,
  IdToken: 600,
  RefreshToken: 3600,
  Interaction: 600,
  Session: 3600,
  Grant: 3600,
  ...(config.ttl ?? {}),
};

const SESSION_COOKIES = new Set(['_session', '_session.sig', '_session.legacy', '_session.legacy.sig']);

function stripSessionCookies(req) {
  const header = req.headers.cookie;
  if (!header) return;
  const kept = header
    .split(';')
    .map((p) => p.trim())
    .filter((p) => p && !SESSION_COOKIES.has(p.split('=', 1)[0]));
  if (kept.length) req.headers.cookie = kept.join('; ');
  else delete req.headers.cookie;
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Length', Buffer.byteLength(text));
  res.end(text);
}

let provider;

// GET /interaction/:uid — finish the login for the account named by
// login_hint and grant every requested scope, then 303 back to /auth/:uid.
async function handleInteraction(req, res, uid) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    // Missing/expired `_interaction` cookie or unknown interaction.
    sendJson(res, 400, { error: err.error ?? 'invalid_request', error_description: err.error_description ?? err.message });
    return;
  }
  if (details.uid !== uid) {
    sendJson(res, 400, { error: 'invalid_request', error_description: 'interaction cookie does not match the URL' });
    return;
  }

  const { params, prompt } = details;
  const accountId = params.login_hint;
  if (typeof accountId !== 'string' || !Object.hasOwn(accounts, accountId)) {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: accountId ? 'unknown login_hint' : 'login_hint is required by this test provider',
    }, { mergeWithLastSubmission: false });
    return;
  }

  let grant;
  if (details.grantId) {
    grant = await provider.Grant.find(details.grantId);
  }
  if (!grant || grant.accountId !== accountId || grant.clientId !== params.client_id) {
    grant = new provider.Grant({ accountId, clientId: params.client_id });
  }
  if (params.scope) grant.addOIDCScope(params.scope);
  const missingClaims = prompt?.details?.missingOIDCClaims;
  if (Array.isArray(missingClaims) && missingClaims.length) grant.addOIDCClaims(missingClaims);
  const missingResourceScopes = prompt?.details?.missingResourceScopes;
  if (missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();

  await provider.interactionFinished(req, res, {
    login: { accountId, remember: false },
    consent: { grantId },
  }, { mergeWithLastSubmission: false });
}

const server = http.createServer((req, res) => {
  if (!keepSessions) stripSessionCookies(req);
  const { pathname } = new URL(req.url, 'http://127.0.0.1');
  const m = /^\/interaction\/([A-Za-z0-9_-]+)$/.exec(pathname);
  if (m) {
    if (req.method !== 'GET') {
      res.setHeader('Allow', 'GET');
      sendJson(res, 405, { error: 'invalid_request', error_description: 'method not allowed' });
      return;
    }
    handleInteraction(req, res, m[1]).catch((err) => {
      process.stderr.write(`interaction error: ${err.stack ?? err}\n`);
      if (!res.headersSent) sendJson(res, 500, { error: 'server_error', error_description: err.message });
      else res.end();
    });
    return;
  }
  provider.callback()(req, res);
});

server.listen(port, '127.0.0.1', () => {
  const actualPort = server.address().port;
  const baseUrl = `http://127.0.0.1:${actualPort}`;
  const issuer = typeof config.issuer === 'string' ? config.issuer : baseUrl;

  provider = new Provider(issuer, {
    clients,
    jwks: { keys: [signingJwk] },
    async findAccount(ctx, sub) {
      if (!Object.hasOwn(accounts, sub)) return undefined;
      const data = accounts[sub] ?? {};
      return {
        accountId: sub,
        async claims() {
          return { ...data, sub };
        },
      };
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username', 'locale', 'picture'],
    },
    scopes: ['openid', 'email', 'profile', 'offline_access'],
    // Put the scope-derived claims (email, email_verified, name) in the ID token
    // returned by the token endpoint, so the RP needs no userinfo call.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: true },
      revocation: { enabled: false },
      introspection: { enabled: false },
    },
    interactions: {
      url(ctx, interaction) {
        return `/interaction/${interaction.uid}`;
      },
    },
    clientBasedCORS: () => false,
    ttl,
    async renderError(ctx, out) {
      ctx.type = 'application/json; charset=utf-8';
      ctx.body = JSON.stringify(out);
    },
  });
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`server_error: ${err.stack ?? err}\n`);
  });

  process.stdout.write(`${JSON.stringify({ issuer, port: actualPort, base_url: baseUrl })}\n`);
});

server.on('error', (err) => fail(`listen failed: ${err.message}`));

function shutdown() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
