# The Sentinel failover scenario, sourced by t_53 (SENTINEL FAILOVER) and t_54 (kill -9
# of the primary): a primary, a replica and three sentinels; relay and gateway find the
# primary through the sentinels; 1,000 events/s over 50 runs for 14 s, the fault 4 s
# in. A Redis subscriber on both nodes (the old primary listed first) and SSE clients
# on every run check that nothing is lost or out of order, and the SSE clients that
# nothing is repeated. Reported: the time from the fault to the first publish on the
# new primary (EVALSHA calls there, which replication never makes), the relay's
# possible duplicates and the Redis-level duplicates the subscriber saw; the relay
# never counts fewer than happened.
# sentinel_scenario failover|kill9
sentinel_scenario() {
  local fault=$1
  new_db
  start_redis primary plain --repl-diskless-sync-delay 0
  local P=$R_PORT
  start_redis replica plain --replicaof 127.0.0.1 "$P"
  local R=$R_PORT
  wait_replica "$P" "$R"
  start_sentinels outboxd-test "$P"
  local s=(--redis-sentinel "$SENTINELS" --redis-sentinel-master outboxd-test --redis-timeout 500ms)
  local hport
  hport=$(pick_port)
  start_relay relay "${s[@]}" --http-listen "127.0.0.1:$hport"
  start_sse sse "${s[@]}"
  start_sub sub --nodes "127.0.0.1:$P,127.0.0.1:$R" --prefix sen --idle-ms 6000 --max-seconds 85 --check
  "$BUILD/obx_sse" --port "$SSE_PORT" --prefix sen --runs 50 --per-run 1 --idle-ms 6000 --max-seconds 85 \
    --ready-file "$WORK/sse.ready" --check >"$WORK/sse.out" 2>"$WORK/sse.err" &
  local spid=$!
  PIDS+=("$spid")
  for _ in $(seq 1 100); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done
  wait_log "$WORK/relay.log" "connected to the primary at 127.0.0.1:$P (plaintext, via sentinel)" 10
  start_load --rate 1000 --runs 50 --conns 8 --seconds 14 --prefix sen
  sleep 4
  local t0=$EPOCHREALTIME
  case $fault in
    failover) redis-cli -p "${SENTINEL_PORTS[0]}" sentinel failover outboxd-test >/dev/null ;;
    kill9) kill -9 "$(cat "$WORK/primary.pid")" ;;
  esac
  info "$fault at $(q "SELECT count(*) FROM run_outbox") events"
  local calls=0 deadline=$((SECONDS + 30))
  until ((calls > 0)); do
    ((SECONDS < deadline)) || fail "no publish on the new primary within 30 s of the $fault"
    sleep 0.01
    calls=$(redis-cli -p "$R" info commandstats | grep -o 'cmdstat_evalsha:calls=[0-9]*' | cut -d= -f2 || true)
    calls=${calls:-0}
  done
  local ms
  ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", (b - a) * 1000}')
  wait "$LOAD_PID"
  info "$(cat "$WORK/load.out")"
  finish_sub sub "$SUB_PID"
  tell_drained 30 "$spid"
  local rc=0
  wait "$spid" || rc=$?
  info "sse: $(cat "$WORK/sse.out")"
  [[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
  wait_drained 10
  grep -q "connected to the primary at 127.0.0.1:$R (plaintext, via sentinel)" "$WORK/relay.log" ||
    fail "the relay never connected to the new primary"
  grep -q "subscribing on the primary at 127.0.0.1:$R" "$WORK/sse.log" || fail "the gateway never moved"
  local metrics possible changes republished
  metrics=$(curl -s "http://127.0.0.1:$hport/metrics")
  possible=$(awk '$1 == "outboxd_redis_possible_duplicates_total" {print $2}' <<<"$metrics")
  changes=$(awk '$1 == "outboxd_redis_primary_changes_total" {print $2}' <<<"$metrics")
  republished=$(field republished "$WORK/sub.out")
  info "RESULT $fault: first publish on the new primary ${ms} ms after the $fault; primary changes $changes;" \
    "Redis-level duplicates: $republished seen by the subscriber, $possible counted by the relay;" \
    "SSE duplicates 0, lost 0, out of order 0"
  ((changes >= 1)) || fail "outboxd_redis_primary_changes_total = $changes"
  ((possible >= republished)) || fail "the relay counted $possible possible duplicates, the subscriber saw $republished"
  kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
  stop_relay "$RELAY_PID" 5
}
