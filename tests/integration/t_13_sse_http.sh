#!/usr/bin/env bash
# The gateway's HTTP contract: SSE headers, every event with id: <seq>, replay from
# the start, resume by Last-Event-ID header and by ?last_event_id (the header wins),
# resume past the end waits for new events, and 4xx (never 5xx) for bad requests.
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay
start_sse sse --heartbeat 1s --cors-origin https://app.example
base="http://127.0.0.1:$SSE_PORT"
for i in 1 2 3; do "$OUTBOXD" emit h-1 "{\"i\":$i,\"text\":\"line1\\nline2\"}" >/dev/null; done

curl -s -N -D "$WORK/hdr" --max-time 1.5 "$base/runs/h-1/events" >"$WORK/all" || true
grep -qi '^content-type: text/event-stream' "$WORK/hdr" || fail "content-type: $(cat "$WORK/hdr")"
grep -qi '^cache-control: no-cache' "$WORK/hdr" || fail "no Cache-Control: no-cache"
grep -qi '^x-accel-buffering: no' "$WORK/hdr" || fail "no X-Accel-Buffering: no"
grep -qi '^access-control-allow-origin: https://app.example' "$WORK/hdr" || fail "no CORS header"
[[ $(grep -c '^id: ' "$WORK/all") == 3 ]] || fail "want 3 events: $(cat "$WORK/all")"
[[ $(grep '^id: ' "$WORK/all" | tr -d '\r' | paste -sd,) == "id: 1,id: 2,id: 3" ]] || fail "ids: $(grep '^id' "$WORK/all")"
grep -q '^data: {"i": 1, "text": "line1\\nline2"}' "$WORK/all" || fail "payload not verbatim: $(cat "$WORK/all")"
grep -q '^: heartbeat' "$WORK/all" || fail "no heartbeat comment within 1.5 s at --heartbeat 1s"

curl -s -N --max-time 1 -H 'Last-Event-ID: 1' "$base/runs/h-1/events?last_event_id=2" >"$WORK/hdrwins" || true
[[ $(grep '^id: ' "$WORK/hdrwins" | paste -sd,) == "id: 2,id: 3" ]] || fail "header must win over the query: $(grep '^id' "$WORK/hdrwins")"
curl -s -N --max-time 1 "$base/runs/h-1/events?last_event_id=2" >"$WORK/query" || true
[[ $(grep '^id: ' "$WORK/query" | paste -sd,) == "id: 3" ]] || fail "resume by query: $(grep '^id' "$WORK/query")"

# Past the end: nothing until a new event comes, then exactly that one.
curl -s -N --max-time 3 "$base/runs/h-1/events?last_event_id=3" >"$WORK/wait" &
cpid=$!
sleep 1
"$OUTBOXD" emit h-1 '{"i":4}' >/dev/null
wait "$cpid" || true
[[ $(grep '^id: ' "$WORK/wait" | paste -sd,) == "id: 4" ]] || fail "resume past the end: $(cat "$WORK/wait")"

code() { curl -s -o "$WORK/body" -w '%{http_code}' "$@"; }
[[ $(code -H 'Last-Event-ID: abc' "$base/runs/h-1/events") == 400 ]] || fail "malformed Last-Event-ID not 400"
grep -q "Last-Event-ID" "$WORK/body" || fail "400 body does not say what is wrong"
[[ $(code "$base/runs/h-1/events?last_event_id=-4") == 400 ]] || fail "negative last_event_id not 400"
[[ $(code "$base/runs/%ff%fe/events") == 400 ]] || fail "non-UTF-8 run id not 400"
[[ $(code "$base/runs/$(head -c 5000 /dev/zero | tr '\0' x)/events") == 400 ]] || fail "5000-byte run id not 400"
[[ $(code "$base/runs//events") == 400 ]] || fail "empty run id not 400"
[[ $(code "$base/nope") == 404 ]] || fail "unknown path not 404"
[[ $(code "$base/runs/h-1/events/x") == 404 ]] || fail "unknown sub-path not 404"
[[ $(code -X POST "$base/runs/h-1/events") == 405 ]] || fail "POST not 405"
[[ $(code -X PATCH "$base/runs/h-1/events") == 405 ]] || fail "PATCH not 405 (a client's mistake is never 5xx)"
[[ $(code "$base/healthz") == 200 ]] || fail "healthz not 200"
[[ $(code "$base/runs/h-1") == 200 ]] && grep -q EventSource "$WORK/body" || fail "viewer page missing"
# A long (1 KB) run id with characters that mean something to Redis patterns.
rid="weird {}*:?[] é $(head -c 900 /dev/zero | tr '\0' y)"
"$OUTBOXD" emit "$rid" '{"w":1}' >/dev/null
enc=$(printf '%s' "$rid" | od -An -tx1 -v | tr -s ' \n' ' ' | sed 's/ $//; s/^ //; s/ /%/g; s/^/%/')
curl -s -N --max-time 1 "$base/runs/$enc/events" >"$WORK/weird" || true
grep -q '^data: {"w": 1}' "$WORK/weird" || fail "odd run id did not stream: $(head -c 300 "$WORK/weird")"
# SIGTERM with an HTTP/1.0 stream open (as nginx speaks upstream): clean exit 0.
curl -s -N --http1.0 --max-time 5 "$base/runs/h-1/events" >"$WORK/h10" &
sleep 0.5
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway did not exit 0 on SIGTERM"
grep -q '^id: 4' "$WORK/h10" || fail "HTTP/1.0 stream got: $(head -c 200 "$WORK/h10")"

# A full gateway ends extra streams at once with a retry hint (200: a browser retries).
start_sse full --max-clients 1
curl -s -N --max-time 3 "http://127.0.0.1:$SSE_PORT/runs/h-1/events" >/dev/null &
sleep 0.3
[[ $(curl -s -o "$WORK/full" -w '%{http_code}' --max-time 2 "http://127.0.0.1:$SSE_PORT/runs/h-1/events") == 200 ]] ||
  fail "full gateway did not answer 200"
grep -q '^retry: 5000' "$WORK/full" || fail "full gateway gave no retry hint: $(cat "$WORK/full")"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway did not exit 0 on SIGTERM"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
