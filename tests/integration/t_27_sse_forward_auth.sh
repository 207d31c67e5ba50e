#!/usr/bin/env bash
# Forward-auth: the application (a test backend) decides per (cookie, run). 500
# concurrent streams of one (cookie, run) make one backend call; 401 and 403 are
# passed on; a cookie the backend stops accepting ends its open stream with
# event: auth-revoked within the cache TTL; a slow or dead backend opens no stream and
# never yields a 5xx (200 with a retry hint, which EventSource follows); the backend
# never sees the query's access_token.
. "$(dirname "$0")/lib.sh"
new_db
for i in 1 2 3; do "$OUTBOXD" emit fw-0 "{\"i\":$i}" >/dev/null; done
start_relay relay
wait_drained 10
state="$WORK/state.json"
echo '{"cookies":{"good":200,"good2":200,"bad":401,"nope":403},"delay_ms":300,"max_age":2}' >"$state"
aport=$(pick_port)
start_node backend auth "$aport" "$state"
start_sse sse --auth forward --auth-url "http://127.0.0.1:$aport/check" --auth-timeout 1s --max-clients 2000
base="http://127.0.0.1:$SSE_PORT"
calls() { grep -c '^call' "$WORK/backend.out" || true; }

# 500 streams of one (cookie, run) at once: one call.
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix fw --runs 1 --per-run 500 --cookie "session=good" --idle-ms 1500 \
  --max-seconds 30 --ready-file "$WORK/many.ready" >"$WORK/many.out" 2>"$WORK/many.err" &
mpid=$!; PIDS+=("$mpid")
for _ in $(seq 1 200); do [[ -f "$WORK/many.ready" ]] && break; sleep 0.05; done
[[ -f "$WORK/many.ready" ]] || fail "500 streams did not open"
[[ $(calls) == 1 ]] || fail "500 concurrent streams of one (cookie, run) made $(calls) backend calls, want 1"
wait "$mpid" || true
info "many: $(cat "$WORK/many.out")"
[[ $(field bad_status "$WORK/many.out") == 0 && $(field received "$WORK/many.out") == 1500 ]] ||
  fail "the 500 streams did not all get the run's 3 events: $(cat "$WORK/many.out")"
curl -s "$base/metrics" >"$WORK/metrics"
grep -q '^outboxd_sse_auth_forward_waits_total 500$' "$WORK/metrics" || fail "want 500 waits: $(grep forward "$WORK/metrics")"

# Denials are passed on, with no event bytes.
[[ $(http_code "$base/runs/fw-0/events" -H "Cookie: session=bad") == 401 ]] || fail "backend 401 not passed on"
grep -qi '^www-authenticate: Bearer error="invalid_token"' "$WORK/headers" || fail "401 without WWW-Authenticate"
[[ $(http_code "$base/runs/fw-0/events" -H "Cookie: session=nope") == 403 ]] || fail "backend 403 not passed on"
grep -q '^id:' "$WORK/body" && fail "a denied stream got events"
[[ $(http_code "$base/runs/fw-0/events") == 401 ]] || fail "no cookie: not 401"

# The backend sees the URI without the access_token.
http_code "$base/runs/fw-0/events?access_token=SECRET-QUERY-TOKEN&last_event_id=3" -H "Cookie: session=unseen" >/dev/null
grep -q 'SECRET-QUERY-TOKEN' "$WORK/backend.out" && fail "the backend saw the query token"
grep -q 'last_event_id=3' "$WORK/backend.out" || fail "the original URI did not reach the backend"

# A cookie the backend stops accepting ends its open stream within the TTL (2 s).
curl -s -N --max-time 10 -H "Cookie: session=good2" "$base/runs/fw-0/events" >"$WORK/revoked" &
cpid=$!
for _ in $(seq 1 60); do grep -q '^id: 3' "$WORK/revoked" && break; sleep 0.05; done
grep -q '^id: 3' "$WORK/revoked" || fail "good2 stream did not open"
echo '{"cookies":{"good":200,"good2":401},"delay_ms":0,"max_age":2}' >"$state"
t0=$(date +%s%N)
wait "$cpid" || true
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
grep -q '^event: auth-revoked' "$WORK/revoked" || fail "no auth-revoked: $(cat "$WORK/revoked")"
# The answer was given before t0: within its TTL is under 2 s from t0. (Its recheck
# starts at least 250 ms before the expiry, time enough for this backend's answer.)
(( ms < 2000 )) || fail "the stream ended $ms ms after the backend revoked it (TTL 2 s)"
info "revoked cookie's stream ended after $ms ms"

# A slow backend (past --auth-timeout) and a dead one: no stream, no 5xx.
echo '{"cookies":{"slow":200},"delay_ms":3000}' >"$state"
code=$(http_code "$base/runs/fw-0/events" -H "Cookie: session=slow")
[[ $code == 200 ]] || fail "slow backend: $code, want 200 with a retry hint"
grep -q '^retry: ' "$WORK/body" && ! grep -q '^id:' "$WORK/body" || fail "slow backend: $(cat "$WORK/body")"
kill -9 "$NODE_PID"
code=$(http_code "$base/runs/fw-0/events" -H "Cookie: session=good3")
[[ $code == 200 ]] || fail "dead backend: $code, want 200 with a retry hint"
grep -q '^retry: ' "$WORK/body" && ! grep -q '^id:' "$WORK/body" || fail "dead backend: $(cat "$WORK/body")"
curl -s "$base/metrics" | grep -q '^outboxd_sse_auth_forward_failures_total [1-9]' || fail "failures not counted"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
