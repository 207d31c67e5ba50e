#!/usr/bin/env bash
# 1,000 concurrent streams over 100 runs at 1,000 events/s in total: all complete
# (every event once, in order, on every stream). Reports the gateway's memory per
# stream.
. "$(dirname "$0")/lib.sh"
ulimit -n 8192 2>/dev/null || ulimit -n 4096 2>/dev/null || true
new_db
start_relay relay
# One process: reads are shared by the streams of a run within a process (each of
# --workers N would read each run once).
start_sse sse --workers 1
rss0=$(rss_kb "$SSE_PID")
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix many --runs 100 --per-run 10 --idle-ms 4000 --max-seconds 90 \
  --ready-file "$WORK/sse.ready" --check >"$WORK/sse.out" 2>"$WORK/sse.err" &
cpid=$!; PIDS+=("$cpid")
for _ in $(seq 1 200); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done
[[ -f "$WORK/sse.ready" ]] || fail "not all 1,000 streams opened: $(tail -3 "$WORK/sse.log")"
rss1=$(rss_kb "$SSE_PID")
info "gateway RSS: ${rss0} KB idle, ${rss1} KB with 1,000 idle streams ($(((rss1 - rss0) * 1024 / 1000)) bytes each)"
"$BUILD/obx_load" --rate 1000 --runs 100 --conns 8 --seconds 6 --prefix many >"$WORK/load.out"
info "$(cat "$WORK/load.out")"
tell_drained 30 "$cpid"
rc=0; wait "$cpid" || rc=$?
info "sse: $(cat "$WORK/sse.out")"
[[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
# Ten streams of a run share its reads: a few reads per run, not one per stream.
replays=$(grep 'stats:' "$WORK/sse.log" | tail -1 | grep -o 'replays=[0-9]*' | cut -d= -f2)
info "PostgreSQL reads for 1,000 streams: $replays"
((replays <= 300)) || fail "$replays reads for 1,000 streams over 100 runs: reads are not shared per run"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
