#!/usr/bin/env bash
# Streams stay whole through Redis trouble: Redis stalled (SIGSTOP) for 3 s, then
# killed and restarted, while events flow. The gateway serves from PostgreSQL while
# Redis is out and fills any gap: no stream misses or repeats an event.
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay --redis-timeout 500ms
start_sse sse --redis-timeout 500ms
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix rf --runs 10 --per-run 2 --idle-ms 5000 --max-seconds 90 \
  --ready-file "$WORK/sse.ready" --check >"$WORK/sse.out" 2>"$WORK/sse.err" &
cpid=$!; PIDS+=("$cpid")
for _ in $(seq 1 100); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done
start_load --rate 200 --runs 10 --conns 4 --seconds 12 --prefix rf
sleep 2
rpid=$(cat "$STACK_DIR/redis.pid")
kill -STOP "$rpid"; info "redis stopped"
sleep 3
n1=$(q "SELECT count(*) FROM run_outbox")
kill -CONT "$rpid"; info "redis continued ($n1 events so far)"
sleep 2
redis_kill; info "redis killed"
sleep 2
redis_start; info "redis restarted"
wait "$LOAD_PID"
tell_drained 30 "$cpid"
rc=0; wait "$cpid" || rc=$?
info "sse: $(cat "$WORK/sse.out")"
[[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
grep -q "serving runs from postgresql" "$WORK/sse.log" || fail "the gateway never noticed Redis was out"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
