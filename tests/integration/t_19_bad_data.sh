#!/usr/bin/env bash
# Awkward data goes through unharmed: payloads of 2 B ("{}"), 8 KB, 1 MB and 10 MB;
# JSON with newlines, U+2028 and "data:" text; run ids with { } * : ? [ ], spaces,
# non-ASCII and 1 KB length. No crash, no stall; each message's payload is the
# stored JSON byte for byte; SUBSCRIBE on one odd channel gets only its own run
# (no pattern injection); the SSE stream carries the same bytes.
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay
start_sse sse
big() { head -c "$1" /dev/zero | tr '\0' a; }
long_id="long-$(big 1019)"
ids=("odd-{}" "odd-*" "odd-?:[x]" "odd with spaces" "odd-é-日本-\u2028" "$long_id")
# One subscriber on the literal channel "run:odd-*" must see that run only.
redis_listen "$WORK/literal" "$REDIS_PORT" --raw subscribe 'run:odd-*'
start_sub odd --prefix odd --idle-ms 4000 --max-seconds 60 --check
ODD_PID=$SUB_PID
start_sub long --prefix long --idle-ms 4000 --max-seconds 60 --check
LONG_PID=$SUB_PID
i=0
for id in "${ids[@]}"; do
  i=$((i + 1))
  "$OUTBOXD" emit "$id" "{\"n\":$i,\"text\":\"line1\\nline2 \\u2028 data: x\\r\\nid: 9\"}" >/dev/null
done
"$OUTBOXD" emit odd-sizes '{}' >/dev/null
for n in 8192 1048576 10485760; do
  q "INSERT INTO run_outbox (run_id, payload) VALUES ('odd-sizes', jsonb_build_object('size', $n, 's', repeat('a', $n)))"
done
wait_drained 30
finish_sub odd "$ODD_PID"
finish_sub long "$LONG_PID"
[[ $(field received "$WORK/odd.out") == 9 ]] || fail "want 9 odd-* events on run:*, got $(field received "$WORK/odd.out")"
[[ $(field received "$WORK/long.out") == 1 ]] || fail "the 1 KB run id did not arrive"
# Byte-exact: what Redis carried for the 10 MB event equals the stored payload text.
q "SELECT payload::text FROM run_outbox WHERE run_id = 'odd-sizes' ORDER BY seq DESC LIMIT 1" >"$WORK/stored"
# The SSE replay carries the same bytes (one data: line: jsonb text has no raw newline).
curl -s -N --max-time 5 "http://127.0.0.1:$SSE_PORT/runs/odd-sizes/events" >"$WORK/sse-sizes" || true
grep '^data: {"s": "a' "$WORK/sse-sizes" | tail -1 | sed 's/^data: //' >"$WORK/streamed"
cmp -s "$WORK/stored" "$WORK/streamed" || fail "10 MB payload differs between table and SSE stream ($(wc -c <"$WORK/stored") vs $(wc -c <"$WORK/streamed") bytes)"
[[ $(grep -c '^id: ' "$WORK/sse-sizes") == 4 ]] || fail "odd-sizes stream: $(grep -c '^id: ' "$WORK/sse-sizes") events, want 4"
# The literal subscriber saw exactly one message, that of run "odd-*".
msgs=$(grep -c '^{"id"' "$WORK/literal" || true)
[[ $msgs == 1 ]] && grep -q '"run_id":"odd-\*"' "$WORK/literal" || fail "SUBSCRIBE run:odd-* got $msgs messages: $(head -c 300 "$WORK/literal")"
# The multi-line payload arrives on SSE as one data: line per line and joins back.
enc=$(printf '%s' 'odd-?:[x]' | od -An -tx1 -v | tr -s ' \n' ' ' | sed 's/ $//; s/^ //; s/ /%/g; s/^/%/')
curl -s -N --max-time 1 "http://127.0.0.1:$SSE_PORT/runs/$enc/events" >"$WORK/multi" || true
grep -q '^id: 1' "$WORK/multi" || fail "odd run id not streamed: $(head -c 200 "$WORK/multi")"
kill -0 "$RELAY_PID" && kill -0 "$SSE_PID" || fail "a process died"
[[ $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL") == 0 ]] || fail "rows left unpublished"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
