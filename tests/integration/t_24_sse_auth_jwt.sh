#!/usr/bin/env bash
# Gateway authorization with JWTs from a JWKS file: tokens minted by another JOSE
# implementation (npm jose) for HS256, RS256, PS256, ES256 and EdDSA are accepted only
# for the runs they name (exact, prefix*, *); the hostile corpus gets 401 with
# WWW-Authenticate invalid_token and not one byte of the run's events; a good token
# without the run gets 403 insufficient_scope; the token is read from Bearer, cookie and
# (only when enabled) ?access_token=, and never appears in the log; public runs, CORS
# and the secure default (a non-loopback --listen without auth exits 2).
. "$(dirname "$0")/lib.sh"
new_db
keys="$WORK/keys"
jose_keys "$keys"
for i in 1 2 3; do "$OUTBOXD" emit secret-1 "{\"i\":$i}" >/dev/null; done
"$OUTBOXD" emit secret-2 '{"i":1}' >/dev/null
"$OUTBOXD" emit tenant-7/a '{"i":1}' >/dev/null
"$OUTBOXD" emit pub-1 '{"i":1}' >/dev/null
start_relay relay
wait_drained 10

# ---- the secure default -------------------------------------------------------------
rc=0
"$OUTBOXD" sse --listen "0.0.0.0:$(pick_port)" >"$WORK/open.log" 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "--listen 0.0.0.0 without auth exited $rc, want 2"
grep -q -- "--allow-anonymous" "$WORK/open.log" || fail "the refusal does not name --allow-anonymous: $(cat "$WORK/open.log")"
rc=0
"$OUTBOXD" sse --listen "[::]:$(pick_port)" >"$WORK/open6.log" 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "--listen [::] without auth exited $rc, want 2"
rc=0
OUTBOXD_AUTH=jwt "$OUTBOXD" sse --listen "0.0.0.0:$(pick_port)" >"$WORK/nokeys.log" 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "--auth jwt without keys exited $rc, want 2"
echo '{"keys":[{"kty":"oct","kid":"x","alg":"HS256","k":"c2hvcnQ"}]}' >"$WORK/weak.json"
rc=0
"$OUTBOXD" sse --listen "127.0.0.1:$(pick_port)" --auth jwt --auth-jwks "$WORK/weak.json" >"$WORK/weak.log" 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "a JWKS with a 5-byte HMAC key exited $rc, want 2"
grep -q "shorter" "$WORK/weak.log" || fail "the weak key's refusal does not say why: $(cat "$WORK/weak.log")"
p=$(pick_port)
"$OUTBOXD" sse --listen "0.0.0.0:$p" --allow-anonymous >"$WORK/anon.log" 2>&1 &
anon=$!
PIDS+=("$anon")
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$p/healthz" && break; sleep 0.05; done
[[ $(http_code "http://127.0.0.1:$p/healthz") == 200 ]] || fail "--allow-anonymous did not let it listen on 0.0.0.0"
kill -TERM "$anon"; wait "$anon" || fail "anonymous gateway did not exit 0"

# ---- tokens ----------------------------------------------------------------------------
c='"aud":"outboxd","iss":"https://issuer.test","exp":"+120"'
mint "$keys" <<SPEC
hs sign hs {$c,"sub":"u1","jti":"t-hs","runs":["secret-1"]}
rs sign rs {$c,"runs":["secret-1"]}
ps sign ps {$c,"runs":["secret-1"]}
es sign es {$c,"runs":["secret-1"]}
ed sign ed {$c,"runs":["secret-1"]}
prefix sign es {$c,"runs":["tenant-7/*"]}
star sign ed {$c,"runs":["*"]}
other sign rs {$c,"runs":["secret-2","secret-10"]}
none_runs sign hs {$c}
expired sign hs {"aud":"outboxd","iss":"https://issuer.test","exp":"-120","runs":["secret-1"]}
future sign hs {$c,"nbf":"+3600","runs":["secret-1"]}
wrong_aud sign hs {"aud":"someone-else","iss":"https://issuer.test","exp":"+120","runs":["secret-1"]}
wrong_iss sign hs {"aud":"outboxd","iss":"https://evil.test","exp":"+120","runs":["secret-1"]}
no_exp sign hs {"aud":"outboxd","iss":"https://issuer.test","runs":["secret-1"]}
alg_none hostile alg_none {$c,"runs":["secret-1"]}
hs_rsa_pem hostile hs256_with_rsa_pem {$c,"runs":["secret-1"]}
unknown_kid hostile unknown_kid {$c,"runs":["secret-1"]}
payload_changed hostile payload_changed {$c,"runs":["secret-2"]}
signature_changed hostile signature_changed {$c,"runs":["secret-1"]}
truncated hostile truncated {$c,"runs":["secret-1"]}
bad_base64url hostile bad_base64url {$c,"runs":["secret-1"]}
duplicate_exp hostile duplicate_exp {$c,"runs":["secret-1"]}
huge hostile huge {$c,"runs":["secret-1"]}
es256_der hostile es256_der {$c,"runs":["secret-1"]}
SPEC

start_sse gw --auth jwt --auth-jwks "$keys/jwks.json" --auth-audience outboxd --auth-issuer https://issuer.test \
  --auth-cookie obx_token --auth-query-token --public-runs pub- --cors-origin https://app.test,https://other.test \
  --log-level debug
base="http://127.0.0.1:$SSE_PORT"

# Accepted: every algorithm, for the run it names, with all its events.
for k in hs rs ps es ed star; do
  code=$(stream_code "$base/runs/secret-1/events" '^id: 3$' --max-time 2 -H "Authorization: Bearer ${TOK[$k]}")
  [[ $code == 200 ]] || fail "$k token refused ($code): $(cat "$WORK/body")"
  [[ $(grep '^id: ' "$WORK/body" | paste -sd,) == "id: 1,id: 2,id: 3" ]] || fail "$k token: events $(cat "$WORK/body")"
done
code=$(stream_code "$base/runs/tenant-7%2Fa/events" '^id: 1$' --max-time 2 -H "Authorization: Bearer ${TOK[prefix]}")
[[ $code == 200 ]] && grep -q '^id: 1' "$WORK/body" || fail "prefix token refused for tenant-7/a ($code)"
info "HS256, RS256, PS256, ES256, EdDSA (jose), prefix and * tokens accepted"

# 403: good tokens that do not cover the run.
for k in other none_runs prefix; do
  code=$(http_code "$base/runs/secret-1/events" -H "Authorization: Bearer ${TOK[$k]}")
  [[ $code == 403 ]] || fail "$k token on secret-1: $code, want 403"
  grep -qi '^www-authenticate: Bearer error="insufficient_scope"' "$WORK/headers" || fail "403 without insufficient_scope"
  grep -q '^id:\|^data:' "$WORK/body" && fail "403 carried event bytes"
done
code=$(stream_code "$base/runs/secret-10/events" '^: stream of run events' --max-time 2 -H "Authorization: Bearer ${TOK[other]}")
[[ $code == 200 ]] || fail "exact entry secret-10 refused ($code)"

# 401: the hostile corpus, and no token at all. Not one event byte.
(( ${#TOK[huge]} > 100000 )) || fail "the huge token is only ${#TOK[huge]} bytes"
for k in expired future wrong_aud wrong_iss no_exp alg_none hs_rsa_pem unknown_kid payload_changed \
  signature_changed truncated bad_base64url duplicate_exp huge es256_der; do
  # From a file: a 100 KB token is longer than one command-line argument may be.
  printf 'Authorization: Bearer %s\n' "${TOK[$k]}" >"$WORK/auth.hdr"
  code=$(http_code "$base/runs/secret-1/events" -H @"$WORK/auth.hdr")
  [[ $code == 401 ]] || fail "hostile token $k: $code, want 401"
  grep -qi '^www-authenticate: Bearer error="invalid_token"' "$WORK/headers" || fail "$k: 401 without invalid_token"
  grep -q '^id:\|^data:\|"i"' "$WORK/body" && fail "hostile token $k got event bytes: $(head -c 200 "$WORK/body")"
done
# A 100 KB token in a cookie and in the query too (headers are capped before we see them).
code=$(http_code "$base/runs/secret-1/events?access_token=${TOK[huge]:0:9000}")
[[ $code == 401 ]] || fail "a 9000-byte query token: $code, want 401"
[[ $(http_code "$base/runs/secret-1/events") == 401 ]] || fail "no token: not 401"
grep -qi '^www-authenticate: Bearer error="invalid_token"' "$WORK/headers" || fail "no-token 401 without WWW-Authenticate"
[[ $(http_code "$base/runs/secret-1/events" -H "Authorization: Basic dTpw") == 401 ]] || fail "Basic auth not 401"
info "hostile corpus: 401 (or 403) and no event bytes"

# Where the token comes from: cookie, query (enabled here), Bearer first.
[[ $(stream_code "$base/runs/secret-1/events" '^id: 3$' --max-time 2 -H "Cookie: a=b; obx_token=${TOK[es]}; c=d") == 200 ]] ||
  fail "cookie token refused"
[[ $(stream_code "$base/runs/secret-1/events?last_event_id=2&access_token=${TOK[ed]}" '^id: 3$' --max-time 1) == 200 ]] ||
  fail "query token refused"
[[ $(grep '^id: ' "$WORK/body" | paste -sd,) == "id: 3" ]] || fail "query token with last_event_id: $(cat "$WORK/body")"
[[ $(http_code "$base/runs/secret-1/events" -H "Authorization: Bearer ${TOK[expired]}" -H "Cookie: obx_token=${TOK[hs]}") == 401 ]] ||
  fail "a bad Bearer token must not fall back to the cookie"

# Public runs need no token.
[[ $(stream_code "$base/runs/pub-1/events" '^id: 1$' --max-time 1) == 200 ]] && grep -q '^id: 1' "$WORK/body" || fail "public run refused"

# CORS: listed origins with credentials, others nothing; preflight answered.
code=$(http_code "$base/runs/secret-1/events" -X OPTIONS -H "Origin: https://app.test" \
  -H "Access-Control-Request-Headers: authorization")
[[ $code == 204 ]] || fail "preflight: $code"
grep -qi '^access-control-allow-origin: https://app.test' "$WORK/headers" || fail "preflight: no allow-origin"
grep -qi '^access-control-allow-credentials: true' "$WORK/headers" || fail "preflight: no credentials"
grep -qi '^access-control-allow-headers:.*authorization' "$WORK/headers" || fail "preflight: Authorization not allowed"
grep -qi '^vary: origin' "$WORK/headers" || fail "no Vary: Origin"
http_code "$base/runs/secret-1/events" -X OPTIONS -H "Origin: https://evil.test" >/dev/null
grep -qi '^access-control-allow' "$WORK/headers" && fail "an unlisted origin got CORS headers"
grep -qi '^vary: origin' "$WORK/headers" || fail "no Vary: Origin for an unlisted origin"

# Without --auth-query-token the query is not a token source.
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway did not exit 0"
for k in "${!TOK[@]}"; do
  grep -qF -- "${TOK[$k]:20:40}" "$WORK/gw.log" && fail "token $k appears in the log"
done
start_sse noquery --auth jwt --auth-jwks "$keys/jwks.json" --auth-audience outboxd
[[ $(http_code "http://127.0.0.1:$SSE_PORT/runs/secret-1/events?access_token=${TOK[ed]}") == 401 ]] ||
  fail "query token accepted without --auth-query-token"
curl -s "http://127.0.0.1:$SSE_PORT/metrics" >"$WORK/metrics"
grep -q '^outboxd_sse_auth_denials_total{reason="no_token"} 1' "$WORK/metrics" || fail "denial metric: $(grep denials "$WORK/metrics")"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway did not exit 0"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
