# The Redis Cluster scenario, sourced by t_70 (steady), t_71 (CLUSTER FAILOVER of one
# shard) and t_72 (the slot of a busy run migrated): 3 primaries and 3 replicas; the
# relay and two gateways (one worker each) given two seeds; 1,000 events/s over 500
# runs for 12 s, the fault 4 s in. SSE clients on every run, spread over both
# gateways, check that nothing is lost, repeated or out of order at the browser; a
# Redis subscriber (SSUBSCRIBE on every node, primaries and replicas) that nothing is
# lost or out of order in Redis itself (not for a slot migration: sharded Pub/Sub
# does not carry a subscription over to the slot's new node, so messages published
# there before the subscriber moves are lost to it, as Redis documents; browsers get
# them from PostgreSQL).
# cluster_scenario steady|failover|reshard|kill9
cluster_scenario() {
  local fault=$1
  new_db
  start_cluster c
  CL=(--redis-cluster "127.0.0.1:${CLUSTER_PORTS[0]},127.0.0.1:${CLUSTER_PORTS[1]}" --redis-timeout 500ms)
  local hport
  hport=$(pick_port)
  start_relay relay "${CL[@]}" --http-listen "127.0.0.1:$hport"
  wait_log "$WORK/relay.log" "cluster slot map read: 3 primaries .* (plaintext, cluster, sharded Pub/Sub)" 10
  start_sse gw1 "${CL[@]}" --workers 1
  local port1=$SSE_PORT pid1=$SSE_PID
  start_sse gw2 "${CL[@]}" --workers 1
  local port2=$SSE_PORT pid2=$SSE_PID
  wait_log "$WORK/gw1.log" "subscribing on the 3 primaries of the cluster (plaintext, cluster, sharded Pub/Sub)" 10
  wait_log "$WORK/gw2.log" "subscribing on the 3 primaries of the cluster" 10
  "$BUILD/obx_sse" --ports "$port1,$port2" --prefix cl --runs 500 --per-run 1 --reconnect-ms 300 \
    --idle-ms 6000 --max-seconds 80 --ready-file "$WORK/sse.ready" --check >"$WORK/sse.out" 2>"$WORK/sse.err" &
  local spid=$!
  PIDS+=("$spid")
  for _ in $(seq 1 200); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done
  [[ -f "$WORK/sse.ready" ]] || fail "streams did not open"
  [[ $fault == reshard || $fault == kill9 ]] ||
    start_sub sub --nodes "$CLUSTER_NODES" --sharded 500 --prefix cl --idle-ms 6000 --max-seconds 80 --check
  # The busy run of the faults: cl-7, on the shard that owns its channel's slot.
  local slot src osub
  slot=$(redis-cli -p "${CLUSTER_PORTS[0]}" cluster keyslot run:cl-7)
  src=$(cluster_primary_of "$slot") || fail "no primary serves slot $slot"
  if [[ $fault == reshard ]]; then
    # A subscriber on the slot's owner: until the slot leaves it, it must get every
    # event of the run (a publish sent to the importing node with ASKING reaches no
    # subscriber, as shard channels stay on the source until SETSLOT ... NODE).
    redis_listen "$WORK/owner-sub.out" "$src" ssubscribe run:cl-7
    osub=$LISTEN_PID
  fi
  start_load --rate 1000 --runs 500 --conns 8 --seconds 12 --prefix cl
  sleep 4
  case $fault in
    steady)
      # The script cache of every primary flushed mid-load: NOSCRIPT, loaded again there.
      for p in "${CLUSTER_PORTS[@]:0:3}"; do redis-cli -p "$p" script flush >/dev/null || fail "SCRIPT FLUSH"; done ;;
    failover) cluster_failover "$src" ;;
    reshard)
      cluster_move_slot "$slot" "$src"
      kill "$osub" 2>/dev/null || true ;;
    kill9) cluster_kill9 "$src" ;;
    stall) cluster_stall "$src" 1.5 ;;
  esac
  wait "$LOAD_PID" || fail "load generator failed"
  info "$(cat "$WORK/load.out")"
  tell_drained 60 "$spid"
  local rc=0
  wait "$spid" || rc=$?
  info "sse: $(cat "$WORK/sse.out")"
  [[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
  [[ $fault == reshard || $fault == kill9 ]] || finish_sub sub "$SUB_PID"
  wait_drained 20
  if [[ $fault == steady ]]; then
    for p in "${CLUSTER_PORTS[@]:0:3}"; do
      loads=$(redis-cli -p "$p" info commandstats | grep -o 'cmdstat_script|load:calls=[0-9]*' | cut -d= -f2 || true)
      ((${loads:-0} >= 2)) || fail "primary $p: the script was not loaded again after SCRIPT FLUSH (${loads:-0} loads)"
    done
  fi
  [[ $fault == stall ]] && cluster_others_prompt
  [[ $fault == steady || $fault == stall ]] || {
    local now
    now=$(cluster_primary_of "$slot") || fail "no primary serves slot $slot after the $fault"
    [[ $now != "$src" ]] || fail "slot $slot is still served by $src after the $fault"
    local metrics changes failures
    metrics=$(curl -s "http://127.0.0.1:$hport/metrics")
    changes=$(awk '$1 == "outboxd_redis_primary_changes_total" {print $2}' <<<"$metrics")
    info "RESULT $fault: slot $slot of run:cl-7 moved from $src to $now under load; relay: primary changes" \
      "$changes, $(grep -c "cluster slot map changed" "$WORK/relay.log" || true) map changes logged; SSE lost 0," \
      "duplicated 0, out of order 0"
    [[ $fault == kill9 ]] && cluster_others_flowed "$src"
    if [[ $fault == reshard ]]; then
      local want got missed
      want=$(q "SELECT string_agg(seq::text, ' ' ORDER BY seq) FROM run_outbox WHERE run_id = 'cl-7'
        AND published_at < to_timestamp($MOVE_T_SRC)")
      got=" $(grep -o '"seq":[0-9]*' "$WORK/owner-sub.out" | cut -d: -f2 | tr '\n' ' ' || true)"
      missed=0
      for sq in $want; do [[ $got == *" $sq "* ]] || missed=$((missed + 1)); done
      info "run cl-7: $(wc -w <<<"$want") events published before slot $slot left $src, $missed missed by its subscriber there"
      (($(wc -w <<<"$want") >= 3)) || fail "too few events of cl-7 before the move to check ($want)"
      ((missed == 0)) || fail "$missed events of cl-7 never reached a subscriber on $src, the slot's owner while they were published"
      # Sharded Pub/Sub: the relay does not follow ASK (SPUBLISH on the importing node
      # reaches no subscriber); the run waits for the migration to end.
      asking=$(redis-cli -p "$MOVE_DST" info commandstats | grep -o 'cmdstat_asking:calls=[0-9]*' | cut -d= -f2 || true)
      info "ASKING sent to the target: ${asking:-0}"
      ((${asking:-0} == 0)) || fail "the relay followed ASK to $MOVE_DST ${asking} times: published where no subscriber is"
      grep -q "slot $slot migrating" "$WORK/relay.log" || fail "the relay did not log 'slot $slot migrating'"
      # ... once: the batches that wait on the parked run do not each log a warning.
      local warned
      warned=$(grep -c "warn .*publish: ASK $slot " "$WORK/relay.log" || true)
      ((warned <= 1)) || fail "the relay warned $warned times while slot $slot migrated"
      # The gateways moved the slot's subscriptions to the target one by one (MOVED
      # names it), without dropping every node and re-reading every run.
      ! grep -h "reading the slot map again" "$WORK/gw1.log" "$WORK/gw2.log" ||
        fail "a gateway dropped every subscription for one moved slot"
    fi
    if [[ $fault == failover || $fault == kill9 ]]; then
      ((changes >= 1)) || fail "outboxd_redis_primary_changes_total = $changes after the failover"
      grep -q "cluster slot map changed: 3 primaries .*127.0.0.1:$now" "$WORK/relay.log" ||
        fail "the relay did not log the new primary $now"
    fi
  }
  kill -TERM "$pid1" "$pid2"
  wait "$pid1" || fail "gateway 1 exit code"
  wait "$pid2" || fail "gateway 2 exit code"
  stop_relay "$RELAY_PID" 5
  no_sanitizer_reports
}

# cluster_failover PORT: a replica of the primary on PORT takes over (CLUSTER FAILOVER).
cluster_failover() {
  local src=$1 id rep p
  id=$(redis-cli -p "$src" cluster myid)
  for p in "${CLUSTER_PORTS[@]}"; do
    redis-cli -p "$p" role 2>/dev/null | head -1 | grep -q slave || continue
    [[ $(redis-cli -p "$p" cluster nodes | awk '$3 ~ /myself/ {print $4}') == "$id" ]] && rep=$p && break
  done
  [[ -n "${rep:-}" ]] || fail "no replica of $src"
  redis-cli -p "$rep" cluster failover >/dev/null || fail "CLUSTER FAILOVER on $rep"
  local deadline=$((SECONDS + 20))
  until redis-cli -p "$rep" role | head -1 | grep -q master; do
    ((SECONDS < deadline)) || fail "replica $rep not promoted within 20 s"
    sleep 0.05
  done
  info "CLUSTER FAILOVER: $rep took over from $src at $(q "SELECT count(*) FROM run_outbox") events"
}

# cluster_move_slot SLOT PORT: migrates slot from the primary on PORT to another
# primary (SETSLOT IMPORTING/MIGRATING, MIGRATE of its keys, SETSLOT NODE everywhere).
cluster_move_slot() {
  local slot=$1 src=$2 dst p sid did keys
  for p in "${CLUSTER_PORTS[@]}"; do
    [[ $p != "$src" ]] && redis-cli -p "$p" role | head -1 | grep -q master && dst=$p && break
  done
  sid=$(redis-cli -p "$src" cluster myid)
  did=$(redis-cli -p "$dst" cluster myid)
  redis-cli -p "$dst" cluster setslot "$slot" importing "$sid" >/dev/null || fail "SETSLOT IMPORTING"
  redis-cli -p "$src" cluster setslot "$slot" migrating "$did" >/dev/null || fail "SETSLOT MIGRATING"
  # Slowly, so that publishing goes on while the slot is half moved (ASK).
  local moved=0
  while :; do
    keys=$(redis-cli -p "$src" cluster getkeysinslot "$slot" 1)
    [[ -z $keys ]] && break
    # shellcheck disable=SC2086
    redis-cli -p "$src" migrate 127.0.0.1 "$dst" "" 0 5000 keys $keys >/dev/null || fail "MIGRATE"
    moved=$((moved + 1))
    sleep 0.2
  done
  # The keys are on the target, the slot not yet: the source answers ASK meanwhile
  # (the relay waits in sharded mode).
  sleep 1.5
  redis-cli -p "$dst" cluster setslot "$slot" node "$did" >/dev/null || fail "SETSLOT NODE on the target"
  # Until now the source owned the slot's channel (when its subscriptions end).
  MOVE_T_SRC=$(date +%s.%N)
  for p in "$src" "${CLUSTER_PORTS[@]}"; do
    redis-cli -p "$p" cluster setslot "$slot" node "$did" >/dev/null 2>&1 || true
  done
  MOVE_DST=$dst
  info "slot $slot ($moved keys) moved from $src to $dst at $(q "SELECT count(*) FROM run_outbox") events"
}

# shard_runs PORT: the runs cl-0..cl-499 whose slots the primary on PORT serves, as a
# SQL list, in KILLED_RUNS.
shard_runs() {
  local src=$1 table
  table=$(redis-cli -p "$src" cluster nodes | awk '
    $3 ~ /master/ { split($2, a, "[:@]"); for (i = 9; i <= NF; i++) if ($i !~ /^\[/) {
      n = split($i, r, "-"); if (n == 1) r[2] = r[1]; print r[1], r[2], a[2] } }')
  KILLED_RUNS=$(for i in $(seq 0 499); do echo "CLUSTER KEYSLOT run:cl-$i"; done | redis-cli -p "$src" |
    paste -d' ' <(seq 0 499) - | awk -v src="$src" -v t="$table" -v q="'" '
      BEGIN { n = split(t, L, "\n"); for (k = 1; k <= n; k++) { split(L[k], f, " "); lo[k] = f[1]; hi[k] = f[2]; po[k] = f[3] } }
      { for (k = 1; k <= n; k++) if ($2 + 0 >= lo[k] + 0 && $2 + 0 <= hi[k] + 0) { if (po[k] == src) printf "%scl-%s%s,", q, $1, q; break } }')
  KILLED_RUNS="(${KILLED_RUNS%,})"
  [[ $KILLED_RUNS != "()" ]] || fail "no run on the shard of $src"
}

# cluster_kill9 PORT: kill -9 of the primary on PORT; its replica is promoted once the
# cluster notices (cluster-node-timeout 2 s). KILL_T0 and the shard's runs
# (KILLED_RUNS, a SQL list) are kept for cluster_others_flowed.
cluster_kill9() {
  local src=$1 pid
  shard_runs "$src"
  pid=$(redis-cli -p "$src" info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')
  KILL_T0=$(date +%s.%N)
  kill -9 "$pid"
  info "kill -9 of the primary $src at $(q "SELECT count(*) FROM run_outbox") events ($(($(tr -cd , <<<"$KILLED_RUNS" | wc -c) + 1)) runs on its shard)"
}

# While the killed shard had no primary, the runs of the other shards kept flowing:
# in the second after the kill at least half as many of their events were published
# as in the second before it, and none of the killed shard's.
cluster_others_flowed() {
  local before during own
  before=$(q "SELECT count(*) FROM run_outbox WHERE published_at BETWEEN to_timestamp($KILL_T0 - 1.0)
    AND to_timestamp($KILL_T0) AND run_id NOT IN $KILLED_RUNS")
  during=$(q "SELECT count(*) FROM run_outbox WHERE published_at BETWEEN to_timestamp($KILL_T0 + 0.3)
    AND to_timestamp($KILL_T0 + 1.3) AND run_id NOT IN $KILLED_RUNS")
  own=$(q "SELECT count(*) FROM run_outbox WHERE published_at BETWEEN to_timestamp($KILL_T0 + 0.3)
    AND to_timestamp($KILL_T0 + 1.3) AND run_id IN $KILLED_RUNS")
  info "other shards' runs: $before events published in the second before the kill, $during in the second after" \
    "(from 0.3 s on); the killed shard's runs: $own"
  ((during * 2 >= before && before > 300)) ||
    fail "other shards' runs did not keep flowing while one shard was down ($before before, $during after)"
  ((own == 0)) || fail "$own events of the killed shard's runs were published while it had no primary"
}

# cluster_stall PORT SECONDS: SIGSTOP of the primary on PORT for less than
# cluster-node-timeout (no failover): its socket stays open, only timeouts notice.
cluster_stall() {
  local src=$1 pid
  shard_runs "$src"
  pid=$(redis-cli -p "$src" info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')
  KILL_T0=$(date +%s.%N)
  kill -STOP "$pid"
  sleep "$2"
  kill -CONT "$pid"
  info "SIGSTOP of the primary $src for $2 s at $(q "SELECT count(*) FROM run_outbox") events"
}

# While one primary was stalled, the other shards' runs were not held up by it beyond
# the first timeout (--redis-timeout 500ms): the stalled node is suspect from its
# failure on, its runs parked at once, instead of every batch waiting on it again.
cluster_others_prompt() {
  local n slow worst
  read -r n slow worst < <(q "SELECT count(*), count(*) FILTER (WHERE published_at - created_at > interval '350 ms'),
    coalesce(round(extract(epoch FROM max(published_at - created_at)) * 1000), 0) FROM run_outbox
    WHERE created_at BETWEEN to_timestamp($KILL_T0 + 0.7) AND to_timestamp($KILL_T0 + 1.4)
    AND run_id NOT IN $KILLED_RUNS" | tr '|' ' ')
  info "other shards' runs, created 0.7-1.4 s into the stall: $n events, $slow published after > 350 ms (max $worst ms)"
  ((n > 300)) || fail "too few events of the other shards during the stall ($n)"
  ((slow == 0)) || fail "$slow events of healthy shards waited > 350 ms behind the stalled primary (max $worst ms)"
}
