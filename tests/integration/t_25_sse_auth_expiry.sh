#!/usr/bin/env bash
# A stream ends when its token does: streams whose token expires ~6 s after they open
# get event: auth-expiring (--auth-expiry-warning before exp), then event:
# auth-expired at exp and the end of the stream; each reconnects with a fresh token
# and Last-Event-ID, and under 1,000 events/s every stream still sees every event of
# its run exactly once, in order. A token accepted within the leeway but already past
# exp opens no stream of events.
. "$(dirname "$0")/lib.sh"
new_db
keys="$WORK/keys"
jose_keys "$keys"
start_relay relay
start_sse sse --auth jwt --auth-jwks "$keys/jwks.json" --auth-expiry-warning 3s
c='"runs":["exp-*"]'
mint "$keys" <<SPEC
short sign es {$c,"exp":"+7","jti":"short"}
fresh sign ed {$c,"exp":"+600","jti":"fresh"}
stale sign hs {$c,"exp":"-10"}
SPEC
t0=$SECONDS
# A stream that lost, repeated or reordered events across its token's renewal fails here.
sse_checked_under_load "--rate 1000 --runs 10 --conns 8 --seconds 10 --prefix exp" \
  --prefix exp --runs 10 --per-run 1 --token "${TOK[short]}" --renew-token "${TOK[fresh]}" --idle-ms 3000 \
  --max-seconds 45
[[ $(field auth_expiring "$WORK/sse.out") == 10 ]] || fail "want one auth-expiring per stream"
[[ $(field auth_expired "$WORK/sse.out") == 10 ]] || fail "want one auth-expired per stream"
[[ $(field expired_streams "$WORK/sse.out") == 10 ]] || fail "every stream must expire"
[[ $(field lost "$WORK/sse.out") == 0 && $(field received "$WORK/sse.out") -ge 9000 ]] || fail "too few events"
(( SECONDS - t0 >= 6 )) || fail "streams ended before their token's exp"

# Past exp but within the leeway: 200 with auth-expired and not one event.
code=$(http_code "http://127.0.0.1:$SSE_PORT/runs/exp-1/events" -H "Authorization: Bearer ${TOK[stale]}")
[[ $code == 200 ]] || fail "stale token: $code"
grep -q '^event: auth-expired' "$WORK/body" || fail "stale token: no auth-expired: $(cat "$WORK/body")"
grep -q '^id:' "$WORK/body" && fail "stale token got events"
curl -s "http://127.0.0.1:$SSE_PORT/metrics" >"$WORK/metrics"
grep -q 'outboxd_sse_auth_streams_ended_total{reason="expired"} 10' "$WORK/metrics" ||
  fail "metrics do not count 10 expired streams: $(grep ended "$WORK/metrics")"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
