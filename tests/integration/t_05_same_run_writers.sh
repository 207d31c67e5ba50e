#!/usr/bin/env bash
# Sixteen connections writing one run at once (with random commit delays, 10% of
# transactions rolled back): seq stays gapless and in id order, the subscriber sees
# every committed event once in seq order, and no rolled-back event. Then the same
# over 50 runs with 5% rollbacks.
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay
start_sub sub --prefix one --idle-ms 3000 --max-seconds 60 --check
"$BUILD/obx_load" --rate 2000 --runs 1 --conns 16 --count 3000 --prefix one \
  --rollback-pct 10 --max-delay-ms 3 >"$WORK/load.out"
info "$(cat "$WORK/load.out")"
finish_sub sub "$SUB_PID"
wait_drained 10
n=$(q "SELECT count(*) FROM run_outbox")
[[ $(q "SELECT max(seq) FROM run_outbox") == "$n" ]] || fail "seq is not gapless: max $(q "SELECT max(seq) FROM run_outbox") for $n rows"
bad=$(q "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (ORDER BY id) prev FROM run_outbox) x WHERE seq <> coalesce(prev, 0) + 1")
[[ $bad == 0 ]] || fail "$bad rows out of seq order by id"
# Many writers over 50 runs, random commit delays, 5% rollbacks.
start_sub many --prefix many --idle-ms 3000 --max-seconds 60 --check
"$BUILD/obx_load" --rate 2000 --runs 50 --conns 16 --count 4000 --prefix many \
  --rollback-pct 5 --max-delay-ms 5 >"$WORK/load2.out"
info "$(cat "$WORK/load2.out")"
finish_sub many "$SUB_PID"
wait_drained 10
stop_relay "$RELAY_PID" 5
