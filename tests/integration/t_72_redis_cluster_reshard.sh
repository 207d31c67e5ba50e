#!/usr/bin/env bash
# Redis Cluster: the slot of a busy run migrated to another primary under 1,000
# events/s over 500 runs (SETSLOT MIGRATING/IMPORTING, MIGRATE key by key, SETSLOT
# NODE; tests/integration/cluster.sh). Sharded Pub/Sub: the relay does not follow ASK
# (no ASKING on the target; a subscriber on the slot's owner gets every event
# published before the slot leaves it), parks the run and follows MOVED; the gateways
# resubscribe after the server ends the subscription; 0 lost, 0 duplicated, 0 out of
# order at the browser. Then global Pub/Sub, where the relay follows ASK (ASKING).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cluster.sh"
cluster_scenario reshard

# Global Pub/Sub follows ASK (PUBLISH reaches every node, so the target is as good as
# the source): a second slot moved under a relay in global mode; ASKING reaches the
# target and every event reaches the browsers of a global-mode gateway.
start_relay relayg "${CL[@]}" --redis-pubsub global
wait_log "$WORK/relayg.log" "(plaintext, cluster, global Pub/Sub)" 10
start_sse gwg "${CL[@]}" --redis-pubsub global --workers 1
wait_log "$WORK/gwg.log" "subscribing on the primary at" 10
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix gm --runs 100 --per-run 1 --idle-ms 4000 --max-seconds 60 \
  --ready-file "$WORK/sseg.ready" --check >"$WORK/sseg.out" 2>"$WORK/sseg.err" &
gpid=$!
PIDS+=("$gpid")
for _ in $(seq 1 100); do [[ -f "$WORK/sseg.ready" ]] && break; sleep 0.05; done
[[ -f "$WORK/sseg.ready" ]] || fail "streams (global) did not open"
asking_before=0
for p in "${CLUSTER_PORTS[@]}"; do
  a=$(redis-cli -p "$p" info commandstats | grep -o 'cmdstat_asking:calls=[0-9]*' | cut -d= -f2 || true)
  asking_before=$((asking_before + ${a:-0}))
done
start_load --rate 500 --runs 100 --conns 4 --seconds 6 --prefix gm
sleep 1.5
gslot=$(redis-cli -p "${CLUSTER_PORTS[0]}" cluster keyslot run:gm-7)
gsrc=$(cluster_primary_of "$gslot") || fail "no primary serves slot $gslot"
cluster_move_slot "$gslot" "$gsrc"
wait "$LOAD_PID" || fail "load generator (global) failed"
tell_drained 30 "$gpid"
rc=0
wait "$gpid" || rc=$?
info "sse (global): $(cat "$WORK/sseg.out")"
[[ $rc -eq 0 ]] || fail "SSE check (global) failed: $(cat "$WORK/sseg.out") $(head -3 "$WORK/sseg.err")"
wait_drained 20
asking_after=0
for p in "${CLUSTER_PORTS[@]}"; do
  a=$(redis-cli -p "$p" info commandstats | grep -o 'cmdstat_asking:calls=[0-9]*' | cut -d= -f2 || true)
  asking_after=$((asking_after + ${a:-0}))
done
info "global Pub/Sub: ASKING sent during the move of slot $gslot: $((asking_after - asking_before))"
((asking_after > asking_before)) || fail "the global-mode relay never followed ASK to $MOVE_DST"
! grep -q "slot $gslot migrating" "$WORK/relayg.log" || fail "the global-mode relay parked runs on ASK"
stop_relay "$RELAY_PID" 5
