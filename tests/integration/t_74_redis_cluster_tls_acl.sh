#!/usr/bin/env bash
# A TLS-only Redis Cluster (--tls-cluster yes, --tls-replication yes: 3 primaries, 3
# replicas) with ACL users holding exactly the cluster rules of docs/OPERATIONS.md:
# the relay, two gateways and `outboxd status` work through rediss:// with those
# users; 1,000 events/s over 100 runs reach SSE clients on every run: 0 lost, 0
# duplicated, 0 out of order. Each node is reached on its tls-port as CLUSTER SHARDS
# names it, with its certificate verified.
. "$(dirname "$0")/lib.sh"
new_db
PKI="$WORK/pki"
make_pki "$PKI"
# Nodes verify each other's certificates on the cluster bus, as clients too: the
# server certificate gets clientAuth beside serverAuth.
(
  cd "$PKI"
  printf 'subjectAltName=DNS:redis.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >node.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile node.ext \
    -out server.crt 2>/dev/null
) || fail "openssl could not make the node certificate"
cluster_rules() {
  local line
  line=$(grep "^user outboxd-$1 " "$ROOT/docs/OPERATIONS.md" | sed -n 2p)
  [[ $line == *cluster* ]] || fail "no cluster ACL for outboxd-$1 in docs/OPERATIONS.md"
  echo "${line/>[A-Z_]*PASSWORD/>$1-pw}"
}
{
  echo "user default on nopass ~* &* +@all"
  cluster_rules relay
  cluster_rules gateway
  cluster_rules status
} >"$WORK/users.acl"
info "rules: $(grep outboxd "$WORK/users.acl" | tr '\n' '|')"
CLUSTER_TLS=1 start_cluster t --aclfile "$WORK/users.acl"
seeds="127.0.0.1:${CLUSTER_PORTS[0]},127.0.0.1:${CLUSTER_PORTS[3]}"
tls=(--redis-cluster "$seeds" --redis-tls-ca "$PKI/ca.crt" --redis-timeout 1s)
url() { echo "rediss://outboxd-$1:$1-pw@127.0.0.1:1/0"; }

REDIS_URL=$(url relay) start_relay relay "${tls[@]}"
wait_log "$WORK/relay.log" "cluster slot map read: 3 primaries .* (TLS, cluster, sharded Pub/Sub)" 10
REDIS_URL=$(url gateway) start_sse gw1 "${tls[@]}" --workers 1
port1=$SSE_PORT pid1=$SSE_PID
REDIS_URL=$(url gateway) start_sse gw2 "${tls[@]}" --workers 1
port2=$SSE_PORT pid2=$SSE_PID
wait_log "$WORK/gw1.log" "subscribing on the 3 primaries of the cluster (TLS, cluster, sharded Pub/Sub)" 10
wait_log "$WORK/gw2.log" "subscribing on the 3 primaries of the cluster (TLS, cluster, sharded Pub/Sub)" 10
status=$(REDIS_URL=$(url status) "$OUTBOXD" status "${tls[@]}" --json) || fail "status: $status"
grep -q '"redis":{"up":true' <<<"$status" || fail "status does not see the cluster: $status"
info "status: $(grep -o '"redis":{[^}]*}' <<<"$status")"

"$BUILD/obx_sse" --ports "$port1,$port2" --prefix tc --runs 100 --per-run 1 --idle-ms 4000 --max-seconds 60 \
  --ready-file "$WORK/sse.ready" --check >"$WORK/sse.out" 2>"$WORK/sse.err" &
spid=$!; PIDS+=("$spid")
for _ in $(seq 1 100); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done
[[ -f "$WORK/sse.ready" ]] || fail "streams did not open"
start_load --rate 1000 --runs 100 --conns 8 --seconds 6 --prefix tc
wait "$LOAD_PID" || fail "load generator failed"
info "$(cat "$WORK/load.out")"
tell_drained 30 "$spid"
rc=0; wait "$spid" || rc=$?
info "sse: $(cat "$WORK/sse.out")"
[[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
wait_drained 10
live=$(curl -s "http://127.0.0.1:$port1/metrics" | awk '$1 == "outboxd_sse_live_messages_total" {print $2}')
((live > 0)) || fail "gateway 1 got nothing live from the cluster"
! grep -q "NOPERM" "$WORK/relay.log" "$WORK/gw1.log" "$WORK/gw2.log" || fail "an ACL denial: $(grep -h NOPERM "$WORK"/*.log | head -2)"
kill -TERM "$pid1" "$pid2"
wait "$pid1" || fail "gateway 1 exit code"
wait "$pid2" || fail "gateway 2 exit code"
stop_relay "$RELAY_PID" 5
no_sanitizer_reports
