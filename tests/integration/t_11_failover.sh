#!/usr/bin/env bash
# Two relays: exactly one leads; kill -9 the leader twice under load; the standby
# takes over within 2 s each time; no event lost, repeated or out of order.
. "$(dirname "$0")/lib.sh"
new_db
start_relay a; A=$RELAY_PID
wait_log "$WORK/a.log" "leader:" 10
start_relay b; B=$RELAY_PID
wait_log "$WORK/b.log" "standby:" 10
start_sub sub --prefix ha --idle-ms 4000 --max-seconds 90 --check
start_load --rate 500 --runs 20 --conns 4 --seconds 9 --prefix ha

failover() { # failover VICTIM_PID HEIR_LOG
  sleep 2
  local before t0
  before=$(grep -c "leader:" "$2" || true)
  t0=$(date +%s%N)
  kill -9 "$1"
  wait_log "$2" "leader:" 5 $((before + 1))
  local ms=$((($(date +%s%N) - t0) / 1000000))
  info "failover took $ms ms"
  ((ms < 2000)) || fail "failover took $ms ms (want < 2000)"
}
failover "$A" "$WORK/b.log"
start_relay a2
wait_log "$WORK/a2.log" "standby:" 10
failover "$B" "$WORK/a2.log"
wait "$LOAD_PID"
finish_sub sub "$SUB_PID"
wait_drained 10
stop_relay "$RELAY_PID" 5
