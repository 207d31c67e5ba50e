#!/usr/bin/env bash
# Publishes in order, marks published only after publishing, message format per the
# contract, and every event reaches a subscriber well within 500 ms of commit.
. "$(dirname "$0")/lib.sh"
new_db

# With Redis unreachable nothing may be marked published.
"$OUTBOXD" emit early '{"n":0}' >/dev/null
REDIS_URL=redis://127.0.0.1:1/0 "$OUTBOXD" relay --redis-timeout 200ms >"$WORK/noredis.log" 2>&1 &
pid=$!; PIDS+=("$pid")
sleep 1
[[ $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NOT NULL") == 0 ]] ||
  fail "an event was marked published while Redis was unreachable"
stop_relay "$pid" 5

start_sub sub --prefix lat --expect 301 --max-seconds 30 --check
redis-cli -p "$REDIS_PORT" subscribe 'run:lat-format' >"$WORK/raw" &
PIDS+=($!)
start_relay relay
sleep 0.3
"$OUTBOXD" emit lat-format '{"text":"a\nb","n":[1,2]}' >/dev/null
"$BUILD/obx_load" --rate 100 --runs 5 --conns 2 --count 300 --prefix lat >/dev/null
wait_sub sub "$SUB_PID"
p99=$(field p99 "$WORK/sub.out"); max=$(field max "$WORK/sub.out")
awk -v m="$max" 'BEGIN { exit !(m < 500) }' || fail "slowest event took $max ms (want < 500)"
info "commit->receipt p99=${p99} ms max=${max} ms at 100 events/s"

msg=$(grep -m1 '^{' "$WORK/raw")
[[ "$msg" =~ ^\{\"id\":[0-9]+,\"run_id\":\"lat-format\",\"seq\":1,\"created_at\":\"[0-9T:.-]+Z\",\"payload\":\{.*\}\}$ ]] ||
  fail "message does not follow the contract: $msg"
[[ "$msg" == *'"payload":{"n": [1, 2], "text": "a\nb"}}' ]] || fail "payload not the stored JSON: $msg"
wait_drained 5
stop_relay "$RELAY_PID" 5
