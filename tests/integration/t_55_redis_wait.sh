#!/usr/bin/env bash
# --redis-wait-replicas: with a replica answering, every batch's WAIT is met; with the
# replica stopped (SIGSTOP), WAIT times out after --redis-wait-timeout, the batches
# are still published and marked (counted in outboxd_redis_wait_short_total), and
# nothing is lost, repeated or reordered. The same with a WAIT longer than the command
# timeout (--redis-wait-timeout 2s, --redis-timeout 1s): the reply that Redis holds for
# 2 s is awaited, not taken for a lost connection, so every batch is marked once,
# counted as short, and never re-sent. The relay's user has the documented rules plus
# +wait, as docs/OPERATIONS.md says.
. "$(dirname "$0")/lib.sh"
new_db
{
  echo "user default on nopass ~* &* +@all"
  echo "$(acl_rules relay) +wait"
} >"$WORK/users.acl"
start_redis primary plain --aclfile "$WORK/users.acl" --repl-diskless-sync-delay 0
P=$R_PORT
start_redis replica plain --replicaof 127.0.0.1 "$P"
R=$R_PORT
REPLICA_PID=$(cat "$WORK/replica.pid")
wait_replica "$P" "$R"
hport=$(pick_port)
metric() { curl -s "http://127.0.0.1:$hport/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
REDIS_URL="redis://outboxd-relay:relay-pw@127.0.0.1:$P/0" start_relay relay --redis-wait-replicas 1 \
  --redis-wait-timeout 200ms --http-listen "127.0.0.1:$hport"
start_sub sub --port "$P" --prefix wait --idle-ms 4000 --max-seconds 60 --check
"$BUILD/obx_load" --rate 300 --runs 10 --conns 2 --seconds 3 --prefix wait >"$WORK/load1.out"
wait_drained 10
short=$(metric outboxd_redis_wait_short_total)
[[ $short == 0 ]] || fail "$short short WAITs with the replica up"
[[ $(redis-cli -p "$P" info commandstats | grep -o 'cmdstat_wait:calls=[0-9]*' | cut -d= -f2) -gt 0 ]] ||
  fail "the relay sent no WAIT"
kill -STOP "$REPLICA_PID"
"$BUILD/obx_load" --rate 100 --runs 10 --conns 2 --seconds 2 --prefix wait >"$WORK/load2.out"
wait_drained 15
kill -CONT "$REPLICA_PID"
short=$(metric outboxd_redis_wait_short_total)
info "with the replica stopped: $short batches marked after a short WAIT"
((short > 0)) || fail "no short WAIT counted with the replica stopped"
! grep -q "WAIT refused" "$WORK/relay.log" || fail "WAIT refused: $(grep -m1 "WAIT refused" "$WORK/relay.log")"
finish_sub sub "$SUB_PID"
stop_relay "$RELAY_PID" 5

# A WAIT longer than the command timeout, the replica stopped: each batch waits the
# full 2 s, is counted short, and is marked; nothing is sent twice.
kill -STOP "$REPLICA_PID"
start_sub sub2 --port "$P" --prefix long --expect 12 --idle-ms 30000 --max-seconds 60 --check
REDIS_URL="redis://outboxd-relay:relay-pw@127.0.0.1:$P/0" start_relay relay2 --redis-wait-replicas 1 \
  --redis-wait-timeout 2s --redis-timeout 1s --http-listen "127.0.0.1:$hport"
t0=$SECONDS
for i in $(seq 1 4); do for r in 1 2 3; do "$OUTBOXD" emit "long-$r" "{\"i\":$i}" >/dev/null; done; done
wait_drained 30
info "12 events marked in $((SECONDS - t0)) s with every WAIT running its 2 s"
wait_sub sub2 "$SUB_PID"
[[ $(field received "$WORK/sub2.out") == 12 ]] || fail "subscriber: $(cat "$WORK/sub2.out")"
short=$(metric outboxd_redis_wait_short_total)
((${short:-0} > 0)) || fail "outboxd_redis_wait_short_total = ${short:-missing} with a 2 s WAIT and no replica"
dups=$(metric outboxd_duplicates_suppressed_total)
[[ $dups == 0 ]] || fail "outboxd_duplicates_suppressed_total = $dups: published batches were sent again"
! grep -q "WAIT: timed out" "$WORK/relay2.log" || fail "the WAIT was taken for a lost connection: $(grep -m1 "WAIT: timed out" "$WORK/relay2.log")"
failures=$(metric outboxd_publish_failures_total)
[[ $failures == 0 ]] || fail "outboxd_publish_failures_total = $failures: the batches were sent again"
kill -CONT "$REPLICA_PID"
stop_relay "$RELAY_PID" 5
