#!/usr/bin/env bash
# --redis-wait-replicas: with a replica answering, every batch's WAIT is met; with the
# replica stopped (SIGSTOP), WAIT times out after --redis-wait-timeout, the batches
# are still published and marked (counted in outboxd_redis_wait_short_total), and
# nothing is lost, repeated or reordered. The relay's user has the documented rules
# plus +wait, as docs/OPERATIONS.md says.
. "$(dirname "$0")/lib.sh"
new_db
{
  echo "user default on nopass ~* &* +@all"
  echo "$(acl_rules relay) +wait"
} >"$WORK/users.acl"
start_redis primary plain --aclfile "$WORK/users.acl"
P=$R_PORT
start_redis replica plain --replicaof 127.0.0.1 "$P"
R=$R_PORT
REPLICA_PID=$(cat "$WORK/replica.pid")
for _ in $(seq 1 100); do redis-cli -p "$R" info replication | grep -q "master_link_status:up" && break; sleep 0.05; done
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
wait_sub sub "$SUB_PID"
stop_relay "$RELAY_PID" 5
