#!/usr/bin/env bash
# A restored base backup keeps the epoch, the timeline and the origin (a backup simply
# started does crash recovery only), so its relay uses the same mark keys as the
# original's, whose marks are ahead of the restored numbering: new events reuse ids
# and seqs already published. The new leader finds the high-water of published ids in
# Redis above the restored id sequence, writes a new epoch, says so in one error line
# and counts it; every new event then reaches Redis subscribers once, in order.
# Then `outboxd migrate --new-epoch` by hand: a new epoch, and the running relay's
# session ended so that it publishes under it.
. "$(dirname "$0")/lib.sh"

# A PostgreSQL of this test's own: its primary is crashed, its backup started.
pdir="$WORK/primary" bdir="$WORK/backup"
mkdir -p "$pdir" "$bdir"
[[ $(id -u) -eq 0 ]] && chown postgres: "$pdir" "$bdir" "$WORK"
chmod 700 "$pdir" "$bdir"
pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$1" -m immediate -w -t 10 stop >/dev/null 2>&1 || true; }
trap 'pg_stop "$pdir"; pg_stop "$bdir"; cleanup' EXIT
pg_start() { # pg_start DIR PORT
  as_pg "$PGBIN/pg_ctl" -D "$1" -l "$1.log" -w -t 30 \
    -o "-p $2 -c listen_addresses=127.0.0.1 -k $1 -c max_connections=50" start >/dev/null ||
    fail "postgresql in $(basename "$1") did not start: $(tail -5 "$1.log")"
}
as_pg "$PGBIN/initdb" -D "$pdir" -U postgres -A trust -E UTF8 --locale=C >"$WORK/initdb.log" 2>&1 ||
  fail "initdb: $(tail -3 "$WORK/initdb.log")"
pport=$(pick_port)
pg_start "$pdir" "$pport"
psql -X -q "postgresql://postgres@127.0.0.1:$pport/postgres" -c "CREATE DATABASE rb" >/dev/null
export DATABASE_URL="postgresql://postgres@127.0.0.1:$pport/rb"
"$OUTBOXD" migrate >/dev/null 2>"$WORK/migrate.log" || fail "migrate: $(cat "$WORK/migrate.log")"

raw_sub() { # raw_sub NAME: a subscriber to run:rb-*, everything it gets in $WORK/NAME.raw
  redis_listen "$WORK/$1.raw" "$REDIS_PORT" --csv psubscribe 'run:rb-*'
}
emit() { "$OUTBOXD" emit "$1" "$2" >/dev/null || fail "emit $1 $2"; }
# got NAME RUN PHASE: the "i" of each message of RUN with that phase, in arrival order.
got() { grep -F "run:$2\"" "$WORK/$1.raw" | grep -F "\\\"phase\\\": \\\"$3\\\"" | grep -o '\\"i\\": [0-9]*' |
  sed 's/[^0-9]//g' | tr '\n' ' '; }
epoch() { q "SELECT epoch FROM outboxd_meta"; }

# The original: three events, published; the backup; 100 more events published.
hport=$(pick_port)
start_relay orig --http-listen "127.0.0.1:$hport"
for i in 1 2 3; do emit rb-1 "{\"phase\":\"before\",\"i\":$i}"; done
wait_drained 10
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$pport" -U postgres -D "$bdir" -X stream -c fast \
  >"$WORK/basebackup.log" 2>&1 || fail "pg_basebackup: $(cat "$WORK/basebackup.log")"
[[ -e "$bdir/standby.signal" || -e "$bdir/recovery.signal" ]] && fail "the backup would start as a standby"
q "INSERT INTO run_outbox (run_id, payload) SELECT 'rb-' || (1 + g % 2), jsonb_build_object('phase', 'lost', 'i', g)
   FROM generate_series(1, 100) g"
wait_drained 10
old_epoch=$(epoch) old_key=$(mark_key rb-1)
hw=$(redis-cli -p "$REDIS_PORT" --scan --pattern "outboxd:$old_epoch.*:hw*" | xargs -r redis-cli -p "$REDIS_PORT" GET)
info "before the crash: epoch $old_epoch, mark of rb-1 $(redis-cli -p "$REDIS_PORT" GET "$old_key"), high-water $hw"
[[ $hw == 103 ]] || fail "high-water '$hw' after publishing ids 1..103 (want 103)"
m=$(curl -s "http://127.0.0.1:$hport/metrics" | awk '$1 == "outboxd_epoch_changes_total" {print $2}')
[[ $m == 0 ]] || fail "the original relay changed the epoch ($m) without cause"
stop_relay "$RELAY_PID" 5
grep -q "numbering of run_outbox went back" "$WORK/orig.log" && fail "the original relay saw its numbering go back"

# The primary crashes; the backup is started on another port, against the same Redis.
pg_stop "$pdir"
bport=$(pick_port)
pg_start "$bdir" "$bport"
export DATABASE_URL="postgresql://postgres@127.0.0.1:$bport/rb"
[[ $(epoch) == "$old_epoch" && $(mark_key rb-1) == "$old_key" ]] ||
  fail "the restored backup does not share the original's mark key: the scenario is not reproduced"
info "restored: $(q "SELECT count(*) FROM run_outbox") events, id sequence at $(q "SELECT last_value FROM run_outbox_id_seq")"

raw_sub after
start_relay restored --http-listen "127.0.0.1:$hport"
wait_log "$WORK/restored.log" "leader:" 10
for i in 1 2 3; do emit rb-1 "{\"phase\":\"after\",\"i\":$i}"; done
for i in 1 2; do emit rb-2 "{\"phase\":\"after\",\"i\":$i}"; done
q "SELECT id, run_id, seq FROM run_outbox WHERE payload->>'phase' = 'after' ORDER BY id" | tr '\n' ' ' >"$WORK/ids"
info "new events (id|run|seq): $(cat "$WORK/ids")"
wait_drained 10
for _ in $(seq 1 40); do [[ $(got after rb-1 after) == "1 2 3 " && $(got after rb-2 after) == "1 2 " ]] && break; sleep 0.05; done
sleep 0.3
[[ $(got after rb-1 after) == "1 2 3 " ]] ||
  fail "run rb-1's new events reached Redis as '$(got after rb-1 after)' (want 1 2 3, once each): marked published without being published"
[[ $(got after rb-2 after) == "1 2 " ]] || fail "run rb-2's new events reached Redis as '$(got after rb-2 after)' (want 1 2)"
new_epoch=$(epoch)
[[ $new_epoch != "$old_epoch" ]] || fail "the epoch was not changed"
said=$(grep -c "numbering of run_outbox went back" "$WORK/restored.log" || true)
[[ $said == 1 ]] || fail "the relay said $said times that the numbering went back (want one line)"
line=$(grep "numbering of run_outbox went back" "$WORK/restored.log")
info "relay: ${line:0:400}"
[[ $line == *" error "* || $line == *'"level":"error"'* ]] || fail "not logged at error level: $line"
[[ $line == *"$new_epoch"* && $line == *"published again"* ]] || fail "the line does not name the new epoch and what it means: $line"
m=$(curl -s "http://127.0.0.1:$hport/metrics" | awk '$1 == "outboxd_epoch_changes_total" {print $2}')
[[ $m == 1 ]] || fail "outboxd_epoch_changes_total = ${m:-missing} (want 1)"

# A relay that leads again (after a reconnect) under the new epoch finds nothing wrong.
q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'outboxd-relay-%'" >/dev/null
wait_log "$WORK/restored.log" "leader:" 10 2
emit rb-1 '{"phase":"after","i":4}'
wait_drained 10
for _ in $(seq 1 40); do [[ $(got after rb-1 after) == "1 2 3 4 " ]] && break; sleep 0.05; done
[[ $(got after rb-1 after) == "1 2 3 4 " ]] || fail "after a reconnect rb-1 got '$(got after rb-1 after)' (want 1 2 3 4)"
[[ $(epoch) == "$new_epoch" ]] || fail "the epoch changed again on a reconnect without cause"

# By hand: migrate --new-epoch writes one and ends the running relay's session; the
# relay reconnects, publishes under it, and has no reason to change it again.
"$OUTBOXD" migrate --new-epoch >"$WORK/newepoch.out" 2>"$WORK/newepoch.log" ||
  fail "migrate --new-epoch: $(cat "$WORK/newepoch.log")"
info "migrate --new-epoch: $(cat "$WORK/newepoch.out") $(cat "$WORK/newepoch.log")"
hand_epoch=$(epoch)
[[ $hand_epoch != "$new_epoch" ]] || fail "migrate --new-epoch did not change the epoch"
grep -q "ended the database sessions of 1 of 1 connected relay" "$WORK/newepoch.log" ||
  fail "migrate --new-epoch did not end the relay's session: $(cat "$WORK/newepoch.log")"
wait_log "$WORK/restored.log" "leader:" 10 3
emit rb-1 '{"phase":"after","i":5}'
wait_drained 10
for _ in $(seq 1 40); do [[ $(got after rb-1 after) == "1 2 3 4 5 " ]] && break; sleep 0.05; done
[[ $(got after rb-1 after) == "1 2 3 4 5 " ]] || fail "after --new-epoch rb-1 got '$(got after rb-1 after)' (want 1 2 3 4 5)"
[[ -n $(redis-cli -p "$REDIS_PORT" GET "$(mark_key rb-1)") ]] || fail "no mark under the epoch written by hand"
[[ $(epoch) == "$hand_epoch" ]] || fail "the relay changed the epoch written by hand"
stop_relay "$RELAY_PID" 5
