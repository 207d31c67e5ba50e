#!/usr/bin/env bash
# Publishes in order, marks published only after publishing, message format per the
# contract, and every event reaches a subscriber well within 500 ms of commit; also in
# poll-only mode (--no-listen); and --log-format json logs one JSON object per line.
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
redis_listen "$WORK/raw" "$REDIS_PORT" subscribe 'run:lat-format'
start_relay relay
wait_log "$WORK/relay.log" "leader: this relay publishes" 10
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

# Poll-only (--no-listen) still delivers, within about one poll interval; and
# --log-format json writes one JSON object per line.
start_relay poll --no-listen --poll-interval-ms 100 --log-format json
wait_log "$WORK/poll.log" '"msg":"leader: this relay publishes"' 10
start_sub polled --prefix poll --expect 20 --max-seconds 20 --check
"$BUILD/obx_load" --rate 20 --runs 2 --conns 1 --count 20 --prefix poll >/dev/null
wait_sub polled "$SUB_PID"
max=$(field max "$WORK/polled.out")
awk -v m="$max" 'BEGIN { exit !(m < 500) }' || fail "poll-only: slowest event took $max ms (poll every 100 ms)"
if grep -q '(listening)' "$WORK/poll.log"; then fail "--no-listen relay says it is listening"; fi
stop_relay "$RELAY_PID" 5
json_line='^\{"ts":"[0-9T:.-]+Z","level":"(error|warn|info|debug)","component":"outboxd-relay","msg":".*"\}$'
while IFS= read -r line; do
  [[ "$line" =~ $json_line ]] || fail "not a JSON log line: $line"
done <"$WORK/poll.log"
