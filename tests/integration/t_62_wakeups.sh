#!/usr/bin/env bash
# Writers notify only while a relay waits (docs/SCHEMA.md), and no wake-up is lost.
# The relay polls only every 10 s here, so an event that arrives in well under a
# second was woken for: idle events one by one; events while another writer keeps its
# transaction open (they do not notify, the relay must keep reading), and that late
# commit itself, whose id is below many already published; then under 1,000 events/s
# writers notify for a small fraction of their commits (v0.1.0: every one); and with
# no relay running, never.
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay --poll-interval-ms 10000
wait_log "$WORK/relay.log" "leader: this relay publishes" 10
start_sub sub --prefix w --idle-ms 4000 --max-seconds 90 --check

# Idle: 20 events, 100 ms apart.
"$BUILD/obx_load" --rate 10 --runs 5 --conns 1 --seconds 2 --prefix w-idle >"$WORK/idle.out"
# A writer keeps its transaction open 2 s after inserting while others write.
psql -X -q "$DATABASE_URL" -c "BEGIN" -c "INSERT INTO run_outbox (run_id, payload) VALUES ('w-open', '{}')" \
  -c "SELECT pg_sleep(2)" -c "COMMIT" >"$WORK/open.out" 2>&1 &
open=$!
sleep 0.2
"$BUILD/obx_load" --rate 20 --runs 5 --conns 2 --seconds 3 --prefix w-beside >"$WORK/beside.out"
wait "$open" || fail "the open transaction failed: $(cat "$WORK/open.out")"
published=f
for _ in $(seq 1 50); do
  published=$(q "SELECT published_at IS NOT NULL FROM run_outbox WHERE run_id = 'w-open'")
  [[ $published == t ]] && break
  sleep 0.02
done
[[ $published == t ]] || fail "the late commit was not published within a second of its commit"
below=$(q "SELECT count(*) FROM run_outbox WHERE id > (SELECT id FROM run_outbox WHERE run_id = 'w-open')")
((below > 10)) || fail "the open transaction's id should lie below later events ($below above it)"

# Under load: count the notifying commits.
rm -f "$WORK/listen.ready"
"$BUILD/obx_listen" --ready-file "$WORK/listen.ready" >"$WORK/listen.out" &
listener=$!
PIDS+=("$listener")
for _ in $(seq 1 100); do [[ -f "$WORK/listen.ready" ]] && break; sleep 0.02; done
"$BUILD/obx_load" --rate 1000 --runs 50 --conns 8 --seconds 4 --prefix w-load >"$WORK/load.out"
kill -TERM "$listener"
wait "$listener"
inserted=$(field inserted "$WORK/load.out") notified=$(field notifications "$WORK/listen.out")
info "under 1,000 events/s: $notified notifying commits for $inserted inserts"
((notified * 10 < inserted)) || fail "$notified of $inserted commits notified under load"

finish_sub sub "$SUB_PID"
max=$(grep -o 'max=[0-9.]*' "$WORK/sub.out" | cut -d= -f2)
awk -v m="$max" 'BEGIN {exit !(m < 1000)}' || fail "an event waited $max ms: a wake-up was lost (the poll is 10 s)"
stop_relay "$RELAY_PID" 5

# No relay: nobody waits, nobody notifies.
rm -f "$WORK/listen.ready"
"$BUILD/obx_listen" --ready-file "$WORK/listen.ready" >"$WORK/listen2.out" &
listener=$!
PIDS+=("$listener")
for _ in $(seq 1 100); do [[ -f "$WORK/listen.ready" ]] && break; sleep 0.02; done
"$BUILD/obx_load" --rate 200 --runs 5 --conns 2 --count 200 --prefix w-none >/dev/null
sleep 0.3
kill -TERM "$listener"
wait "$listener"
[[ $(field notifications "$WORK/listen2.out") == 0 ]] ||
  fail "with no relay running, $(field notifications "$WORK/listen2.out") commits notified"
