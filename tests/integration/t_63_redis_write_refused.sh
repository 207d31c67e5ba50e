#!/usr/bin/env bash
# A primary that refuses writes (min-replicas-to-write 1 and no replica: NOREPLICAS;
# the same path as OOM, MISCONF or READONLY): the publish script is declared as
# writing ("#!lua"), so Redis refuses it before any PUBLISH. Subscribers receive
# nothing while it refuses, the refusal is logged and recorded on the rows, the runs
# are held back, no mark moves, /readyz says 503 "refusing"; once writes are allowed again every event arrives
# exactly once, in order (a script that published, then failed on its mark, was
# re-sent after every hold).
. "$(dirname "$0")/lib.sh"
new_db
start_redis wr plain
WR_PORT=$R_PORT
rc() { redis-cli -p "$WR_PORT" "$@"; }
export REDIS_URL="redis://127.0.0.1:$WR_PORT/0"
# Every message as it arrives, one line each, to count them while the test runs.
stdbuf -oL redis-cli -p "$WR_PORT" --csv psubscribe 'run:wr-*' >"$WORK/raw.out" 2>&1 &
PIDS+=("$!")
start_sub sub --port "$WR_PORT" --prefix wr --expect 39 --idle-ms 30000 --max-seconds 120 --check
for _ in $(seq 1 100); do grep -q '^"psubscribe"' "$WORK/raw.out" && break; sleep 0.05; done
raw() { grep -c '^"pmessage"' "$WORK/raw.out" || true; }
hport=$(pick_port)
h="http://127.0.0.1:$hport"
start_relay relay --redis-timeout 500ms --http-listen "127.0.0.1:$hport"

# 1. Writes allowed: events flow, marks are set.
for i in $(seq 1 3); do for r in 1 2 3; do "$OUTBOXD" emit "wr-$r" "{\"phase\":1,\"i\":$i}" >/dev/null; done; done
wait_drained 10
for _ in $(seq 1 40); do [[ $(raw) == 9 ]] && break; sleep 0.05; done
[[ $(raw) == 9 ]] || fail "$(raw) messages for the 9 events published before the refusal"
mark_before=$(rc GET "$(mark_key wr-1)")
[[ -n "$mark_before" ]] || fail "no mark for run wr-1"

# 2. Refused: nothing reaches subscribers, over several holds and retries.
rc CONFIG SET min-replicas-to-write 1 >/dev/null
for i in $(seq 1 5); do for r in 1 2 3 4; do "$OUTBOXD" emit "wr-$r" "{\"phase\":2,\"i\":$i}" >/dev/null; done; done
wait_log "$WORK/relay.log" "NOREPLICAS" 10
wait_log "$WORK/relay.log" "run wr-.* held back" 10
info "relay: $(grep -m1 -o "run wr-.* held back.*" "$WORK/relay.log" | cut -c1-200)"
sleep 4 # the holds of 1 s and 2 s pass: the runs are tried again, and refused again
[[ $(raw) == 9 ]] || fail "subscribers got $(( $(raw) - 9 )) messages while Redis refused writes"
held=$(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL")
[[ $held == 20 ]] || fail "$held of 20 refused events unpublished"
errs=$(q "SELECT count(*) FROM run_outbox WHERE attempts > 0 AND last_error LIKE '%NOREPLICAS%'")
((errs >= 1)) || fail "the refusal is not recorded on the rows: $(q "SELECT attempts, last_error FROM run_outbox WHERE published_at IS NULL LIMIT 2")"
[[ $(rc GET "$(mark_key wr-1)") == "$mark_before" ]] || fail "the mark of wr-1 moved while writes were refused"
retries=$(grep -c "run wr-1 held back" "$WORK/relay.log" || true)
((retries >= 2)) || fail "run wr-1 tried only $retries time(s) in 4 s of refusal"
kill -0 "$RELAY_PID" || fail "the relay died"
r=$(readyz "$h")
[[ $r == "503 not ready"*"redis=refusing"*"NOREPLICAS"* ]] || fail "/readyz while writes are refused: $r"

# 3. Writes allowed again: everything arrives once, in order.
rc CONFIG SET min-replicas-to-write 0 >/dev/null
wait_drained 70
[[ $(readyz "$h") == "200 ready"* ]] || fail "/readyz once writes are allowed: $(readyz "$h")"
for i in $(seq 1 10); do "$OUTBOXD" emit "wr-$(( i % 3 + 1 ))" "{\"phase\":3,\"i\":$i}" >/dev/null; done
wait_drained 10
for _ in $(seq 1 40); do [[ $(raw) == 39 ]] && break; sleep 0.05; done
[[ $(raw) == 39 ]] || fail "$(raw) messages for 39 events (want each exactly once)"
wait_sub sub "$SUB_PID"
[[ $(field received "$WORK/sub.out") == 39 ]] || fail "subscriber: $(cat "$WORK/sub.out")"
stop_relay "$RELAY_PID" 5
