#!/usr/bin/env bash
# Redis killed under load and started again: the relay retries (recording attempts
# and the error on the rows), keeps running, and once Redis is back every event
# arrives, in order. The new Redis starts with a password that the subscriber knows
# and the relay does not, so the subscriber is surely re-subscribed before the relay
# can publish again; then the password is lifted.
# This Redis keeps nothing on disk, so the relay's marks die with it: an event whose
# message went out just before the kill, but whose reply was lost with the
# connection, is published again (docs/GUARANTEES.md, "Redis must keep the marks").
# Such a repeat is allowed here only as far as the relay counted it in
# outboxd_redis_possible_duplicates_total.
. "$(dirname "$0")/lib.sh"
new_db
hport=$(pick_port)
start_relay relay --redis-timeout 300ms --http-listen "127.0.0.1:$hport"
start_sub sub --prefix out --password secret --idle-ms 8000 --max-seconds 90 --check --repeats-ok
start_load --rate 300 --runs 20 --conns 4 --seconds 8 --prefix out
sleep 2
redis_kill
info "redis killed"
sleep 2
REDIS_PASS=secret redis_start --requirepass secret
for _ in $(seq 1 100); do
  [[ $(redis-cli -p "$REDIS_PORT" -a secret --no-auth-warning pubsub numpat) -ge 1 ]] && break
  sleep 0.05
done
[[ $(q "SELECT count(*) FROM run_outbox WHERE attempts > 0 AND last_error IS NOT NULL AND published_at IS NULL") -gt 0 ]] ||
  fail "no failed attempt recorded on the waiting rows during the outage"
kill -0 "$RELAY_PID" || fail "relay died during the Redis outage"
redis-cli -p "$REDIS_PORT" -a secret --no-auth-warning config set requirepass "" >/dev/null
info "redis back"
wait "$LOAD_PID"
info "$(cat "$WORK/load.out")"
finish_sub sub "$SUB_PID"
wait_drained 10
dups=$(field duplicates "$WORK/sub.out")
possible=$(curl -s --max-time 5 "http://127.0.0.1:$hport/metrics" |
  awk '$1 == "outboxd_redis_possible_duplicates_total" {print $2}')
info "repeats: $dups seen by the subscriber, $possible counted by the relay"
[[ -n "$possible" ]] || fail "no outboxd_redis_possible_duplicates_total in /metrics"
((dups <= possible)) || fail "the subscriber saw $dups repeats, the relay counted $possible possible duplicates"
stop_relay "$RELAY_PID" 5
