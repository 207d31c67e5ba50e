#!/usr/bin/env bash
# Three relays under 1,000 events/s over 50 runs: the leader is kill -9'd (and a
# replacement started) three times; then a leader is frozen (SIGSTOP), its backend
# terminated so that a standby takes over, and thawed (SIGCONT) while it still thinks
# it leads; then Redis stalls for 3 s. A subscriber sees every event exactly once, in
# per-run order; every row ends published; each failover is timed.
. "$(dirname "$0")/lib.sh"
new_db
n=0
relay() { n=$((n + 1)); start_relay "r$n" --redis-timeout 500ms; }
relay; relay; relay
for _ in $(seq 1 100); do [[ -n "$(leader_pid)" ]] && break; sleep 0.05; done
[[ -n "$(leader_pid)" ]] || fail "no relay became leader"
start_sub sub --prefix ha --idle-ms 5000 --max-seconds 120 --check
start_load --rate 1000 --runs 50 --conns 8 --seconds 16 --prefix ha

wait_new_leader() { # wait_new_leader OLD: prints the failover time in ms
  local t0 l
  t0=$(date +%s%N)
  for _ in $(seq 1 100); do
    l=$(leader_pid)
    if [[ -n "$l" && "$l" != "$1" ]]; then echo $((($(date +%s%N) - t0) / 1000000)); return 0; fi
    sleep 0.02
  done
  fail "no standby took over from $1 within 2 s"
}
for i in 1 2 3; do
  sleep 1.5
  old=$(leader_pid)
  kill -9 "$old"
  ms=$(wait_new_leader "$old")
  info "kill -9 of leader $old: failover in $ms ms"
  ((ms < 2000)) || fail "failover took $ms ms"
  relay
done
sleep 1
old=$(leader_pid)
kill -STOP "$old"
q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'outboxd-relay-$old'" >/dev/null
ms=$(wait_new_leader "$old")
info "frozen leader $old cut off: failover in $ms ms"
sleep 1
kill -CONT "$old"; info "old leader $old thawed"
sleep 1
rpid=$(cat "$STACK_DIR/redis.pid")
kill -STOP "$rpid"; sleep 3; kill -CONT "$rpid"; info "redis stalled for 3 s"
wait "$LOAD_PID"
info "$(cat "$WORK/load.out")"
finish_sub sub "$SUB_PID"
wait_drained 20
led=0
for f in "$WORK"/r*.log; do
  if grep -q "leader: this relay publishes" "$f"; then led=$((led + 1)); fi
done
info "$led of $n relays led at some point"
((led >= 4)) || fail "want at least 4 leaders over the run (3 kills and a freeze), saw $led"
