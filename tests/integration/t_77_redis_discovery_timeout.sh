#!/usr/bin/env bash
# Every network call has a timeout: the gateway's discovery requests too. A Redis
# that accepts connections but never answers (SIGSTOPped: the kernel still completes
# the handshake) as the first cluster seed, and as the only sentinel: the gateway
# gives up on it after --redis-timeout (a sentinel: its own shorter timeout), says so,
# and asks the next node (here a Redis without cluster support, which refuses).
. "$(dirname "$0")/lib.sh"
new_db
p=$(pick_port)
redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >"$WORK/silent.log" 2>&1 &
spid=$!
PIDS+=("$spid")
for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$p" ping >/dev/null || fail "the silent Redis did not start"
kill -STOP "$spid"

start_sse gw --redis-cluster "127.0.0.1:$p,127.0.0.1:$REDIS_PORT" --redis-timeout 500ms --workers 1
wait_log "$WORK/gw.log" "127.0.0.1:$p: CLUSTER SHARDS: no answer within 500 ms; 127.0.0.1:$REDIS_PORT: CLUSTER SHARDS:" 5
info "cluster: $(grep -m1 'no answer within' "$WORK/gw.log")"

start_sse gws --redis-sentinel "127.0.0.1:$p" --redis-sentinel-master outboxd-test --redis-timeout 500ms --workers 1
wait_log "$WORK/gws.log" "no sentinel named the primary 'outboxd-test': sentinel 127.0.0.1:$p: no answer within" 5
info "sentinel: $(grep -m1 'no answer within' "$WORK/gws.log")"
