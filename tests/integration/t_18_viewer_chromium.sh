#!/usr/bin/env bash
# The viewer page in headless Chromium: it connects, shows the events already there,
# and shows an event committed after the page loaded. The page mirrors its state in
# document.title, read through Chromium's DevTools HTTP endpoint (/json/list).
# With authorization: the page takes its token from #token=, and when the gateway says
# auth-expiring it fetches a fresh token from #refresh=URL and carries on past the old
# token's exp from the last event it saw.
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

jose_keys "$WORK/keys"
mint "$WORK/keys" <<SPEC
short sign hs {"runs":["view-*"],"exp":"+7"}
long sign es {"runs":["view-*"],"exp":"+600"}
SPEC
echo "${TOK[long]}" >"$WORK/next-token"
tport=$(pick_port)
start_node tokens token "$tport" "$WORK/next-token"
start_sse auth --auth jwt --auth-jwks "$WORK/keys/jwks.json" --auth-query-token --auth-expiry-warning 3s
"$OUTBOXD" emit view-2 '{"before":"the page"}' >/dev/null
curl -s -X PUT "http://127.0.0.1:$dport/json/new?http://127.0.0.1:$SSE_PORT/runs/view-2%23token=${TOK[short]}%26refresh=http://127.0.0.1:$tport/token" >/dev/null
title() { curl -s "http://127.0.0.1:$dport/json/list" | grep -o '"title": *"[^"]*"' | grep 'run view-2' | head -1; }
wait_title "open · last event 1"
info "page with a token: $(title)"
for _ in $(seq 1 160); do grep -q '^call' "$WORK/tokens.out" && break; sleep 0.05; done
grep -q '^call' "$WORK/tokens.out" || fail "the page did not fetch a fresh token on auth-expiring"
sleep 5 # past the first token's exp
"$OUTBOXD" emit view-2 '{"after":"the first token expired"}' >/dev/null
wait_title "open · last event 2"
info "after the first token's exp: $(title)"
grep -q 'access_token' "$WORK/auth.log" && fail "the token reached the gateway's log"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
stop_relay "$RELAY_PID" 5
