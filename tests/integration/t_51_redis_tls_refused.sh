#!/usr/bin/env bash
# TLS refuses what it must and says why: a certificate from another CA, a host name
# the certificate is not for, a plaintext server behind rediss://, a TLS server behind
# redis://, and a server that requires a client certificate when none is given. Each
# gives one log line naming the cause, /readyz 503 with it, retries without a crash,
# and delivers nothing (no plaintext fallback: a subscriber on the plaintext server
# sees nothing either). Then the client certificate is given and relay and gateway
# work.
. "$(dirname "$0")/lib.sh"
new_db
PKI="$WORK/pki"
make_pki "$PKI"
start_redis tls tls
TLS_PORT=$R_PORT
start_redis mtls tls --tls-auth-clients yes
MTLS_PORT=$R_PORT
ca=(--redis-tls-ca "$PKI/ca.crt")

# Subscribers that must see nothing while the relay is refused: on the TLS server,
# and on the plaintext one that a fallback would reach.
start_sub tls-sub --port "$TLS_PORT" --tls-ca "$PKI/ca.crt" --prefix refused --max-seconds 80
TLS_SUB=$SUB_PID
start_sub plain-sub --prefix refused --max-seconds 80
PLAIN_SUB=$SUB_PID
"$OUTBOXD" emit refused-1 '{"n":1}' >/dev/null

# refused NAME URL PATTERN [relay flags...]: the relay logs PATTERN, /readyz says it
# with 503, the event stays unpublished, the relay keeps running.
refused() {
  local name=$1 url=$2 pattern=$3 hport
  shift 3
  hport=$(pick_port)
  REDIS_URL=$url start_relay "$name" --redis-timeout 300ms --http-listen "127.0.0.1:$hport" "$@"
  wait_log "$WORK/$name.log" "$pattern" 10
  local r
  r=$(readyz "http://127.0.0.1:$hport")
  [[ $r == "503 not ready"*"$pattern"* ]] || fail "$name: /readyz: $r"
  sleep 1 # a few more attempts
  kill -0 "$RELAY_PID" || fail "$name: the relay died"
  [[ $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL") == 1 ]] || fail "$name: the event was published"
  info "$name: $(grep -m1 -o "redis: .*" "$WORK/$name.log")"
  stop_relay "$RELAY_PID" 5
}
refused wrong-ca "rediss://127.0.0.1:$TLS_PORT/0" "certificate does not verify" --redis-tls-ca "$PKI/other-ca.crt"
refused system-store "rediss://127.0.0.1:$TLS_PORT/0" "certificate does not verify"
refused wrong-host "rediss://localhost:$TLS_PORT/0" "certificate is not for 'localhost'" "${ca[@]}"
refused wrong-name "rediss://127.0.0.1:$TLS_PORT/0" "certificate is not for 'other.test'" "${ca[@]}" \
  --redis-tls-server-name other.test
refused plaintext-server "rediss://127.0.0.1:$REDIS_PORT/0" "does the server speak TLS?" "${ca[@]}"
refused tls-server "redis://127.0.0.1:$TLS_PORT/0" "is it a TLS port?"
refused no-client-cert "rediss://127.0.0.1:$MTLS_PORT/0" "client certificate" "${ca[@]}"
# A warning names the cause once per attempt round, never more than a line each.
for f in wrong-ca wrong-host plaintext-server tls-server no-client-cert; do
  n=$(grep -c "redis: " "$WORK/$f.log" || true)
  ((n >= 1)) || fail "$f: no log line"
done

# The gateway says the same and serves from PostgreSQL meanwhile.
REDIS_URL="rediss://127.0.0.1:$TLS_PORT/0" start_sse sse-wrong-ca --redis-tls-ca "$PKI/other-ca.crt"
wait_log "$WORK/sse-wrong-ca.log" "certificate does not verify" 10
curl -s "http://127.0.0.1:$SSE_PORT/healthz" | grep -q '"redis":"down"' || fail "gateway /healthz with a wrong CA"
curl -s -N --max-time 2 "http://127.0.0.1:$SSE_PORT/runs/refused-1/events" >"$WORK/stream" || true
grep -q '^id: 1$' "$WORK/stream" || fail "the gateway did not serve the run from PostgreSQL: $(cat "$WORK/stream")"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
# Nothing listening: TLS connections that never get past TCP are freed whole (the
# sanitizer pass would report a leaked session).
REDIS_URL="rediss://127.0.0.1:$(pick_port)/0" start_sse sse-nothing "${ca[@]}"
wait_log "$WORK/sse-nothing.log" "Connection refused" 10
sleep 1
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
REDIS_URL="redis://127.0.0.1:$TLS_PORT/0" start_sse sse-tls-server
wait_log "$WORK/sse-tls-server.log" "is it a TLS port?" 10
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
# Once per process (each worker has its own subscription), however many retries.
repeats=$(grep "certificate does not verify" "$WORK/sse-wrong-ca.log" | awk '{print $3}' | sort | uniq -d)
[[ -z "$repeats" ]] || fail "the gateway repeated the same cause: $(grep "certificate does not verify" "$WORK/sse-wrong-ca.log")"

# Nothing reached any subscriber.
kill -TERM "$TLS_SUB" "$PLAIN_SUB"
wait "$TLS_SUB" || true
wait "$PLAIN_SUB" || true
[[ $(field received "$WORK/tls-sub.out") == 0 ]] || fail "TLS subscriber: $(cat "$WORK/tls-sub.out")"
[[ $(field received "$WORK/plain-sub.out") == 0 ]] || fail "plaintext subscriber: $(cat "$WORK/plain-sub.out")"

# With the client certificate, relay and gateway work against the server requiring it.
cert=("${ca[@]}" --redis-tls-cert "$PKI/client.crt" --redis-tls-key "$PKI/client.key")
start_sub mtls-sub --port "$MTLS_PORT" --tls-ca "$PKI/ca.crt" --tls-cert "$PKI/client.crt" \
  --tls-key "$PKI/client.key" --prefix refused --idle-ms 3000 --max-seconds 60 --check
REDIS_URL="rediss://127.0.0.1:$MTLS_PORT/0" start_relay mtls-relay "${cert[@]}"
REDIS_URL="rediss://127.0.0.1:$MTLS_PORT/0" start_sse mtls-sse "${cert[@]}"
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix refused --runs 3 --per-run 1 --idle-ms 3000 --max-seconds 60 \
  --ready-file "$WORK/sse.ready" --check >"$WORK/sse.out" 2>"$WORK/sse.err" &
spid=$!; PIDS+=("$spid")
for _ in $(seq 1 100); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done
"$BUILD/obx_load" --rate 200 --runs 3 --conns 2 --seconds 2 --prefix refused >/dev/null
finish_sub mtls-sub "$SUB_PID"
tell_drained 30 "$spid"
rc=0; wait "$spid" || rc=$?
info "sse: $(cat "$WORK/sse.out")"
[[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
grep -q "subscribing on the primary at 127.0.0.1:$MTLS_PORT (TLS)" "$WORK/mtls-sse.log" || fail "gateway: no mTLS"
wait_drained 10
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
stop_relay "$RELAY_PID" 5
