#!/usr/bin/env bash
# PostgreSQL stalled (every server process SIGSTOPped: sockets stay open, nothing
# answers): statement and connect timeouts notice, neither the relay nor the gateway
# hangs, and SIGTERM still stops both with exit 0. After the server continues, a new
# relay publishes everything committed before the stall: no row stays unpublished.
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay --pg-timeout 1s
start_sse sse --pg-timeout 1s
curl -s -N --max-time 20 "http://127.0.0.1:$SSE_PORT/runs/st-1/events" >"$WORK/stream" &
PIDS+=($!)
"$OUTBOXD" emit st-1 '{"before":"stall"}' >/dev/null
wait_drained 5
"$OUTBOXD" emit st-1 '{"committed":"just before the stall"}' >/dev/null
pg_pids=$(pgrep -u postgres -f "$PGDATA" || true; pgrep -P "$(head -1 "$PGDATA/postmaster.pid")" || true)
thaw() { kill -CONT $pg_pids 2>/dev/null || true; }
trap 'thaw; cleanup' EXIT
kill -STOP $pg_pids
info "postgresql stalled"
sleep 3
kill -0 "$RELAY_PID" && kill -0 "$SSE_PID" || fail "a process died while PostgreSQL was stalled"
t0=$SECONDS
kill -TERM "$SSE_PID"
rc=0; wait "$SSE_PID" || rc=$?
[[ $rc == 0 ]] || fail "gateway exited $rc on SIGTERM with PostgreSQL stalled"
stop_relay "$RELAY_PID" 6
info "both stopped within $((SECONDS - t0)) s of SIGTERM while PostgreSQL was stalled"
grep -q "timed out" "$WORK/relay.log" || fail "the relay never reported a timeout"
thaw
info "postgresql continued"
start_relay relay2
wait_drained 10
stop_relay "$RELAY_PID" 5
grep -q '^data: {"before": "stall"}' "$WORK/stream" || fail "the stream did not get the event before the stall"
