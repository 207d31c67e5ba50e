#!/usr/bin/env bash
# One run whose events Redis refuses (its mark key is made a list, so the publish
# script fails with WRONGTYPE) is held back alone: other runs keep flowing, its
# attempts and error are recorded, `status` lists it, and once the cause is gone its
# events go out in order.
. "$(dirname "$0")/lib.sh"
new_db
key=$(mark_key bad-1)
redis-cli -p "$REDIS_PORT" rpush "$key" poison >/dev/null
start_sub sub --prefix bad --idle-ms 4000 --max-seconds 60 --check
start_relay relay
q "INSERT INTO run_outbox (run_id, payload) SELECT 'bad-1', jsonb_build_object('g', g) FROM generate_series(1, 150) g"
q "INSERT INTO run_outbox (run_id, payload) SELECT 'bad-' || (2 + g % 5), jsonb_build_object('g', g) FROM generate_series(1, 50) g"
sleep 3
good=$(q "SELECT count(*) FROM run_outbox WHERE run_id <> 'bad-1' AND published_at IS NOT NULL")
[[ $good == 50 ]] || fail "only $good of 50 events of healthy runs published while bad-1 was refused"
[[ $(q "SELECT count(*) FROM run_outbox WHERE run_id = 'bad-1' AND published_at IS NOT NULL") == 0 ]] ||
  fail "an event of the refused run was marked published"
[[ $(q "SELECT attempts > 0 AND last_error LIKE '%WRONGTYPE%' FROM run_outbox WHERE run_id = 'bad-1' AND seq = 1") == t ]] ||
  fail "attempts/last_error not recorded: $(q "SELECT attempts, last_error FROM run_outbox WHERE run_id = 'bad-1' AND seq = 1")"
[[ $(q "SELECT attempts FROM run_outbox WHERE run_id = 'bad-1' AND seq = 2") == 0 ]] ||
  fail "the events waiting behind the failed one should not carry its failure"
"$OUTBOXD" status --json | grep -q '"run_id":"bad-1"' || fail "status does not list the blocked run"
grep -q "run bad-1 held back" "$WORK/relay.log" || fail "no log line about holding the run back"
redis-cli -p "$REDIS_PORT" del "$key" >/dev/null
info "cause removed; waiting for the held run"
wait_drained 30
wait_sub sub "$SUB_PID"
stop_relay "$RELAY_PID" 5
