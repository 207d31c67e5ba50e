#!/usr/bin/env bash
# Sentinel over TLS: a TLS-only primary and a TLS-only sentinel (one is enough to name
# the primary); relay, gateway and status find the primary through the sentinel with
# the TLS settings of a rediss:// URL, and events flow end to end.
. "$(dirname "$0")/lib.sh"
new_db
PKI="$WORK/pki"
make_pki "$PKI"
start_redis primary tls
P=$R_PORT
S=$(pick_port)
cat >"$WORK/sentinel.conf" <<EOC
port 0
tls-port $S
bind 127.0.0.1
daemonize yes
pidfile $WORK/sentinel.pid
logfile $WORK/sentinel.redis.out
dir $WORK
tls-cert-file $PKI/server.crt
tls-key-file $PKI/server.key
tls-ca-cert-file $PKI/ca.crt
tls-auth-clients no
tls-replication yes
sentinel monitor tls-test 127.0.0.1 $P 1
EOC
redis-server "$WORK/sentinel.conf" --sentinel || fail "sentinel"
for _ in $(seq 1 100); do [[ -s "$WORK/sentinel.pid" ]] && break; sleep 0.02; done
PIDS+=("$(cat "$WORK/sentinel.pid")")
tls=(--redis-tls-ca "$PKI/ca.crt")
s=(--redis-sentinel "127.0.0.1:$S" --redis-sentinel-master tls-test "${tls[@]}")
export REDIS_URL="rediss://127.0.0.1:1/0" # host and port come from the sentinel
start_relay relay "${s[@]}"
start_sse sse "${s[@]}"
start_sub sub --port "$P" --tls-ca "$PKI/ca.crt" --prefix stls --idle-ms 3000 --max-seconds 60 --check
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix stls --runs 5 --per-run 1 --idle-ms 3000 --max-seconds 60 \
  --ready-file "$WORK/sse.ready" --check >"$WORK/sse.out" 2>"$WORK/sse.err" &
spid=$!; PIDS+=("$spid")
for _ in $(seq 1 100); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done
"$BUILD/obx_load" --rate 300 --runs 5 --conns 2 --seconds 3 --prefix stls >/dev/null
finish_sub sub "$SUB_PID"
tell_drained 30 "$spid"
rc=0; wait "$spid" || rc=$?
info "sse: $(cat "$WORK/sse.out")"
[[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
wait_drained 10
grep -q "connected to the primary at 127.0.0.1:$P (TLS, via sentinel)" "$WORK/relay.log" || fail "relay: $(grep redis "$WORK/relay.log" | tail -3)"
grep -q "subscribing on the primary at 127.0.0.1:$P (TLS, via sentinel)" "$WORK/sse.log" || fail "gateway: $(grep redis "$WORK/sse.log" | tail -3)"
"$OUTBOXD" status "${s[@]}" >"$WORK/status.out" || fail "status: $(cat "$WORK/status.out")"
grep -q "redis: *up, primary 127.0.0.1:$P (TLS, via sentinel)" "$WORK/status.out" || fail "status: $(cat "$WORK/status.out")"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
stop_relay "$RELAY_PID" 5
