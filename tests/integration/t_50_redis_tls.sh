#!/usr/bin/env bash
# Relay and gateway end to end through a TLS-only Redis (a throw-away CA made with the
# openssl command line) as ACL users with exactly the rules docs/OPERATIONS.md gives:
# 1,000 events/s over 20 runs for 8 s; a TLS subscriber and SSE clients on every run
# see each event once, in order; the gateway got them live from Redis (not by polling
# PostgreSQL); `outboxd status` reaches the primary over TLS.
. "$(dirname "$0")/lib.sh"
new_db
PKI="$WORK/pki"
make_pki "$PKI"
{
  echo "user default off"
  echo "user checker on >checker-pw ~* &* +@all"
  acl_rules relay
  acl_rules gateway
  acl_rules status
} >"$WORK/users.acl"
start_redis tls tls --aclfile "$WORK/users.acl"
TLS_PORT=$R_PORT
ca=(--redis-tls-ca "$PKI/ca.crt")

hport=$(pick_port)
REDIS_URL="rediss://outboxd-relay:relay-pw@127.0.0.1:$TLS_PORT/0" \
  start_relay relay "${ca[@]}" --http-listen "127.0.0.1:$hport"
REDIS_URL="rediss://outboxd-gateway:gateway-pw@127.0.0.1:$TLS_PORT/0" start_sse sse "${ca[@]}"
start_sub sub --port "$TLS_PORT" --tls-ca "$PKI/ca.crt" --user checker --password checker-pw \
  --prefix tls --idle-ms 4000 --max-seconds 80 --check
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix tls --runs 20 --per-run 1 --idle-ms 4000 --max-seconds 80 \
  --ready-file "$WORK/sse.ready" --check >"$WORK/sse.out" 2>"$WORK/sse.err" &
spid=$!; PIDS+=("$spid")
for _ in $(seq 1 100); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done
for _ in $(seq 1 100); do curl -s "http://127.0.0.1:$SSE_PORT/healthz" | grep -q '"redis":"up"' && break; sleep 0.05; done

start_load --rate 1000 --runs 20 --conns 8 --seconds 8 --prefix tls
wait "$LOAD_PID"
info "$(cat "$WORK/load.out")"
events=$(field inserted "$WORK/load.out")
((events >= 7000)) || fail "the load reached only $events events"
finish_sub sub "$SUB_PID"
tell_drained 30 "$spid"
rc=0; wait "$spid" || rc=$?
info "sse: $(cat "$WORK/sse.out")"
[[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
wait_drained 10

# Live from Redis over TLS: each event reached the gateway as a message.
live=$(curl -s "http://127.0.0.1:$SSE_PORT/metrics" | awk '$1 == "outboxd_sse_live_messages_total" {print $2}')
info "gateway: $live live messages for $events events"
((live >= events * 9 / 10)) || fail "the gateway got $live of $events events live from Redis"
grep -q "connected to the primary at 127.0.0.1:$TLS_PORT (TLS)" "$WORK/relay.log" || fail "relay log: no TLS connection"
grep -q "subscribing on the primary at 127.0.0.1:$TLS_PORT (TLS)" "$WORK/sse.log" || fail "gateway log: no TLS connection"
[[ $(readyz "http://127.0.0.1:$hport") == "200 ready"* ]] || fail "/readyz: $(readyz "http://127.0.0.1:$hport")"

# status speaks TLS with the same flags (and the documented minimal rules).
REDIS_URL="rediss://outboxd-status:status-pw@127.0.0.1:$TLS_PORT/0" "$OUTBOXD" status "${ca[@]}" >"$WORK/status.out" ||
  fail "status: $(cat "$WORK/status.out")"
grep -q "redis: *up, primary 127.0.0.1:$TLS_PORT (TLS)" "$WORK/status.out" || fail "status: $(cat "$WORK/status.out")"

kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
stop_relay "$RELAY_PID" 5
