#!/usr/bin/env bash
# Smoke test of provider.mjs with curl only (plus openssl for PKCE and node for
# JSON): discovery, authorization code flow with PKCE S256 and login_hint,
# token exchange with client_secret_basic, ID token checks, code replay,
# and a few negative cases. Run `npm ci` in this folder first.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

PASS=0
FAIL=0
ok()   { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad()  { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
check() { local desc="$1"; shift; if "$@"; then ok "$desc"; else bad "$desc"; fi; }
die()  { echo "FATAL: $*" >&2; exit 1; }

# json FILE EXPR: evaluate a JS expression on the parsed JSON `j` (prints '' for undefined).
json() {
  node -e '
    const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const v = (0, eval)("(j) => (" + process.argv[2] + ")")(j);
    process.stdout.write(v === undefined || v === null ? "" : (typeof v === "string" ? v : JSON.stringify(v)));
  ' "$1" "$2"
}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
urlenc() { node -e 'process.stdout.write(encodeURIComponent(process.argv[1]))' "$1"; }
# query_param URL NAME
query_param() { node -e 'const u = new URL(process.argv[1]); process.stdout.write(u.searchParams.get(process.argv[2]) ?? "")' "$1" "$2"; }

CLIENT_ID=crm
CLIENT_SECRET=s3cret-long-enough-32-chars-xxxxx
REDIRECT_URI=http://127.0.0.1:5555/v1/auth/sso/acme/callback

make_config() { # $1 = issuer JSON value (null or "\"...\"")
  cat <<EOF
{"port":0, "issuer": $1,
 "clients":[{"client_id":"$CLIENT_ID","client_secret":"$CLIENT_SECRET","redirect_uris":["$REDIRECT_URI"]}],
 "accounts": {"alice": {"email":"alice@example.com","email_verified":true,"name":"Alice A"},
              "bob": {"email":"bob@other.test","email_verified":false}}}
EOF
}

# start_provider NAME ISSUER_JSON -> sets BASE, ISSUER
start_provider() {
  local name="$1" out="$WORK/$1.out" err="$WORK/$1.err"
  OIDC_CONFIG="$(make_config "$2")" node "$HERE/provider.mjs" >"$out" 2>"$err" &
  PIDS+=("$!")
  for _ in $(seq 1 100); do
    [ -s "$out" ] && break
    sleep 0.1
  done
  [ -s "$out" ] || { cat "$err" >&2; die "provider $name did not print its line"; }
  echo "provider $name line: $(head -n1 "$out")"
  [ "$(wc -l <"$out")" -eq 1 ] || die "provider $name printed more than one line on stdout"
  head -n1 "$out" >"$WORK/$name.line.json"
  BASE="$(json "$WORK/$name.line.json" 'j.base_url')"
  ISSUER="$(json "$WORK/$name.line.json" 'j.issuer')"
}

# follow_to_redirect_uri START_URL JAR -> sets FINAL_LOCATION; logs each hop
follow_to_redirect_uri() {
  local url="$1" jar="$2" hop=0 status loc sent
  FINAL_LOCATION=""
  while [ $hop -lt 10 ]; do
    hop=$((hop + 1))
    curl -sS -v -o "$WORK/body" -D "$WORK/headers" -b "$jar" -c "$jar" "$url" 2>"$WORK/trace"
    status="$(head -n1 "$WORK/headers" | awk '{print $2}')"
    loc="$(grep -i '^location:' "$WORK/headers" | head -n1 | cut -d' ' -f2- | tr -d '\r')"
    sent="$(grep -i '^> cookie:' "$WORK/trace" | cut -d' ' -f3- | tr -d '\r' | sed 's/=[^;]*/=…/g')"
    echo "  hop $hop: GET ${url%%\?*}$([ "$url" != "${url%%\?*}" ] && echo '?…') cookies-sent=[${sent}] -> $status"
    grep -i '^set-cookie:' "$WORK/headers" | sed 's/^/           /; s/\r$//' | sed -E 's/(=[A-Za-z0-9_-]{4})[A-Za-z0-9_-]+/\1…/'
    case "$status" in
      302|303) ;;
      *) echo "  body: $(cat "$WORK/body")"; return 1 ;;
    esac
    [ -n "$loc" ] || return 1
    case "$loc" in
      /*) loc="$BASE$loc" ;;
    esac
    if [ "${loc#"$REDIRECT_URI"}" != "$loc" ]; then
      echo "  -> Location is the redirect_uri: $loc"
      FINAL_LOCATION="$loc"
      return 0
    fi
    url="$loc"
  done
  return 1
}

# ---------------------------------------------------------------------------
echo "# main flow"
start_provider main null
check "issuer line is http://127.0.0.1:PORT" [ "$ISSUER" = "$BASE" ]

curl -sS -f "$BASE/.well-known/openid-configuration" -o "$WORK/disco.json"
check "discovery issuer matches" [ "$(json "$WORK/disco.json" 'j.issuer')" = "$ISSUER" ]
AUTHZ="$(json "$WORK/disco.json" 'j.authorization_endpoint')"
TOKEN="$(json "$WORK/disco.json" 'j.token_endpoint')"
JWKS="$(json "$WORK/disco.json" 'j.jwks_uri')"
echo "  authorization_endpoint=$AUTHZ token_endpoint=$TOKEN jwks_uri=$JWKS"
check "discovery advertises S256" [ "$(json "$WORK/disco.json" 'j.code_challenge_methods_supported.join(",")')" = "S256" ]
check "discovery advertises RFC 9207 iss" [ "$(json "$WORK/disco.json" 'j.authorization_response_iss_parameter_supported')" = "true" ]

VERIFIER="$(openssl rand 48 | b64url)"
CHALLENGE="$(printf '%s' "$VERIFIER" | openssl dgst -sha256 -binary | b64url)"
STATE="st-$(openssl rand -hex 8)"
NONCE="n-$(openssl rand -hex 8)"

auth_url() { # $1 = login_hint, $2 = extra query (optional)
  echo "$AUTHZ?response_type=code&client_id=$CLIENT_ID&redirect_uri=$(urlenc "$REDIRECT_URI")&scope=$(urlenc 'openid email profile')&state=$STATE&nonce=$NONCE&code_challenge=$CHALLENGE&code_challenge_method=S256&login_hint=$1${2:-}"
}

JAR="$WORK/jar1"
if follow_to_redirect_uri "$(auth_url alice)" "$JAR"; then ok "login flow reached the redirect_uri"; else bad "login flow reached the redirect_uri"; fi
CODE="$(query_param "$FINAL_LOCATION" code)"
check "authorization response has a code" [ -n "$CODE" ]
check "authorization response state matches" [ "$(query_param "$FINAL_LOCATION" state)" = "$STATE" ]
check "authorization response iss (RFC 9207) is the issuer" [ "$(query_param "$FINAL_LOCATION" iss)" = "$ISSUER" ]

STATUS="$(curl -sS -o "$WORK/token.json" -w '%{http_code}' -u "$CLIENT_ID:$CLIENT_SECRET" \
  --data-urlencode grant_type=authorization_code --data-urlencode "code=$CODE" \
  --data-urlencode "redirect_uri=$REDIRECT_URI" --data-urlencode "code_verifier=$VERIFIER" "$TOKEN")"
echo "  token response ($STATUS): $(json "$WORK/token.json" 'Object.fromEntries(Object.entries(j).map(([k, v]) => [k, typeof v === "string" && v.length > 24 ? v.slice(0, 12) + "…" : v]))')"
check "token exchange returns 200" [ "$STATUS" = 200 ]
ID_TOKEN="$(json "$WORK/token.json" 'j.id_token')"
check "token response has token_type Bearer" [ "$(json "$WORK/token.json" 'j.token_type')" = Bearer ]
check "token response has an id_token" [ -n "$ID_TOKEN" ]

node -e 'const [h, p] = process.argv[1].split("."); for (const [f, s] of [["header", h], ["payload", p]]) require("fs").writeFileSync(process.argv[2] + "/idt." + f + ".json", Buffer.from(s, "base64url"))' "$ID_TOKEN" "$WORK"
echo "  id_token header:  $(cat "$WORK/idt.header.json")"
echo "  id_token payload: $(cat "$WORK/idt.payload.json")"
check "id_token alg is RS256" [ "$(json "$WORK/idt.header.json" 'j.alg')" = RS256 ]
check "id_token iss" [ "$(json "$WORK/idt.payload.json" 'j.iss')" = "$ISSUER" ]
check "id_token aud" [ "$(json "$WORK/idt.payload.json" 'Array.isArray(j.aud) ? j.aud.join(",") : j.aud')" = "$CLIENT_ID" ]
check "id_token sub" [ "$(json "$WORK/idt.payload.json" 'j.sub')" = alice ]
check "id_token nonce" [ "$(json "$WORK/idt.payload.json" 'j.nonce')" = "$NONCE" ]
check "id_token email" [ "$(json "$WORK/idt.payload.json" 'j.email')" = alice@example.com ]
check "id_token email_verified" [ "$(json "$WORK/idt.payload.json" 'j.email_verified')" = true ]
check "id_token name" [ "$(json "$WORK/idt.payload.json" 'j.name')" = "Alice A" ]

curl -sS -f "$JWKS" -o "$WORK/jwks.json"
if node -e '
  const crypto = require("crypto");
  const jwks = JSON.parse(require("fs").readFileSync(process.argv[2], "utf8"));
  const [h, p, s] = process.argv[1].split(".");
  const { kid } = JSON.parse(Buffer.from(h, "base64url"));
  const jwk = jwks.keys.find((k) => k.kid === kid);
  const ok = jwk && crypto.verify("sha256", Buffer.from(h + "." + p), crypto.createPublicKey({ key: jwk, format: "jwk" }), Buffer.from(s, "base64url"));
  process.exit(ok ? 0 : 1);
' "$ID_TOKEN" "$WORK/jwks.json"; then ok "id_token signature verifies with jwks_uri"; else bad "id_token signature verifies with jwks_uri"; fi

STATUS="$(curl -sS -o "$WORK/token2.json" -w '%{http_code}' -u "$CLIENT_ID:$CLIENT_SECRET" \
  --data-urlencode grant_type=authorization_code --data-urlencode "code=$CODE" \
  --data-urlencode "redirect_uri=$REDIRECT_URI" --data-urlencode "code_verifier=$VERIFIER" "$TOKEN")"
echo "  replayed code ($STATUS): $(cat "$WORK/token2.json")"
check "replayed code is rejected with 400 invalid_grant" [ "$STATUS:$(json "$WORK/token2.json" 'j.error')" = "400:invalid_grant" ]

# ---------------------------------------------------------------------------
echo "# negative cases"
# Wrong code_verifier.
JAR="$WORK/jar2"
follow_to_redirect_uri "$(auth_url alice)" "$JAR" >/dev/null || true
CODE2="$(query_param "$FINAL_LOCATION" code)"
STATUS="$(curl -sS -o "$WORK/token3.json" -w '%{http_code}' -u "$CLIENT_ID:$CLIENT_SECRET" \
  --data-urlencode grant_type=authorization_code --data-urlencode "code=$CODE2" \
  --data-urlencode "redirect_uri=$REDIRECT_URI" --data-urlencode "code_verifier=$(openssl rand 48 | b64url)" "$TOKEN")"
check "wrong code_verifier is rejected with 400 invalid_grant" [ "$STATUS:$(json "$WORK/token3.json" 'j.error')" = "400:invalid_grant" ]

# Same cookie jar, now bob: the old _session cookie is ignored, bob logs in.
follow_to_redirect_uri "$(auth_url bob)" "$JAR" >/dev/null || true
CODE3="$(query_param "$FINAL_LOCATION" code)"
STATUS="$(curl -sS -o "$WORK/token4.json" -w '%{http_code}' -d client_id=$CLIENT_ID -d client_secret=$CLIENT_SECRET \
  --data-urlencode grant_type=authorization_code --data-urlencode "code=$CODE3" \
  --data-urlencode "redirect_uri=$REDIRECT_URI" --data-urlencode "code_verifier=$VERIFIER" "$TOKEN")"
# oidc-provider treats client_secret_basic and client_secret_post as interchangeable.
check "client_secret_post is also accepted for a client_secret_basic client" [ "$STATUS" = 200 ]
node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1])); require("fs").writeFileSync(process.argv[1] + ".p", Buffer.from(j.id_token.split(".")[1], "base64url"))' "$WORK/token4.json"
echo "  bob id_token payload: $(cat "$WORK/token4.json.p")"
check "reused jar + login_hint=bob gives sub=bob, email_verified=false" \
  [ "$STATUS:$(json "$WORK/token4.json.p" 'j.sub + "/" + j.email + "/" + j.email_verified')" = "200:bob/bob@other.test/false" ]

# Unknown login_hint -> access_denied at the redirect_uri.
follow_to_redirect_uri "$(auth_url mallory)" "$WORK/jar3" >/dev/null || true
check "unknown login_hint ends with error=access_denied at the redirect_uri" \
  [ "$(query_param "$FINAL_LOCATION" error):$(query_param "$FINAL_LOCATION" state)" = "access_denied:$STATE" ]

# No PKCE -> error at the redirect_uri, no code.
NOPKCE="$AUTHZ?response_type=code&client_id=$CLIENT_ID&redirect_uri=$(urlenc "$REDIRECT_URI")&scope=openid&state=$STATE&nonce=$NONCE&login_hint=alice"
LOC="$(curl -sS -o /dev/null -w '%{redirect_url}' "$NOPKCE")"
echo "  no PKCE -> $LOC"
check "authorization request without code_challenge is rejected (invalid_request)" \
  [ "$(query_param "$LOC" error):$(query_param "$LOC" code)" = "invalid_request:" ]

# Without cookies the interaction cannot be finished.
LOC="$(curl -sS -o /dev/null -w '%{redirect_url}' "$(auth_url alice)")"
STATUS="$(curl -sS -o "$WORK/nocookie.json" -w '%{http_code}' "$LOC")"
echo "  GET /interaction/:uid without cookie ($STATUS): $(cat "$WORK/nocookie.json")"
check "interaction without the _interaction cookie is rejected (400)" [ "$STATUS" = 400 ]

# ---------------------------------------------------------------------------
echo "# issuer override"
start_provider wrong '"https://wrong-issuer.example"'
check "line reports the advertised issuer" [ "$ISSUER" = "https://wrong-issuer.example" ]
curl -sS -f "$BASE/.well-known/openid-configuration" -o "$WORK/disco2.json"
check "discovery at $BASE advertises the other issuer" [ "$(json "$WORK/disco2.json" 'j.issuer')" = "https://wrong-issuer.example" ]
check "its endpoints still point at $BASE" [ "$(json "$WORK/disco2.json" 'j.token_endpoint')" = "$BASE/token" ]

# ---------------------------------------------------------------------------
for p in "${PIDS[@]}"; do kill -TERM "$p"; done
for p in "${PIDS[@]}"; do
  if wait "$p"; then ok "provider $p exited 0 on SIGTERM"; else bad "provider $p exited non-zero on SIGTERM"; fi
done
PIDS=()

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
