#!/usr/bin/env bash
# Key rotation without a restart. JWKS file: SIGHUP (passed on to every worker) loads a
# rotated file (tokens with the new kid are accepted); a broken file keeps the old keys
# working and says why.
# JWKS URL (HTTPS, verified against a test CA): keys are fetched, refreshed on the
# document's max-age and when a token names an unknown kid (that token waits for the
# look; at most one look per 30 s), kept when the URL fails; an untrusted certificate
# loads nothing.
. "$(dirname "$0")/lib.sh"
new_db
"$OUTBOXD" emit keys-1 '{"i":1}' >/dev/null
start_relay relay
wait_drained 10
jose_keys "$WORK/a" a-
jose_keys "$WORK/b" b-
jose_keys "$WORK/c" c-
jose_keys "$WORK/d" d-
c='"runs":["keys-1"],"exp":"+300"'
for k in a b c d; do
  mint "$WORK/$k" <<SPEC
$k sign $k-es {$c}
${k}ed sign $k-ed {$c}
SPEC
done
merge() { node -e 'const fs=require("fs");const k=[];for(const f of process.argv.slice(1))k.push(...JSON.parse(fs.readFileSync(f)).keys);console.log(JSON.stringify({keys:k}))' "$@"; }

# ---- the file, and SIGHUP ---------------------------------------------------------------
cp "$WORK/a/jwks.json" "$WORK/keys.json"
start_sse file --auth jwt --auth-jwks "$WORK/keys.json" --workers 2
url="http://127.0.0.1:$SSE_PORT/runs/keys-1/events"
stream_ok "$url" "${TOK[a]}" || fail "key a refused"
[[ $(http_code "$url" -H "Authorization: Bearer ${TOK[b]}") == 401 ]] || fail "key b accepted before rotation"
merge "$WORK/a/jwks.json" "$WORK/b/jwks.json" >"$WORK/keys.json.new" && mv "$WORK/keys.json.new" "$WORK/keys.json"
kill -HUP "$SSE_PID"
wait_log "$WORK/file.log" "reloaded 10 key(s)" 5 2 # each worker
stream_ok "$url" "${TOK[b]}" || fail "rotated key b refused after SIGHUP"
stream_ok "$url" "${TOK[aed]}" || fail "key a refused after SIGHUP"
echo '{"keys":[{"kty":"oct"' >"$WORK/keys.json"
kill -HUP "$SSE_PID"
wait_log "$WORK/file.log" "keeping the 10 key(s)" 5 2
stream_ok "$url" "${TOK[bed]}" || fail "a broken file dropped the keys"
kill -0 "$SSE_PID" || fail "a broken file stopped the gateway"
curl -s "http://127.0.0.1:$SSE_PORT/metrics" >"$WORK/metrics"
# Counted over both workers, whichever answers.
grep -q '^outboxd_sse_auth_key_reload_failures_total 2$' "$WORK/metrics" || fail "reload failures not counted"
grep -q '^outboxd_sse_auth_key_reloads_total 2$' "$WORK/metrics" || fail "reloads not counted"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
info "SIGHUP: rotated keys accepted, a broken file kept the old ones"

# ---- the URL --------------------------------------------------------------------------------
test_ca "$WORK/tls"
cp "$WORK/c/jwks.json" "$WORK/served.json"
jport=$(pick_port)
start_node jwks jwks "$jport" "$WORK/tls/server.pem" "$WORK/tls/server.key" "$WORK/served.json" 1
jwks_pid=$NODE_PID
SSL_CERT_FILE="$WORK/tls/ca.pem" start_sse url --auth jwt --auth-jwks-url "https://127.0.0.1:$jport/jwks.json"
url="http://127.0.0.1:$SSE_PORT/runs/keys-1/events"
wait_log "$WORK/url.log" "key(s) from https" 5
stream_ok "$url" "${TOK[c]}" || fail "key c from the URL refused"
# Each worker fetches the keys on its own, once a second (max-age 1).
fetches() { grep -o 'outboxd-sse-[0-9]*: auth: [0-9]* key(s) from https' "$WORK/url.log"; }
workers=$(fetches | cut -d: -f1 | sort -u | wc -l)
mark=$(fetches | wc -l)
cp "$WORK/d/jwks.json" "$WORK/served.json"
for _ in $(seq 1 40); do stream_ok "$url" "${TOK[d]}" && break; sleep 0.25; done
stream_ok "$url" "${TOK[d]}" || fail "rotated key d not picked up from the URL within its max-age"
# Before the URL goes away, every worker has fetched twice since the rotation (so once
# after it): each then holds key d among its last good keys.
for _ in $(seq 1 50); do
  rotated=$(fetches | tail -n +$((mark + 1)) | cut -d: -f1 | sort | uniq -c | awk '$1 >= 2' | wc -l)
  ((rotated == workers)) && break
  sleep 0.1
done
((rotated == workers)) || fail "$rotated of $workers workers fetched the keys twice in 5 s after the rotation"
[[ $(http_code "$url" -H "Authorization: Bearer ${TOK[c]}") == 401 ]] || fail "key c still accepted after rotation"
kill -9 "$jwks_pid"
sleep 3
grep -q "keeping the last good keys" "$WORK/url.log" || fail "URL failure not logged"
stream_ok "$url" "${TOK[ded]}" || fail "the last good keys were dropped when the URL failed"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
info "URL: fetched, refreshed on max-age, last good kept"

# An untrusted certificate: nothing loads, tokens are refused.
start_node jwks2 jwks "$jport" "$WORK/tls/server.pem" "$WORK/tls/server.key" "$WORK/served.json" 1
start_sse untrusted --auth jwt --auth-jwks-url "https://127.0.0.1:$jport/jwks.json"
wait_log "$WORK/untrusted.log" "tokens are refused" 5
[[ $(http_code "http://127.0.0.1:$SSE_PORT/runs/keys-1/events" -H "Authorization: Bearer ${TOK[d]}") == 401 ]] ||
  fail "a token was accepted with keys from an untrusted server"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"

# An unknown kid: with a long max-age only a token naming a new kid makes the gateway
# look again, and that token's check waits for the look instead of failing; another
# unknown kid within 30 s is refused without a look.
jose_keys "$WORK/e" e-
mint "$WORK/e" <<SPEC
e sign e-es {$c}
SPEC
cp "$WORK/d/jwks.json" "$WORK/served.json"
jport2=$(pick_port)
start_node jwks3 jwks "$jport2" "$WORK/tls/server.pem" "$WORK/tls/server.key" "$WORK/served.json" 300
SSL_CERT_FILE="$WORK/tls/ca.pem" start_sse kid --auth jwt --auth-jwks-url "https://127.0.0.1:$jport2/jwks.json" \
  --workers 1
url="http://127.0.0.1:$SSE_PORT/runs/keys-1/events"
wait_log "$WORK/kid.log" "next refresh in 300 s" 5
stream_ok "$url" "${TOK[d]}" || fail "key d refused"
cp "$WORK/e/jwks.json" "$WORK/served.json"
stream_ok "$url" "${TOK[e]}" || fail "a token naming the provider's new kid was refused on its first try"
fetches=$(grep -c '^call' "$WORK/jwks3.out")
[[ $fetches == 2 ]] || fail "want 2 fetches of the key set (start, unknown kid), got $fetches"
[[ $(http_code "$url" -H "Authorization: Bearer ${TOK[a]}") == 401 ]] || fail "key a accepted"
[[ $(grep -c '^call' "$WORK/jwks3.out") == 2 ]] || fail "an unknown kid fetched the key set again within 30 s"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
