#!/usr/bin/env bash
# Upgrade from v0.1.0 under load (docs/UPGRADING.md): a schema made by the v0.1.0
# build, a v0.1.0 relay publishing, 1,000 events/s from 8 writers over 50 runs; then
# this build's `migrate` (schema 1 -> 3) and its relay. A writer's transaction holds
# the table for 2 s as migrate starts: migrate waits for it in short tries while the
# other inserts go on. No insert fails or waits more than a second; the subscriber
# gets every event once, in order per run, across the switch (the long transaction's
# event too, committed after later ids); the old relays (the leader and a standby)
# stop publishing and say why, and neither takes the lead when the new relay is
# killed (a v0.1.0 relay lowers marks it cannot read); per-run id order = seq order.
# The v0.1.0 build comes from scripts/baseline.sh (a scratch worktree of the tag, or
# of its commit in a clone without tags), kept under build/baseline/ for the next run.
. "$(dirname "$0")/lib.sh"
OLD=$(bash "$ROOT/scripts/baseline.sh" v0.1.0 2>"$WORK/baseline.log") ||
  fail "cannot build v0.1.0: $(tail -5 "$WORK/baseline.log")"

db="t_upgrade_$RANDOM"
psql -X -q "$BASE_URL/postgres" -c "CREATE DATABASE $db" >/dev/null
export DATABASE_URL="$BASE_URL/$db"
"$OLD/outboxd" migrate >"$WORK/migrate-old.out" 2>&1 || fail "v0.1.0 migrate: $(cat "$WORK/migrate-old.out")"
[[ $(q "SELECT max(version) FROM outboxd_migrations") == 1 ]] || fail "v0.1.0 did not make schema 1"

"$OLD/outboxd" relay --stats-interval 1s >"$WORK/old-relay.log" 2>&1 &
OLD_PID=$!
PIDS+=("$OLD_PID")
wait_log "$WORK/old-relay.log" "leader: this relay publishes" 10
"$OLD/outboxd" relay --stats-interval 1s >"$WORK/old-standby.log" 2>&1 &
OLD_STANDBY=$!
PIDS+=("$OLD_STANDBY")
wait_log "$WORK/old-standby.log" "standby: another relay holds the leader lock" 10
start_sub sub --prefix up --idle-ms 5000 --max-seconds 90 --check
start_load --rate 1000 --runs 50 --conns 8 --seconds 12 --prefix up
sleep 3
before=$(q "SELECT count(*) FROM run_outbox WHERE published_at IS NOT NULL")
((before > 1000)) || fail "the v0.1.0 relay published only $before events before the upgrade"

PGAPPNAME=t60-long psql -X -q "$DATABASE_URL" -c "BEGIN" -c "INSERT INTO run_outbox (run_id, payload) VALUES ('up-long', '{}')" \
  -c "SELECT pg_sleep(2)" -c "COMMIT" >"$WORK/long.out" 2>&1 &
long=$!
wait_sleeping t60-long
t0=$EPOCHREALTIME
"$OUTBOXD" migrate >"$WORK/migrate.out" 2>"$WORK/migrate.log" || fail "migrate under load: $(cat "$WORK/migrate.log")"
ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", (b - a) * 1000}')
info "migrate: $(cat "$WORK/migrate.out") in $ms ms"
grep -q "migrated from version 1 to 3" "$WORK/migrate.out" || fail "migrate said: $(cat "$WORK/migrate.out")"
grep -q "run_outbox is busy" "$WORK/migrate.log" && ((ms >= 1500)) ||
  fail "migrate did not wait for the long transaction ($ms ms): $(cat "$WORK/migrate.log")"
wait "$long" || fail "the long transaction failed: $(cat "$WORK/long.out")"
grep -q "ended the database sessions of 2 of 2 connected relay" "$WORK/migrate.log" ||
  fail "migrate did not end the old relays' sessions: $(cat "$WORK/migrate.log")"

# The old relays reconnect, refuse the schema and publish nothing more. (v0.1.0 keeps
# trying to connect, saying why each time, rather than exiting.)
for old in old-relay old-standby; do
  wait_log "$WORK/$old.log" "newer than this binary's 1: upgrade outboxd" 10
done
kill -0 "$OLD_PID" || fail "the old relay died instead of saying why it stops"
kill -0 "$OLD_STANDBY" || fail "the old standby died instead of saying why it stops"
sleep 1
start_relay relay
wait_log "$WORK/relay.log" "leader: this relay publishes" 10
# The new relay dies while the old standby is still running: the old one must not
# take the lead (its session on the new schema was ended; it refuses the schema).
sleep 1
kill -9 "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true
sleep 3
start_relay relay2
RELAY2_PID=$RELAY_PID
wait_log "$WORK/relay2.log" "leader: this relay publishes" 10
for old in old-relay old-standby; do
  leads=$(grep -c "leader: this relay publishes" "$WORK/$old.log" || true)
  want=0; [[ $old == old-relay ]] && want=1
  [[ $leads == "$want" ]] || fail "$old took the lead $leads times (want $want: never after the migration)"
done

wait "$LOAD_PID" || fail "writers failed: $(cat "$WORK/load.out")"
info "$(cat "$WORK/load.out")"
[[ $(field errors "$WORK/load.out") == 0 ]] || fail "inserts failed across the upgrade: $(cat "$WORK/load.out")"
awk -v m="$(field max_ms "$WORK/load.out")" 'BEGIN {exit !(m < 1000)}' ||
  fail "an insert waited $(field max_ms "$WORK/load.out") ms across the upgrade (limit 1,000)"
finish_sub sub "$SUB_PID"
wait_drained 20
n=$(q "SELECT count(*) FROM run_outbox")
[[ $(field received "$WORK/sub.out") == "$n" ]] || fail "subscriber received $(field received "$WORK/sub.out") of $n events"
bad=$(q "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY run_id ORDER BY id) prev FROM run_outbox) x
         WHERE prev IS NOT NULL AND seq <> prev + 1")
[[ $bad == 0 ]] || fail "$bad rows where per-run id order is not seq order (or seq has a gap) across the upgrade"
# Nothing went out twice: the new relay found what the old one had published but not marked.
[[ $(q "SELECT count(*) FROM run_outbox WHERE run_id = 'up-long'") == 1 ]] || fail "the long transaction's event is missing"
info "new relay: $(grep 'stats' "$WORK/relay2.log" | tail -1 | sed 's/.*stats: //' | cut -c1-120)"
stop_relay "$RELAY2_PID" 5
for old in old-relay old-standby; do
  info "$old after the migration: $(grep -c "newer than this binary's 1" "$WORK/$old.log") refusals of the schema"
done
kill -TERM "$OLD_PID" "$OLD_STANDBY"
wait "$OLD_PID" || true
wait "$OLD_STANDBY" || true
