#!/usr/bin/env bash
# Readers that hang up in the middle of the gateway's writes. On one busy run (200
# events/s of 2 KB), 10 readers stop reading (SIGSTOP) until the gateway queues for
# them and pauses them (bytes of a partly written event wait in its queue), and 10 read
# normally; then all 20 are killed with SIGKILL, so the kernel resets the connections
# that had unread data and closes the others while events keep coming (the gateway's
# next sends meet ECONNRESET and EPIPE). Meanwhile a checking client on the same run
# gets every event once, in order; the gateway does not die of SIGPIPE, frees every
# stream that hung up, and ends cleanly (no sanitizer report under build/asan).
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay
start_sse sse --workers 1 --client-buffer 65536
base="http://127.0.0.1:$SSE_PORT"
streams() { curl -s "$base/metrics" | awk '/^outboxd_sse_streams / {print $2}'; }

"$BUILD/obx_sse" --port "$SSE_PORT" --prefix hang --runs 1 --per-run 2 --idle-ms 3000 --max-seconds 60 \
  --ready-file "$WORK/c.ready" --check >"$WORK/c.out" 2>"$WORK/c.err" &
cpid=$!; PIDS+=("$cpid")
for _ in $(seq 1 100); do [[ -f "$WORK/c.ready" ]] && break; sleep 0.05; done
[[ -f "$WORK/c.ready" ]] || fail "the checking streams did not open"
readers=()
for i in $(seq 1 20); do
  curl -s -N --max-time 60 "$base/runs/hang-0/events" >/dev/null &
  readers+=($!); PIDS+=($!)
done
for _ in $(seq 1 100); do [[ $(streams) == 22 ]] && break; sleep 0.05; done
[[ $(streams) == 22 ]] || fail "expected 22 streams, the gateway has $(streams)"
kill -STOP "${readers[@]:0:10}"

"$BUILD/obx_load" --rate 200 --runs 1 --conns 2 --seconds 5 --prefix hang --pad 2000 >"$WORK/load.out" &
lpid=$!; PIDS+=("$lpid")
# The stopped readers' sockets fill, then the gateway's queue for them (64 KB each).
for _ in $(seq 1 60); do
  [[ $(curl -s "$base/metrics" | awk '/^outboxd_sse_slow_client_pauses_total / {print $2}') -ge 10 ]] && break
  sleep 0.1
done
pauses=$(curl -s "$base/metrics" | awk '/^outboxd_sse_slow_client_pauses_total / {print $2}')
((pauses >= 10)) || fail "the stopped readers were not paused with bytes queued (pauses: $pauses)"
{ kill -9 "${readers[@]}"; wait "${readers[@]}"; } 2>/dev/null || true
wait "$lpid" || fail "load: $(cat "$WORK/load.out")"
info "$(cat "$WORK/load.out"); paused $pauses times"

# Every hung-up stream is freed; the gateway is alive.
for _ in $(seq 1 100); do [[ $(streams) == 2 ]] && break; sleep 0.1; done
[[ $(streams) == 2 ]] || fail "after the hang-ups the gateway still counts $(streams) streams (want 2)"
tell_drained 30 "$cpid"
rc=0; wait "$cpid" || rc=$?
info "checker: $(cat "$WORK/c.out")"
[[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/c.out") $(head -3 "$WORK/c.err")"
(( $(field received "$WORK/c.out") == 2 * $(field inserted "$WORK/load.out") )) ||
  fail "the checking streams got $(field received "$WORK/c.out") events, want 2 x $(field inserted "$WORK/load.out")"
kill -0 "$SSE_PID" || fail "the gateway died: $(tail -5 "$WORK/sse.log")"
kill -TERM "$SSE_PID"
wait "$SSE_PID" || fail "gateway exit code"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
