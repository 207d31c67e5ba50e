#!/usr/bin/env bash
# The gateway's send path: writes go straight to the socket, and a busy run's live
# events go out together once per --stream-coalesce (200 ms here, far above the
# default, so that every write carries many events). At 1,000 events/s over 5 runs,
# HTTP/1.1 (chunked) and HTTP/1.0 (plain, ended by closing) streams, one of them cut
# and resumed with Last-Event-ID, each get every event once, in order, in well-formed
# chunks (HTTP/1.1) or bare (HTTP/1.0), every line an SSE field (obx_sse --check);
# the writes are far fewer than the events. With --stream-coalesce 0 each event is a
# write of its own. An HTTP/1.0 client that asks for keep-alive
# still gets a close-delimited body; SIGTERM sends the events a fan-out holds, then
# ends both kinds of stream cleanly.
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
tell_drained 30 "$apid" "$bpid"
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

kill -TERM "$SSE_PID"
wait "$SSE_PID" || fail "gateway exit code"

# --stream-coalesce 0: every live event goes out at once, one write per stream each.
start_sse sse0 --workers 1 --stream-coalesce 0
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix cz --runs 2 --per-run 3 --idle-ms 2000 \
  --max-seconds 60 --ready-file "$WORK/z.ready" --check >"$WORK/z.out" 2>"$WORK/z.err" &
zpid=$!; PIDS+=("$zpid")
for _ in $(seq 1 100); do [[ -f "$WORK/z.ready" ]] && break; sleep 0.05; done
[[ -f "$WORK/z.ready" ]] || fail "streams did not open (coalesce 0)"
sleep 0.5 # the runs' first reads are done
"$BUILD/obx_load" --rate 200 --runs 2 --conns 2 --seconds 1 --prefix cz >"$WORK/loadz.out"
tell_drained 30 "$zpid"
rc=0; wait "$zpid" || rc=$?
info "coalesce 0: $(cat "$WORK/z.out")"
[[ $rc -eq 0 ]] || fail "SSE check failed (coalesce 0): $(cat "$WORK/z.out") $(head -3 "$WORK/z.err")"
m=$(curl -s "http://127.0.0.1:$SSE_PORT/metrics")
sent=$(awk '/^outboxd_sse_events_sent_total / {print $2}' <<<"$m")
writes=$(awk '/^outboxd_sse_stream_writes_total / {print $2}' <<<"$m")
info "coalesce 0: events sent $sent in $writes writes"
awk -v s="$sent" -v w="$writes" 'BEGIN { exit !(s > 0 && w >= 0.9 * s) }' ||
  fail "coalesce 0: $sent events in $writes writes: live events were held back"
kill -TERM "$SSE_PID"
wait "$SSE_PID" || fail "gateway exit code (coalesce 0)"

# A second gateway that holds a busy run's events for a whole second.
start_sse sse2 --workers 1 --stream-coalesce 1000ms
base="http://127.0.0.1:$SSE_PORT"
live() { curl -s "$base/metrics" | awk '/^outboxd_sse_live_messages_total / {print $2}'; }
wait_for() { # wait_for FILE PATTERN: until the stream in FILE has the line
  for _ in $(seq 1 100); do grep -q "$2" "$1" && return 0; sleep 0.05; done
  fail "$1 never got '$2': $(tail -c 200 "$1")"
}

# An HTTP/1.0 client that asks for keep-alive gets a body that ends with the
# connection (Connection: close, no Content-Length: a "Content-Length: 0" would end
# its reply before the first event).
curl -s -i -N --http1.0 -H 'Connection: keep-alive' --max-time 2 "$base/runs/co-2/events" >"$WORK/ka10" || true
tr -d '\r' <"$WORK/ka10" >"$WORK/ka10.txt"
grep -qi '^Connection: close$' "$WORK/ka10.txt" || fail "HTTP/1.0 keep-alive: no Connection: close: $(head -8 "$WORK/ka10.txt")"
! grep -qi '^Content-Length' "$WORK/ka10.txt" || fail "HTTP/1.0 keep-alive: $(grep -i '^Content-Length' "$WORK/ka10.txt")"
! grep -qi '^Transfer-Encoding' "$WORK/ka10.txt" || fail "HTTP/1.0 keep-alive got chunked encoding"
n2=$(q "SELECT max(seq) FROM run_outbox WHERE run_id = 'co-2'")
grep -q "^id: $n2\$" "$WORK/ka10.txt" || fail "HTTP/1.0 keep-alive: the stream lacks seq $n2: $(head -c 300 "$WORK/ka10.txt")"

# SIGTERM with an HTTP/1.0 and an HTTP/1.1 stream open and an event waiting for its
# run's next fan-out: the event goes out, both streams end cleanly, exit 0.
newest=$(q "SELECT max(seq) FROM run_outbox WHERE run_id = 'co-1'")
curl -s -N --http1.0 --max-time 10 "$base/runs/co-1/events?last_event_id=$newest" >"$WORK/end10" &
c10=$!
curl -s -N --max-time 10 "$base/runs/co-1/events?last_event_id=$newest" >"$WORK/end11" &
c11=$!
for _ in $(seq 1 100); do
  [[ $(curl -s "$base/metrics" | awk '/^outboxd_sse_streams / {print $2}') == 2 ]] && break; sleep 0.05
done
"$OUTBOXD" emit co-1 '{"last":"a"}' >/dev/null
wait_for "$WORK/end11" "^id: $((newest + 1))\$"
wait_for "$WORK/end10" "^id: $((newest + 1))\$"
before=$(live)
"$OUTBOXD" emit co-1 '{"last":"b"}' >/dev/null
for _ in $(seq 1 100); do (( $(live) > before )) && break; sleep 0.01; done
(( $(live) > before )) || fail "the gateway did not receive the last event"
grep -q "^id: $((newest + 2))\$" "$WORK/end11" && info "(the last event went out before SIGTERM: the machine was slow)"
kill -TERM "$SSE_PID"
wait "$SSE_PID" || fail "gateway exit code"
rc=0; wait "$c10" || rc=$?
[[ $rc -eq 0 ]] || fail "the HTTP/1.0 stream did not end cleanly (curl $rc)"
rc=0; wait "$c11" || rc=$?
[[ $rc -eq 0 ]] || fail "the HTTP/1.1 stream did not end cleanly (curl $rc)"
for f in end10 end11; do
  got=$(grep '^id: ' "$WORK/$f" | cut -d' ' -f2 | tr '\n' ' ')
  [[ "$got" == "$((newest + 1)) $((newest + 2)) " ]] || fail "$f: the stream at shutdown got ids: $got"
done
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
