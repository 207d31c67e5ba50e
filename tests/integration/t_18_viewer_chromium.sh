#!/usr/bin/env bash
# The viewer page in headless Chromium: it connects, shows the events already there,
# and shows an event committed after the page loaded. The page mirrors its state in
# document.title, read through Chromium's DevTools HTTP endpoint (/json/list).
. "$(dirname "$0")/lib.sh"
command -v chromium >/dev/null || fail "chromium is not installed (scripts/install-deps.sh installs it)"
new_db
start_relay relay
start_sse sse
"$OUTBOXD" emit view-1 '{"before":"the page"}' >/dev/null
"$OUTBOXD" emit view-1 '{"also":"before"}' >/dev/null
dport=$(pick_port)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$WORK/chromium" --remote-debugging-port="$dport" \
  "http://127.0.0.1:$SSE_PORT/runs/view-1" >"$WORK/chromium.log" 2>&1 &
PIDS+=($!)
title() { curl -s "http://127.0.0.1:$dport/json/list" | grep -o '"title": *"[^"]*"' | grep 'run view-1' | head -1; }
wait_title() {
  for _ in $(seq 1 300); do [[ "$(title)" == *"$1"* ]] && return 0; sleep 0.05; done
  fail "page title never showed '$1' (it shows: $(title))"
}
wait_title "open · last event 2"
info "page loaded: $(title)"
"$OUTBOXD" emit view-1 '{"after":"the page loaded"}' >/dev/null
t0=$(date +%s%N)
wait_title "last event 3"
info "new event on the page after $((($(date +%s%N) - t0) / 1000000)) ms: $(title)"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
stop_relay "$RELAY_PID" 5
