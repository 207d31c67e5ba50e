#!/usr/bin/env bash
# Several gateways share nothing but Redis and PostgreSQL: 60 streams spread over two
# gateways (no balancer: each client picks one, and after a drop reconnects to the
# next with Last-Event-ID, as EventSource behind a balancer would). One gateway is
# killed with SIGKILL (its workers follow it) under 1,000 events/s: its clients
# resume on the other and lose nothing; every stream gets every event once, in order.
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay
start_sse gw1 --workers 2
port1=$SSE_PORT pid1=$SSE_PID
start_sse gw2 --workers 2
port2=$SSE_PORT pid2=$SSE_PID
"$BUILD/obx_sse" --ports "$port1,$port2" --prefix two --runs 30 --per-run 2 --reconnect-ms 300 \
  --idle-ms 3000 --max-seconds 60 --ready-file "$WORK/sse.ready" --check >"$WORK/sse.out" 2>"$WORK/sse.err" &
cpid=$!; PIDS+=("$cpid")
for _ in $(seq 1 100); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done
[[ -f "$WORK/sse.ready" ]] || fail "streams did not open"
start_load --rate 1000 --runs 30 --conns 8 --seconds 8 --prefix two
sleep 3
workers1=$(pgrep -P "$pid1" | tr '\n' ' ')
kill -9 "$pid1"
info "killed gateway 1 (pid $pid1; workers $workers1)"
for _ in $(seq 1 50); do
  alive=0
  for w in $workers1; do kill -0 "$w" 2>/dev/null && alive=1; done
  ((alive == 0)) && break
  sleep 0.1
done
((alive == 0)) || fail "workers of the killed gateway still run: $workers1"
wait "$LOAD_PID" || fail "load generator failed"
info "$(cat "$WORK/load.out")"
tell_drained 30 "$cpid"
rc=0; wait "$cpid" || rc=$?
info "sse: $(cat "$WORK/sse.out")"
[[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
(( $(field reopened "$WORK/sse.out") >= 30 )) || fail "the streams of the killed gateway did not move: $(cat "$WORK/sse.out")"
kill -TERM "$pid2"; wait "$pid2" || fail "gateway 2 exit code"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
