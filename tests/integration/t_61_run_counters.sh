#!/usr/bin/env bash
# Per-run counters under retention (docs/SCHEMA.md): a run whose events retention
# deleted keeps its last seq, so its next event gets the next seq and a stream resuming
# with the old Last-Event-ID gets it; once the run has had no rows and no event for
# --counter-retention, its counter goes too (nothing grows with the number of runs
# ever written), and the run, if it writes again, starts over at seq 1, which the
# relay publishes (its Redis mark from the first life does not stop it). The leader
# vacuums the table itself once enough rows were marked or deleted (--vacuum-after).
. "$(dirname "$0")/lib.sh"
new_db
start_relay relay --retention 1s --counter-retention 5s --vacuum-after 100
start_sse sse
redis_listen "$WORK/c1.msgs" "$REDIS_PORT" subscribe run:c-1
listener=$LISTEN_PID
for i in 1 2 3; do "$OUTBOXD" emit c-1 "{\"i\":$i}" >/dev/null; done
# 200 more runs with one event each: their counters must go as well.
q "INSERT INTO run_outbox (run_id, payload) SELECT 'many-' || g, '{}' FROM generate_series(1, 200) g"

# Retention empties the runs: each keeps its last seq.
for _ in $(seq 1 100); do
  [[ $(q "SELECT count(*) FROM run_outbox") == 0 ]] && break
  sleep 0.1
done
[[ $(q "SELECT count(*) FROM run_outbox") == 0 ]] || fail "retention left $(q "SELECT count(*) FROM run_outbox") rows"
[[ $(q "SELECT last_seq FROM run_outbox_seq WHERE run_id = 'c-1'") == 3 ]] ||
  fail "run c-1 did not keep its last seq: $(q "SELECT * FROM run_outbox_seq WHERE run_id = 'c-1'")"
counters=$(q "SELECT count(*) FROM run_outbox_seq")
[[ $counters == 201 ]] || fail "want 201 kept counters, have $counters"
"$OUTBOXD" status | grep -q "run counters: *201" || fail "status does not show the counters: $("$OUTBOXD" status)"
for _ in $(seq 1 50); do
  [[ $(q "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'run_outbox'") -ge 1 ]] && break
  sleep 0.1
done
[[ $(q "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'run_outbox'") -ge 1 ]] ||
  fail "the leader did not vacuum run_outbox after --vacuum-after 100: $(grep vacuum "$WORK/relay.log")"

# The run writes again: seq 4, and a stream resuming after 3 gets it.
curl -s -N --max-time 4 -H 'Last-Event-ID: 3' "http://127.0.0.1:$SSE_PORT/runs/c-1/events" >"$WORK/resume" &
cpid=$!
sleep 0.5
out=$("$OUTBOXD" emit c-1 '{"i":4}')
[[ $out == *'"seq":4}'* ]] || fail "a run emptied by retention went on with: $out"
wait "$cpid" || true
[[ $(grep '^id: ' "$WORK/resume" | tr -d '\r' | paste -sd,) == "id: 4" ]] ||
  fail "a stream resuming after 3 did not get seq 4: $(cat "$WORK/resume")"

# No rows, no event for --counter-retention: every counter goes.
for _ in $(seq 1 200); do
  [[ $(q "SELECT count(*) FROM run_outbox_seq") == 0 ]] && break
  sleep 0.1
done
[[ $(q "SELECT count(*) FROM run_outbox_seq") == 0 ]] ||
  fail "$(q "SELECT count(*) FROM run_outbox_seq") counters left after --counter-retention"
# Forgotten: the run starts over at 1, and the relay publishes it.
out=$("$OUTBOXD" emit c-1 '{"i":"again"}')
[[ $out == *'"seq":1}'* ]] || fail "a forgotten run did not start over at seq 1: $out"
for _ in $(seq 1 50); do grep -q '"i": "again"' "$WORK/c1.msgs" && break; sleep 0.1; done
grep -q '"seq":1,.*"i": "again"' "$WORK/c1.msgs" || fail "the restarted run's event was not published: $(cat "$WORK/c1.msgs")"
[[ $(grep -c '"run_id":"c-1"' "$WORK/c1.msgs") == 5 ]] || fail "run c-1: want 5 messages: $(cat "$WORK/c1.msgs")"
stop_relay "$RELAY_PID" 5
kill -TERM "$SSE_PID" "$listener"
wait "$SSE_PID" "$listener" 2>/dev/null || true
