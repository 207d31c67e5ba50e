#!/usr/bin/env bash
# A reader that drains at 4 MB/s while 20 MB of events come its way (more than the
# kernel's socket buffers hold, so the gateway must queue): the gateway holds at most
# --client-buffer for it (its memory stays flat), pauses it, and feeds it from
# PostgreSQL when it drains; the reader still gets every event once, in order. 3 MB
# of the events are committed before it connects, so that its first read alone
# overflows the cap however slowly a busy machine relays the rest.
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay
start_sse sse --client-buffer 65536
rss0=$(rss_kb "$SSE_PID")
pad=$(head -c 10000 /dev/zero | tr '\0' p)
q "INSERT INTO run_outbox (run_id, payload) SELECT 'slow-0', jsonb_build_object('g', g, 'pad', '$pad') FROM generate_series(1, 300) g"
curl -s -N --limit-rate 4m --max-time 40 "http://127.0.0.1:$SSE_PORT/runs/slow-0/events" >"$WORK/slow" &
cpid=$!; PIDS+=("$cpid")
sleep 0.5
q "INSERT INTO run_outbox (run_id, payload) SELECT 'slow-0', jsonb_build_object('g', g, 'pad', '$pad') FROM generate_series(301, 2000) g"
peak=0
for _ in $(seq 1 40); do
  r=$(rss_kb "$SSE_PID"); ((r > peak)) && peak=$r
  (( $(grep -c '^id: ' "$WORK/slow") >= 2000 )) && break
  sleep 1
done
kill "$cpid" 2>/dev/null || true
info "gateway RSS: start ${rss0} KB, peak ${peak} KB; reader got $(grep -c '^id: ' "$WORK/slow") events"
# (Under AddressSanitizer the quarantine and shadow memory make RSS meaningless.)
if [[ "$BUILD" != */asan ]]; then
  ((peak - rss0 < 20000)) || fail "gateway grew by $((peak - rss0)) KB for one slow reader (cap 64 KB)"
fi
got=$(grep '^id: ' "$WORK/slow" | cut -d' ' -f2)
[[ "$got" == "$(seq 1 2000)" ]] || fail "slow reader did not get 1..2000 exactly once in order ($(echo "$got" | wc -l) events)"
grep -q "slow_client_pauses=[1-9]" "$WORK/sse.log" || fail "the slow reader was never paused"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
