#!/usr/bin/env bash
# One run whose events Redis refuses (its mark key is made a list, so the publish
# script fails with WRONGTYPE) is held back alone: other runs keep flowing, its
# attempts and error are recorded, `status` lists it. An operator skips its first
# event (`outboxd skip`, only allowed on the oldest unpublished one), removes the
# cause and runs `outboxd retry`: the rest goes out at once, in order.
. "$(dirname "$0")/lib.sh"
new_db
key=$(mark_key bad-1)
redis-cli -p "$REDIS_PORT" rpush "$key" poison >/dev/null
start_sub sub --prefix bad --expect 199 --max-seconds 60 --check
start_relay relay
q "INSERT INTO run_outbox (run_id, payload) SELECT 'bad-1', jsonb_build_object('g', g) FROM generate_series(1, 150) g"
q "INSERT INTO run_outbox (run_id, payload) SELECT 'bad-' || (2 + g % 5), jsonb_build_object('g', g) FROM generate_series(1, 50) g"
# 3 s of refusals (the hold grows meanwhile: see the retry below), then until the
# healthy runs are out and bad-1's failure is recorded (a slow machine: 20 s more).
sleep 3
for _ in $(seq 1 200); do
  good=$(q "SELECT count(*) FROM run_outbox WHERE run_id <> 'bad-1' AND published_at IS NOT NULL")
  [[ $good == 50 && $(q "SELECT attempts > 0 FROM run_outbox WHERE run_id = 'bad-1' AND seq = 1") == t ]] &&
    grep -q "run bad-1 held back" "$WORK/relay.log" && break
  sleep 0.1
done
[[ $good == 50 ]] || fail "only $good of 50 events of healthy runs published while bad-1 was refused"
[[ $(q "SELECT count(*) FROM run_outbox WHERE run_id = 'bad-1' AND published_at IS NOT NULL") == 0 ]] ||
  fail "an event of the refused run was marked published"
[[ $(q "SELECT attempts > 0 AND last_error LIKE '%WRONGTYPE%' FROM run_outbox WHERE run_id = 'bad-1' AND seq = 1") == t ]] ||
  fail "attempts/last_error not recorded: $(q "SELECT attempts, last_error FROM run_outbox WHERE run_id = 'bad-1' AND seq = 1")"
[[ $(q "SELECT attempts FROM run_outbox WHERE run_id = 'bad-1' AND seq = 2") == 0 ]] ||
  fail "the events waiting behind the failed one should not carry its failure"
"$OUTBOXD" status --json | grep -q '"run_id":"bad-1"' || fail "status does not list the blocked run"
grep -q "run bad-1 held back" "$WORK/relay.log" || fail "no log line about holding the run back"
rc=0; "$OUTBOXD" skip bad-1 2 2>"$WORK/skip.err" || rc=$?
[[ $rc -eq 1 ]] || fail "skipping a non-oldest event: exit $rc, want 1"
"$OUTBOXD" skip bad-1 1 --reason "poison test" 2>"$WORK/skip.log" || fail "skip of the oldest event failed"
grep -q "skipped event seq 1 of run bad-1" "$WORK/skip.log" || fail "skip was not logged"
[[ $(q "SELECT published_at IS NOT NULL AND last_error = 'skipped by operator: poison test' FROM run_outbox WHERE run_id = 'bad-1' AND seq = 1") == t ]] ||
  fail "skipped row not recorded"
sleep 2.5 # let the hold grow past what the test waits below
redis-cli -p "$REDIS_PORT" del "$key" >/dev/null
"$OUTBOXD" retry bad-1 >/dev/null || fail "retry failed"
for _ in $(seq 1 30); do
  [[ $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL") == 0 ]] && break
  sleep 0.1
done
[[ $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL") == 0 ]] || fail "outboxd retry did not release the held run within 3 s"
grep -q "retry asked for" "$WORK/relay.log" || fail "the relay did not log the retry"
info "cause removed and retry asked: the held run drained"
wait_drained 30
wait_sub sub "$SUB_PID"
stop_relay "$RELAY_PID" 5
