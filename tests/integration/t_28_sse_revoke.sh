#!/usr/bin/env bash
# Revocation: `outboxd revoke --jti ID` and `--sub SUBJECT --until TIME` record it in
# PostgreSQL and notify every gateway; matching open streams on two gateways get
# event: auth-revoked within a second, others go on, and the revoked tokens get 401
# (also from a gateway started afterwards) until the revocation ends.
. "$(dirname "$0")/lib.sh"
new_db
"$OUTBOXD" emit rv-1 '{"i":1}' >/dev/null
start_relay relay
wait_drained 10
keys="$WORK/keys"
jose_keys "$keys"
c='"runs":["rv-*"],"exp":"+300"'
mint "$keys" <<SPEC
a sign es {$c,"jti":"j-a","sub":"alice"}
b sign ed {$c,"jti":"j-b","sub":"bob"}
c sign rs {$c,"jti":"j-c","sub":"alice"}
SPEC
start_sse gw1 --auth jwt --auth-jwks "$keys/jwks.json"
p1=$SSE_PORT; g1=$SSE_PID
start_sse gw2 --auth jwt --auth-jwks "$keys/jwks.json"
p2=$SSE_PORT; g2=$SSE_PID
wait_log "$WORK/gw1.log" "revocation(s) in force" 5
wait_log "$WORK/gw2.log" "revocation(s) in force" 5

open() { # open NAME PORT TOKEN: a stream in the background, output in $WORK/NAME.s
  curl -s -N --max-time 20 -H "Authorization: Bearer $3" "http://127.0.0.1:$2/runs/rv-1/events" >"$WORK/$1.s" &
  PIDS+=($!)
}
open a1 "$p1" "${TOK[a]}"; open a2 "$p2" "${TOK[a]}"; open b1 "$p1" "${TOK[b]}"; open c2 "$p2" "${TOK[c]}"
for s in a1 a2 b1 c2; do
  for _ in $(seq 1 60); do grep -q '^id: 1' "$WORK/$s.s" && break; sleep 0.05; done
  grep -q '^id: 1' "$WORK/$s.s" || fail "stream $s did not open"
done
# revoked_within MS NAME...: each stream gets auth-revoked within MS of now.
revoked_within() {
  local limit=$1 t0 s; shift
  t0=$(date +%s%N)
  for s in "$@"; do
    while ! grep -q '^event: auth-revoked' "$WORK/$s.s"; do
      (( ($(date +%s%N) - t0) / 1000000 < limit )) || fail "stream $s not revoked within $limit ms: $(cat "$WORK/$s.s")"
      sleep 0.02
    done
  done
  info "$* revoked after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

"$OUTBOXD" revoke --jti j-a >"$WORK/revoke.out" || fail "revoke --jti failed"
revoked_within 1000 a1 a2
sleep 0.3
grep -q 'auth-revoked' "$WORK/b1.s" "$WORK/c2.s" && fail "a stream of another token was revoked"
[[ $(http_code "http://127.0.0.1:$p1/runs/rv-1/events" -H "Authorization: Bearer ${TOK[a]}") == 401 ]] ||
  fail "revoked jti accepted by gateway 1"
[[ $(http_code "http://127.0.0.1:$p2/runs/rv-1/events" -H "Authorization: Bearer ${TOK[a]}") == 401 ]] ||
  fail "revoked jti accepted by gateway 2"
grep -q 'revoked' "$WORK/body" || fail "401 does not say the token is revoked"

"$OUTBOXD" revoke --sub alice --until 1h >"$WORK/revoke2.out" || fail "revoke --sub failed"
revoked_within 1000 c2
grep -q 'auth-revoked' "$WORK/b1.s" && fail "bob's stream was revoked with alice"
stream_ok "http://127.0.0.1:$p1/runs/rv-1/events" "${TOK[b]}" || fail "bob refused"

# A gateway started later reads the revocations in force.
start_sse gw3 --auth jwt --auth-jwks "$keys/jwks.json"
wait_log "$WORK/gw3.log" "2 revocation(s) in force" 5
[[ $(http_code "http://127.0.0.1:$SSE_PORT/runs/rv-1/events" -H "Authorization: Bearer ${TOK[c]}") == 401 ]] ||
  fail "a later gateway accepted a revoked subject"

# Bad uses of the command.
rc=0; "$OUTBOXD" revoke >/dev/null 2>&1 || rc=$?; [[ $rc == 2 ]] || fail "revoke without --jti/--sub: $rc"
rc=0; "$OUTBOXD" revoke --jti x --sub y >/dev/null 2>&1 || rc=$?; [[ $rc == 2 ]] || fail "revoke with both: $rc"
rc=0; "$OUTBOXD" revoke --jti x --until 2001-01-01T00:00:00Z >/dev/null 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "revoke until a past time: $rc"
rc=0; "$OUTBOXD" revoke --jti x --until soon >/dev/null 2>&1 || rc=$?; [[ $rc == 2 ]] || fail "revoke --until soon: $rc"
for p in $g1 $g2 $SSE_PID; do kill -TERM "$p"; wait "$p" || fail "gateway exit code"; done
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
