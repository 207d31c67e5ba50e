#!/usr/bin/env bash
# Operating surface: /metrics counters move when events flow, /healthz and /readyz
# answer (readiness flips while Redis is stalled), a standby reports no backlog of its
# own (-1), retention deletes published rows past the window and never an unpublished
# one, `outboxd prune` does it on demand, and `outboxd status --json` reports backlog
# 0 after a drain.
. "$(dirname "$0")/lib.sh"
new_db
hport=$(pick_port)
h="http://127.0.0.1:$hport"
# A run whose events stay unpublished (Redis refuses them), to prove retention spares them.
redis-cli -p "$REDIS_PORT" rpush "$(mark_key keep-1)" poison >/dev/null
q "INSERT INTO run_outbox (run_id, payload) VALUES ('keep-1', '{}'), ('keep-1', '{}')"
start_relay relay --http-listen "127.0.0.1:$hport" --retention 1s --redis-timeout 300ms
for _ in $(seq 1 100); do curl -s -o /dev/null "$h/healthz" && break; sleep 0.05; done
[[ $(curl -s -o /dev/null -w '%{http_code}' "$h/healthz") == 200 ]] || fail "/healthz"
for _ in $(seq 1 100); do curl -s "$h/readyz" | grep -q "^ready role=leader" && break; sleep 0.05; done
curl -s "$h/readyz" | grep -q "^ready role=leader" || fail "/readyz: $(curl -s "$h/readyz")"
metric() { curl -s "$h/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
before=$(metric outboxd_events_published_total)
"$BUILD/obx_load" --rate 500 --runs 10 --conns 2 --count 500 --prefix op >/dev/null
for _ in $(seq 1 50); do [[ $(metric outboxd_events_published_total) -ge $((before + 500)) ]] && break; sleep 0.1; done
after=$(metric outboxd_events_published_total)
((after >= before + 500)) || fail "published counter moved from $before to $after for 500 events"
[[ $(metric outboxd_publish_latency_seconds_count) -ge 500 ]] || fail "latency histogram did not count the events"
[[ $(metric outboxd_leader) == 1 ]] || fail "outboxd_leader is not 1"
# Read whole first: grep -q leaving early would fail curl (SIGPIPE) under pipefail.
curl -s "$h/metrics" >"$WORK/metrics"
grep -q '^outboxd_publish_latency_seconds_bucket{le="0.01"}' "$WORK/metrics" || fail "histogram buckets missing"
for m in outboxd_publish_failures_total outboxd_publish_retries_total outboxd_backlog_events \
         outboxd_oldest_unpublished_age_seconds outboxd_batch_duration_seconds_count; do
  [[ -n "$(metric $m)" ]] || fail "metric $m missing"
done
# keep-1 waits, so the leader's oldest unpublished event ages. A standby has no figure
# of its own: -1, so that max() over all relays is the leader's.
for _ in $(seq 1 60); do awk 'BEGIN {exit !(ARGV[1] > 0.5)}' "$(metric outboxd_oldest_unpublished_age_seconds)" && break; sleep 0.1; done
awk 'BEGIN {exit !(ARGV[1] > 0.5)}' "$(metric outboxd_oldest_unpublished_age_seconds)" ||
  fail "the leader's oldest unpublished age is $(metric outboxd_oldest_unpublished_age_seconds) with keep-1 waiting"
leader_pid=$RELAY_PID leader_h=$h
sport=$(pick_port)
h="http://127.0.0.1:$sport"
start_relay standby --http-listen "127.0.0.1:$sport"
for _ in $(seq 1 100); do curl -s "$h/readyz" | grep -q "role=standby" && break; sleep 0.05; done
curl -s "$h/readyz" | grep -q "role=standby" || fail "second relay /readyz: $(curl -s "$h/readyz")"
# Its stats line comes right after it publishes its figures: from then on they are
# what its loop reports, not its initial state.
wait_log "$WORK/standby.log" "stats: role=standby" 10
grep -q "stats: role=standby .*backlog=-1 oldest_unpublished_s=-1.000 " "$WORK/standby.log" ||
  fail "standby stats line: $(grep "stats: role=standby" "$WORK/standby.log" | head -1)"
[[ $(metric outboxd_leader) == 0 && $(metric outboxd_backlog_events) == -1 &&
   $(metric outboxd_oldest_unpublished_age_seconds) == -1 ]] ||
  fail "standby metrics: leader $(metric outboxd_leader) backlog $(metric outboxd_backlog_events)" \
    "oldest age $(metric outboxd_oldest_unpublished_age_seconds), want 0, -1, -1"
stop_relay "$RELAY_PID" 5
RELAY_PID=$leader_pid h=$leader_h

rpid=$(cat "$STACK_DIR/redis.pid")
kill -STOP "$rpid"
code=$(curl -s -o "$WORK/ready" -w '%{http_code}' --max-time 5 "$h/readyz")
kill -CONT "$rpid"
[[ $code == 503 ]] || fail "/readyz answered $code with Redis stalled: $(cat "$WORK/ready")"
info "readyz with Redis stalled: $code $(cat "$WORK/ready")"
[[ $(curl -s -o /dev/null -w '%{http_code}' "$h/readyz") == 200 ]] || fail "/readyz did not recover"

sleep 3.5 # past the 1 s retention and a sweep or two
old=$(q "SELECT count(*) FROM run_outbox WHERE published_at < now() - interval '3 seconds'")
[[ $old == 0 ]] || fail "$old published rows older than 3 s survived --retention 1s"
[[ $(q "SELECT count(*) FROM run_outbox WHERE run_id = 'keep-1' AND published_at IS NULL") == 2 ]] ||
  fail "retention deleted unpublished rows"
[[ $(q "SELECT count(*) FROM run_outbox_seq WHERE run_id LIKE 'op-%'") == 10 ]] || fail "per-run counters were deleted"
grep -q "pruned=[1-9]" "$WORK/relay.log" || fail "the stats line does not count pruned events"
[[ $(metric outboxd_events_pruned_total) -gt 0 ]] || fail "outboxd_events_pruned_total did not move"
stop_relay "$RELAY_PID" 5

redis-cli -p "$REDIS_PORT" del "$(mark_key keep-1)" >/dev/null
start_relay relay2 --retention 0
wait_drained 10
"$OUTBOXD" status --json >"$WORK/status.json"
grep -q '"backlog":0,' "$WORK/status.json" || fail "status --json after the drain: $(cat "$WORK/status.json")"
"$OUTBOXD" status | grep -q "relay leader: *[0-9]* outboxd-relay-$RELAY_PID" || fail "status does not name the leader: $("$OUTBOXD" status)"
stop_relay "$RELAY_PID" 5
rc=0; "$OUTBOXD" prune 2>/dev/null || rc=$?
[[ $rc == 2 ]] || fail "prune without --older-than: exit $rc, want 2"
sleep 1.1
out=$("$OUTBOXD" prune --older-than 1s)
[[ "$out" == "deleted 2 published events older than 1000 ms" ]] || fail "prune said: $out"
[[ $(q "SELECT count(*) FROM run_outbox") == 0 ]] || fail "rows left after prune"
