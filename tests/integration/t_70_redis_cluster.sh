#!/usr/bin/env bash
# Redis Cluster (3 primaries, 3 replicas; tests/integration/cluster.sh): 1,000 events/s
# over 500 runs spread over every shard, watched through two gateways: 0 lost, 0
# duplicated, 0 out of order at the browser and in Redis, with every primary's script
# cache flushed mid-load (NOSCRIPT: loaded again there). Then every run's mark sits in its
# channel's slot (CLUSTER KEYSLOT) on the primary that owns it and names the run's
# last event, and every primary published. Last, --redis-pubsub global (PUBLISH,
# broadcast to every node), checked by a subscriber on a replica and by SSE clients of
# a gateway that SUBSCRIBEs on one seed.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cluster.sh"
cluster_scenario steady

# Every run's mark: in its channel's slot, on the primary that owns it, equal to the
# run's last id:seq.
epoch=$(q "SELECT epoch || '.' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) FROM outboxd_meta")
q "SELECT run_id, max(id) || ':' || max(seq) FROM run_outbox GROUP BY run_id ORDER BY run_id" | tr '|' ' ' >"$WORK/last"
(($(wc -l <"$WORK/last") == 500)) || fail "expected 500 runs, got $(wc -l <"$WORK/last")"
bad=0 checked=0
while read -r run want; do
  key="outboxd:$epoch:mark:{run:$run}"
  if ((checked < 20)); then
    ks=$(redis-cli -p "${CLUSTER_PORTS[0]}" cluster keyslot "$key")
    cs=$(redis-cli -p "${CLUSTER_PORTS[0]}" cluster keyslot "run:$run")
    [[ $ks == "$cs" ]] || fail "mark key $key in slot $ks, its channel run:$run in slot $cs"
  fi
  echo "GET $key"
  checked=$((checked + 1))
done <"$WORK/last" | redis-cli -c -p "${CLUSTER_PORTS[0]}" 2>&1 | grep -v "^-> Redirected" >"$WORK/marks"
# A mark is "id:seq:origin": its id:seq must be the run's last event.
paste -d' ' "$WORK/last" "$WORK/marks" | awk '{split($3, m, ":")} m[1] ":" m[2] != $2 {bad++; if (bad < 5) print "run " $1 ": last " $2 ", mark " $3 > "/dev/stderr"} END {exit bad > 0}' ||
  fail "marks do not name each run's last event"
for p in "${CLUSTER_PORTS[@]:0:3}"; do
  calls=$(redis-cli -p "$p" info commandstats | grep -o 'cmdstat_evalsha:calls=[0-9]*' | cut -d= -f2 || true)
  info "primary $p: ${calls:-0} EVALSHA"
  ((${calls:-0} > 0)) || fail "primary $p published nothing: runs not spread over the shards"
done

# Global Pub/Sub: PUBLISH reaches every node, so a subscriber on any one sees it all.
start_relay relay2 "${CL[@]}" --redis-pubsub global --redis-timeout 500ms
wait_log "$WORK/relay2.log" "(plaintext, cluster, global Pub/Sub)" 10
start_sub sub --port "${CLUSTER_PORTS[4]}" --prefix gl --idle-ms 3000 --max-seconds 40 --check
start_sse gwg "${CL[@]}" --redis-pubsub global --workers 1
wait_log "$WORK/gwg.log" "subscribing on the primary at 127.0.0.1:${CLUSTER_PORTS[0]} (plaintext, cluster)" 10
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix gl --runs 100 --per-run 1 --idle-ms 3000 --max-seconds 40 \
  --ready-file "$WORK/sseg.ready" --check >"$WORK/sseg.out" 2>"$WORK/sseg.err" &
gpid=$!; PIDS+=("$gpid")
for _ in $(seq 1 100); do [[ -f "$WORK/sseg.ready" ]] && break; sleep 0.05; done
start_load --rate 1000 --runs 500 --conns 8 --seconds 5 --prefix gl
wait "$LOAD_PID"
info "$(cat "$WORK/load.out")"
finish_sub sub "$SUB_PID"
tell_drained 30 "$gpid"
rc=0; wait "$gpid" || rc=$?
info "sse (global): $(cat "$WORK/sseg.out")"
[[ $rc -eq 0 ]] || fail "SSE check (global) failed: $(cat "$WORK/sseg.out") $(head -3 "$WORK/sseg.err")"
live=$(curl -s "http://127.0.0.1:$SSE_PORT/metrics" | awk '$1 == "outboxd_sse_live_messages_total" {print $2}')
((live > 0)) || fail "the global gateway got nothing live"
wait_drained 10
stop_relay "$RELAY_PID" 5
