#!/usr/bin/env bash
# Long transactions that do not write the outbox must not delay or repeat the relay's
# work (relay_scan.h): one with a transaction id in another database, one writing
# another table of this database, and a prepared (two-phase) one of that table, all
# open for the whole test and holding the snapshot xmin back. Under 500 events/s with
# 10 % of the inserts rolled back (each leaves a gap of ids), every event arrives
# promptly, once, in order; the relay's gaps close anyway, and the Redis marks never
# had a repeat to stop. Then a slow writer of the outbox itself (inserts, commits 3 s
# later, a second writer of its run queued behind it): its event is delivered once,
# in order, and its gap closes after it. While a writer keeps its transaction open
# without notifying, the relay reads a few times a second, not every 8 ms.
. "$(dirname "$0")/lib.sh"
new_db
GID="t63_$$_$RANDOM"
trap 'psql -X -qtA "$DATABASE_URL" -c "ROLLBACK PREPARED '"'$GID'"'" >/dev/null 2>&1 || true; cleanup' EXIT

q "CREATE TABLE t63_other (x int)"
# A transaction with an id in another database, and one writing another table here.
psql -X -q "$BASE_URL/postgres" -c "BEGIN" -c "SELECT pg_current_xact_id()" -c "SELECT pg_sleep(200)" \
  >/dev/null 2>&1 &
PIDS+=($!)
psql -X -q "$DATABASE_URL" -c "BEGIN" -c "INSERT INTO t63_other VALUES (1)" -c "SELECT pg_sleep(200)" \
  >/dev/null 2>&1 &
PIDS+=($!)
psql -X -q "$DATABASE_URL" -c "BEGIN" -c "INSERT INTO t63_other VALUES (2)" -c "PREPARE TRANSACTION '$GID'" \
  >/dev/null || fail "cannot prepare a transaction (max_prepared_transactions: scripts/stack.sh)"
long_xid=$(q "SELECT transaction FROM pg_prepared_xacts WHERE gid = '$GID'")
sleep 0.5

port=$(pick_port)
start_relay relay --http-listen "127.0.0.1:$port"
wait_log "$WORK/relay.log" "leader: this relay publishes" 10
metric() { curl -s --max-time 2 "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# gaps_close SECONDS WHAT: the relay's gaps all close within SECONDS.
gaps_close() {
  local deadline=$((SECONDS + $1)) g=
  while ((SECONDS < deadline)); do
    g=$(metric outboxd_gaps)
    [[ $g == 0 ]] && return 0
    sleep 0.2
  done
  fail "$2: $g gaps still open after $1 s ($(grep -o 'gaps=.*' "$WORK/relay.log" | tail -1))"
}
start_sub lsub --prefix lt-load --idle-ms 4000 --max-seconds 90 --check
load_sub=$SUB_PID
start_sub asub --prefix lt- --idle-ms 12000 --max-seconds 150 --check
all_sub=$SUB_PID

# 1. Load with rolled-back inserts beside the long transactions.
"$BUILD/obx_load" --rate 500 --runs 20 --conns 4 --seconds 8 --rollback-pct 10 --prefix lt-load >"$WORK/gen.out"
info "load: $(cat "$WORK/gen.out")"
rolled=$(field rolled_back "$WORK/gen.out")
((rolled > 256)) || fail "only $rolled inserts rolled back: too few gaps to test"
finish_sub lsub "$load_sub"
p99=$(field p99 "$WORK/lsub.out") max=$(field max "$WORK/lsub.out")
info "gaps after the load: $(grep -o 'gaps=.*' "$WORK/relay.log" | tail -1)"
awk -v p="$p99" -v m="$max" 'BEGIN {exit !(p < 1000 && m < 3000)}' ||
  fail "events waited behind the long transactions: p99 $p99 ms, max $max ms (want < 1,000 and < 3,000)"
gaps_close 10 "after the load"
held=$(q "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint <= $long_xid")
[[ $held == t ]] || fail "the long transactions did not hold the xmin back: the test proves nothing"

# 2. A slow writer of the outbox: its id lies below events written while it waits.
psql -X -q "$DATABASE_URL" -c "BEGIN" -c "INSERT INTO run_outbox (run_id, payload) VALUES ('lt-slow', '{\"n\":1}')" \
  -c "SELECT pg_sleep(3)" -c "COMMIT" >"$WORK/slow.out" 2>&1 &
slow=$!
sleep 0.3
psql -X -q "$DATABASE_URL" -c "INSERT INTO run_outbox (run_id, payload) VALUES ('lt-slow', '{\"n\":2}')" \
  >"$WORK/slow2.out" 2>&1 &
slow2=$!
"$BUILD/obx_load" --rate 100 --runs 5 --conns 2 --seconds 2 --rollback-pct 10 --prefix lt-side >"$WORK/side.out" &
side=$!
blocker=0
while kill -0 "$slow" 2>/dev/null && ((blocker == 0)); do
  blocker=$(metric outboxd_gap_blocker_pid)
  blocker=${blocker:-0}
  sleep 0.1
done
((blocker > 0)) ||
  fail "the slow writer was never shown as the oldest writer holding gaps open: $(grep -o 'gaps=.*' "$WORK/relay.log" | tail -1)"
info "the slow writer holds gaps open: gap_blocker_pid=$blocker"
wait "$side" || fail "the load beside the slow writer failed"
wait "$slow" || fail "the slow writer failed: $(cat "$WORK/slow.out")"
wait "$slow2" || fail "the writer queued behind it failed: $(cat "$WORK/slow2.out")"
below=$(q "SELECT count(*) FROM run_outbox WHERE id > (SELECT id FROM run_outbox WHERE run_id = 'lt-slow' AND seq = 1)
           AND run_id LIKE 'lt-side%'")
((below > 10)) || fail "the slow writer's id should lie below later events ($below above it)"
published=f
for _ in $(seq 1 50); do
  published=$(q "SELECT bool_and(published_at IS NOT NULL) FROM run_outbox WHERE run_id = 'lt-slow'")
  [[ $published == t ]] && break
  sleep 0.02
done
[[ $published == t ]] || fail "the slow writer's events were not published within a second of their commit"
gaps_close 10 "after the slow writer committed"

# 3. A writer keeps its transaction open, nothing else happens: count the relay's
# statements (each is a transaction of this database). The writer holds a share of
# the wake-up lock, as one that inserted while the relay was busy does (it queues for
# it while the relay waits; the event emitted beside it wakes the relay, which lets
# it go).
PGAPPNAME=t66-open psql -X -q "$DATABASE_URL" -c "BEGIN" -c "SELECT pg_advisory_xact_lock_shared(1868724324, 3)" \
  -c "INSERT INTO run_outbox (run_id, payload) VALUES ('lt-open', '{}')" \
  -c "SELECT pg_sleep(7)" -c "COMMIT" >"$WORK/open.out" 2>&1 &
open=$!
# Until it queues for its share (the relay waits) or has it and sleeps.
queued() { [[ $(q "SELECT count(*) FROM pg_stat_activity WHERE application_name = 't66-open'
                   AND wait_event IN ('advisory', 'PgSleep')") == 1 ]]; }
for _ in $(seq 1 200); do queued && break; sleep 0.05; done
queued || fail "the open writer did not start"
"$OUTBOXD" emit lt-wake '{}' >/dev/null || fail "emit failed"
sleep 1.2
[[ $(q "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1868724324 AND objid = 3
        AND mode = 'ShareLock' AND granted") -ge 1 ]] || fail "the open writer does not hold a share of the wake-up lock"
xacts() { q "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"; }
x0=$(xacts)
sleep 4
x1=$(xacts)
rate=$(((x1 - x0) / 4))
info "statements while a writer's transaction was open: $((x1 - x0)) in 4 s"
((rate < 50)) || fail "the relay ran $rate statements/s while a writer's transaction was open (want < 50)"
wait "$open" || fail "the open writer failed: $(cat "$WORK/open.out")"

finish_sub asub "$all_sub"
gaps_close 5 "at the end"
stop_relay "$RELAY_PID" 5
final=$(grep 'stats (final)' "$WORK/relay.log")
info "relay: $(echo "$final" | grep -o 'published=[0-9]* .*failures=[0-9]*')"
[[ $(field duplicates_suppressed <(echo "$final")) == 0 ]] ||
  fail "the relay sent events again (the Redis marks stopped them): $final"
