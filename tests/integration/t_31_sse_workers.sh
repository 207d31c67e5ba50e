#!/usr/bin/env bash
# --workers: three gateway processes share one port. Streams spread over all of them;
# one worker is killed with SIGKILL under 1,000 events/s: the supervisor starts it
# again, its browsers (reconnecting with Last-Event-ID, as EventSource does) lose
# nothing, and every stream gets every event once, in order. /metrics adds up every
# worker's streams, and keeps what a killed worker counted. SIGTERM stops them all and the gateway exits 0. A second gateway
# with workers on the same port is refused, not silently sharing it. A SIGTERM that comes
# while the workers are still starting stops them cleanly too (exit 0), and so does one
# sent to the supervisor and its workers at once.
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay
start_sse sse --workers 3
workers=$(pgrep -P "$SSE_PID" | wc -l)
((workers == 3)) || fail "$workers worker processes, want 3"
# The supervisor sleeps while nothing happens (it once spun on its readiness pipe's EOF,
# taking a fifth of a core).
cpu_ms() { awk '{print int($1 / 1e6)}' "/proc/$1/schedstat"; }
c0=$(cpu_ms "$SSE_PID"); sleep 2; c1=$(cpu_ms "$SSE_PID")
((c1 - c0 < 100)) || fail "the idle supervisor used $((c1 - c0)) ms of CPU in 2 s"
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix wk --runs 30 --per-run 2 --reconnect-ms 200 \
  --idle-ms 3000 --max-seconds 60 --ready-file "$WORK/sse.ready" --check >"$WORK/sse.out" 2>"$WORK/sse.err" &
cpid=$!; PIDS+=("$cpid")
for _ in $(seq 1 100); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done
[[ -f "$WORK/sse.ready" ]] || fail "streams did not open"
# Every worker holds some of the 60 streams (the kernel spreads connections).
for w in $(pgrep -P "$SSE_PID"); do
  n=$(ss -tnpH state established "( sport = :$SSE_PORT )" 2>/dev/null | grep -c "pid=$w," || true)
  info "worker $w holds $n streams"
  ((n > 0)) || fail "worker $w holds no stream: connections are not spread"
done
# Workers publish their counters every 250 ms: the sum settles within that.
for _ in $(seq 1 20); do
  streams=$(curl -s "http://127.0.0.1:$SSE_PORT/metrics" | awk '/^outboxd_sse_streams / {print $2}')
  [[ "$streams" == 60 ]] && break
  sleep 0.1
done
[[ "$streams" == 60 ]] || fail "/metrics counts $streams streams over all workers, want 60"

start_load --rate 1000 --runs 30 --conns 8 --seconds 8 --prefix wk
sleep 3
victim=$(pgrep -P "$SSE_PID" | head -1)
kill -9 "$victim"
info "killed worker $victim"
wait_log "$WORK/sse.log" "restarting it in" 5
for _ in $(seq 1 50); do (( $(pgrep -P "$SSE_PID" | wc -l) == 3 )) && break; sleep 0.1; done
(( $(pgrep -P "$SSE_PID" | wc -l) == 3 )) || fail "the killed worker was not replaced"
wait "$LOAD_PID" || fail "load generator failed"
info "$(cat "$WORK/load.out")"
tell_drained 30 "$cpid"
rc=0; wait "$cpid" || rc=$?
info "sse: $(cat "$WORK/sse.out")"
[[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
(( $(field reopened "$WORK/sse.out") > 0 )) || fail "no stream was cut by the killed worker"

# A second gateway on the same port is refused.
rc=0; timeout 10 "$OUTBOXD" sse --listen "127.0.0.1:$SSE_PORT" --workers 2 >"$WORK/second.log" 2>&1 || rc=$?
[[ $rc -eq 1 ]] || fail "a second gateway on a taken port exited $rc (want 1): $(cat "$WORK/second.log")"
grep -q "cannot listen" "$WORK/second.log" || fail "no clear error for a taken port: $(cat "$WORK/second.log")"

kids=$(pgrep -P "$SSE_PID" | tr '\n' ' ')
kill -TERM "$SSE_PID"
rc=0; wait "$SSE_PID" || rc=$?
[[ $rc -eq 0 ]] || fail "gateway exited $rc after SIGTERM (want 0)"
for k in $kids; do kill -0 "$k" 2>/dev/null && fail "worker $k still runs after the gateway stopped"; done
grep -q "stats: streams=0" "$WORK/sse.log" || fail "no final stats line from the supervisor"
# What the killed worker counted is kept, once: every stream opening is in the total,
# and none twice (at most one per first opening and per reconnect attempt).
opened=$(grep 'stats:' "$WORK/sse.log" | tail -1 | grep -o 'streams_opened=[0-9]*' | cut -d= -f2)
want=$((60 + $(field reopened "$WORK/sse.out")))
((opened >= want)) || fail "the gateway counts $opened stream openings, want at least $want (counts lost with the worker?)"
((opened <= want)) || fail "the gateway counts $opened stream openings, want at most $want (counts added twice?)"

# SIGTERM as soon as the workers exist: each is still setting up (a JWKS URL makes that
# take a while: its TLS context loads the system's CA bundle), and the signal must wait
# for its handling rather than kill it (the gateway then exited 1).
for i in 1 2 3 4 5; do
  port=$(pick_port)
  "$OUTBOXD" sse --listen "127.0.0.1:$port" --workers 3 --auth jwt \
    --auth-jwks-url "https://127.0.0.1:9/jwks.json" >"$WORK/early-$i.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  for _ in $(seq 1 500); do [[ -n $(pgrep -P "$pid") ]] && break; sleep 0.01; done
  kill -TERM "$pid"
  rc=0; wait "$pid" || rc=$?
  [[ $rc -eq 0 ]] || fail "SIGTERM during the workers' start: the gateway exited $rc: $(tail -3 "$WORK/early-$i.log")"
done
info "SIGTERM during the workers' start: 5 of 5 stopped cleanly"

# SIGTERM to the supervisor and every worker at once, as systemd's default KillMode
# (the whole control group) and Ctrl-C in a terminal (SIGINT, the whole process group)
# do: each worker then gets the signal twice (once passed on); the second must not cut
# its browsers off (it made the workers exit 1).
start_sse both --workers 2
kill -INT "$SSE_PID" $(pgrep -P "$SSE_PID")
rc=0; wait "$SSE_PID" || rc=$?
[[ $rc -eq 0 ]] || fail "a signal to the supervisor and its workers at once: exit $rc: $(tail -3 "$WORK/both.log")"
info "a signal to the whole group: clean stop"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
