#!/usr/bin/env bash
# The gateway's send path: writes go straight to the socket, and a busy run's live
# events go out together once per --stream-coalesce (200 ms here, far above the
# default, so that every write carries many events). At 1,000 events/s over 5 runs,
# HTTP/1.1 (chunked) and HTTP/1.0 (plain, ended by closing) streams, one of them cut
# and resumed with Last-Event-ID, each get every event once, in order, in well-formed
# chunks (HTTP/1.1) or bare (HTTP/1.0), every line an SSE field (obx_sse --check);
# the writes are far fewer than the events; SIGTERM ends both kinds cleanly.
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay
start_sse sse --workers 1 --stream-coalesce 200ms
base="http://127.0.0.1:$SSE_PORT"

"$BUILD/obx_sse" --port "$SSE_PORT" --prefix co --runs 5 --per-run 4 --cut-after 300 --cut-ms 500 --idle-ms 3000 \
  --max-seconds 60 --ready-file "$WORK/a.ready" --check >"$WORK/a.out" 2>"$WORK/a.err" &
apid=$!; PIDS+=("$apid")
"$BUILD/obx_sse" --port "$SSE_PORT" --http10 --prefix co --runs 5 --per-run 2 --idle-ms 3000 \
  --max-seconds 60 --ready-file "$WORK/b.ready" --check >"$WORK/b.out" 2>"$WORK/b.err" &
bpid=$!; PIDS+=("$bpid")
for _ in $(seq 1 100); do [[ -f "$WORK/a.ready" && -f "$WORK/b.ready" ]] && break; sleep 0.05; done
[[ -f "$WORK/a.ready" && -f "$WORK/b.ready" ]] || fail "streams did not open"
"$BUILD/obx_load" --rate 1000 --runs 5 --conns 8 --seconds 4 --prefix co >"$WORK/load.out"
info "$(cat "$WORK/load.out")"
for who in a b; do
  rc=0; wait "$([[ $who == a ]] && echo "$apid" || echo "$bpid")" || rc=$?
  info "$who: $(cat "$WORK/$who.out")"
  [[ $rc -eq 0 ]] || fail "SSE check failed ($who): $(cat "$WORK/$who.out") $(head -3 "$WORK/$who.err")"
done
(( $(field reopened "$WORK/a.out") == 0 && $(field received "$WORK/a.out") > 0 )) || fail "unexpected reconnects"
# Several events per write: 28 live streams got ~4,000 events each.
m=$(curl -s "$base/metrics")
sent=$(awk '/^outboxd_sse_events_sent_total / {print $2}' <<<"$m")
writes=$(awk '/^outboxd_sse_stream_writes_total / {print $2}' <<<"$m")
info "events sent $sent in $writes writes"
awk -v s="$sent" -v w="$writes" 'BEGIN { exit !(w > 0 && s / w >= 5) }' ||
  fail "$sent events in $writes writes: live events were not coalesced"

# SIGTERM with an HTTP/1.0 and an HTTP/1.1 stream open: both end cleanly, exit 0.
curl -s -N --http1.0 --max-time 5 "$base/runs/co-1/events" >"$WORK/end10" &
c10=$!
curl -s -N --max-time 5 "$base/runs/co-1/events" >"$WORK/end11" &
c11=$!
sleep 0.5
kill -TERM "$SSE_PID"
wait "$SSE_PID" || fail "gateway exit code"
rc=0; wait "$c10" || rc=$?
[[ $rc -eq 0 ]] || fail "the HTTP/1.0 stream did not end cleanly (curl $rc)"
rc=0; wait "$c11" || rc=$?
[[ $rc -eq 0 ]] || fail "the HTTP/1.1 stream did not end cleanly (curl $rc)"
newest=$(q "SELECT max(seq) FROM run_outbox WHERE run_id = 'co-1'")
for f in end10 end11; do
  grep -q "^id: $newest\$" "$WORK/$f" || fail "$f: the stream at shutdown got: $(tail -c 200 "$WORK/$f")"
done
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
