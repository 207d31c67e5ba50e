#!/usr/bin/env bash
# A prepared (two-phase) transaction that inserted into run_outbox holds the gap of its
# id open, however long, even while a transaction in another database holds the xmin
# back (so only the writers seen in pg_locks tell the relay that the id may still
# come): the relay names it as the gap blocker, keeps publishing what others write,
# and after COMMIT PREPARED publishes its event once, in order. A gap closed too early
# would lose that event for good. Also: a producer's PREPARE after an insert fails
# while the relay waits (the trigger notified), as docs/SCHEMA.md says.
. "$(dirname "$0")/lib.sh"
new_db
GID="t64_$$_$RANDOM"
trap 'psql -X -qtA "$DATABASE_URL" -c "ROLLBACK PREPARED '"'$GID'"'" >/dev/null 2>&1 || true; cleanup' EXIT
psql -X -q "$BASE_URL/postgres" -c "BEGIN" -c "SELECT pg_current_xact_id()" -c "SELECT pg_sleep(200)" \
  >/dev/null 2>&1 &
PIDS+=($!)

port=$(pick_port)
start_relay relay --http-listen "127.0.0.1:$port"
wait_log "$WORK/relay.log" "leader: this relay publishes" 10
metric() { curl -s --max-time 2 "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
start_sub sub --prefix pw- --idle-ms 6000 --max-seconds 90 --check
"$OUTBOXD" emit pw-run '{"n":1}' >/dev/null || fail "emit failed"
# Published, and the relay back to waiting (it held the wake-up lock before the emit
# too: only after the publish does holding it mean waiting again).
published() { [[ $(q "SELECT count(*) FROM run_outbox WHERE run_id = 'pw-run' AND published_at IS NOT NULL") == 1 ]]; }
for _ in $(seq 1 200); do published && break; sleep 0.05; done
published || fail "pw-run's first event was not published within 10 s"
wait_relay_asleep

# The relay waits: the insert notifies, and PostgreSQL refuses to prepare it.
out=$(psql -X -q "$DATABASE_URL" -c "BEGIN" -c "INSERT INTO run_outbox (run_id, payload) VALUES ('pw-no', '{}')" \
  -c "PREPARE TRANSACTION '${GID}_no'" 2>&1 || true)
grep -q "cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY" <<<"$out" ||
  fail "PREPARE after a notifying insert: $out"
[[ $(q "SELECT count(*) FROM pg_prepared_xacts WHERE gid = '${GID}_no'") == 0 ]] || fail "it was prepared anyway"

# A writer that inserted while the relay was busy (it shares the wake-up lock; the
# event emitted beside it wakes the relay, which lets it go) can prepare.
psql -X -q "$DATABASE_URL" -c "BEGIN" -c "SELECT pg_advisory_xact_lock_shared(1868724324, 3)" \
  -c "INSERT INTO run_outbox (run_id, payload) VALUES ('pw-run', '{\"n\":2}')" \
  -c "PREPARE TRANSACTION '$GID'" >"$WORK/prep.out" 2>&1 &
prep=$!
sleep 0.3
"$OUTBOXD" emit pw-wake '{}' >/dev/null || fail "emit failed"
wait "$prep" || fail "could not prepare: $(cat "$WORK/prep.out")"

# Others write, some roll back, for longer than several looks at pg_locks.
"$BUILD/obx_load" --rate 200 --runs 10 --conns 2 --seconds 4 --rollback-pct 10 --prefix pw-side >"$WORK/gen.out"
info "load: $(cat "$WORK/gen.out")"
sleep 1.5
gaps=$(metric outboxd_gaps) prepared=$(metric outboxd_gap_blocker_prepared) age=$(metric outboxd_gap_blocker_age_seconds)
info "while prepared: gaps=$gaps blocker_prepared=$prepared blocker_age_s=$age"
((gaps >= 1)) || fail "the prepared writer's gap is not held open ($gaps gaps): its event would be lost"
[[ $prepared == 1 ]] || fail "the gap blocker is not reported as the prepared transaction"
[[ $(q "SELECT count(*) FROM run_outbox WHERE run_id = 'pw-run'") == 1 ]] || fail "the prepared event is visible?"
# Another event of its run queues behind it (writers of a run are serialized).
psql -X -q "$DATABASE_URL" -c "INSERT INTO run_outbox (run_id, payload) VALUES ('pw-run', '{\"n\":3}')" \
  >"$WORK/after.out" 2>&1 &
after=$!
sleep 0.5
q "COMMIT PREPARED '$GID'" || fail "COMMIT PREPARED failed"
wait "$after" || fail "the writer queued behind it failed: $(cat "$WORK/after.out")"
published=f
for _ in $(seq 1 50); do
  published=$(q "SELECT bool_and(published_at IS NOT NULL) FROM run_outbox WHERE run_id = 'pw-run'")
  [[ $published == t ]] && break
  sleep 0.02
done
[[ $published == t ]] || fail "the prepared event was not published within a second of COMMIT PREPARED"
[[ $(q "SELECT string_agg(seq::text, ',' ORDER BY seq) FROM run_outbox WHERE run_id = 'pw-run'") == 1,2,3 ]] ||
  fail "pw-run's seqs: $(q "SELECT string_agg(seq::text, ',' ORDER BY seq) FROM run_outbox WHERE run_id = 'pw-run'")"
finish_sub sub "$SUB_PID"
for _ in $(seq 1 50); do [[ $(metric outboxd_gaps) == 0 ]] && break; sleep 0.2; done
[[ $(metric outboxd_gaps) == 0 ]] || fail "gaps still open after the prepared writer committed: $(metric outboxd_gaps)"
stop_relay "$RELAY_PID" 5
[[ $(field duplicates_suppressed <(grep 'stats (final)' "$WORK/relay.log")) == 0 ]] ||
  fail "the relay sent events again: $(grep 'stats (final)' "$WORK/relay.log")"
