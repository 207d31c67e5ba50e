#!/usr/bin/env bash
# 20 runs watched at 1,000 events/s in total, one stream cut midway and resumed with
# Last-Event-ID: every stream gets every event once, in order, each with an id; the
# commit->SSE p99 is reported (and must stay well under 500 ms).
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay
start_sse sse
sse_checked_under_load "--rate 1000 --runs 20 --conns 8 --seconds 8 --prefix live" \
  --prefix live --runs 20 --per-run 1 --cut-after 200 --cut-ms 700 --idle-ms 3000 --max-seconds 60
p99=$(field p99 "$WORK/sse.out")
awk -v p="$p99" 'BEGIN { exit !(p < 500) }' || fail "commit->SSE p99 $p99 ms"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
