#!/usr/bin/env bash
# Two runs refused by Redis in the same batch, each for its own reason: run bad-a's
# mark key holds a list (WRONGTYPE), the relay's ACL user may not publish to run
# bad-b's channel (NOPERM). Each run's failure is recorded, logged and held with its
# own reason (the batch's last error used to be written on every failed run), and the
# other runs go out.
. "$(dirname "$0")/lib.sh"
new_db
rules=$(acl_rules relay)
{
  echo "user default off"
  echo "user admin on >admin-pw ~* &* +@all"
  sed 's/&run:\*/\&run:ok-* \&run:bad-a/' <<<"$rules"
} >"$WORK/users.acl"
start_redis acl plain --aclfile "$WORK/users.acl"
ACL_PORT=$R_PORT
redis-cli -p "$ACL_PORT" --user admin --pass admin-pw --no-auth-warning rpush "$(mark_key bad-a)" poison >/dev/null
REDIS_URL="redis://outboxd-relay:relay-pw@127.0.0.1:$ACL_PORT/0" start_relay relay --redis-timeout 500ms
# One statement: the events are in one batch, one script call per run.
q "INSERT INTO run_outbox (run_id, payload) SELECT r, jsonb_build_object('g', g)
   FROM unnest(ARRAY['bad-a', 'bad-b', 'ok-1', 'ok-2']) r, generate_series(1, 5) g ORDER BY g, r"
for _ in $(seq 1 50); do
  [[ $(q "SELECT count(*) FROM run_outbox WHERE run_id LIKE 'bad-%' AND attempts > 0") == 2 ]] && break
  sleep 0.1
done
err_a=$(q "SELECT last_error FROM run_outbox WHERE run_id = 'bad-a' AND seq = 1")
err_b=$(q "SELECT last_error FROM run_outbox WHERE run_id = 'bad-b' AND seq = 1")
info "bad-a: $err_a"
info "bad-b: $err_b"
[[ $err_a == *WRONGTYPE* && $err_a != *NOPERM* ]] || fail "bad-a's failure is recorded with another reason: $err_a"
[[ $err_b == *NOPERM* && $err_b != *WRONGTYPE* ]] || fail "bad-b's failure is recorded with another reason: $err_b"
grep "run bad-a held back" "$WORK/relay.log" | grep -q WRONGTYPE || fail "bad-a's hold is not logged with its reason"
grep "run bad-b held back" "$WORK/relay.log" | grep -q NOPERM || fail "bad-b's hold is not logged with its reason"
for _ in $(seq 1 50); do
  [[ $(q "SELECT count(*) FROM run_outbox WHERE run_id LIKE 'ok-%' AND published_at IS NOT NULL") == 10 ]] && break
  sleep 0.1
done
[[ $(q "SELECT count(*) FROM run_outbox WHERE run_id LIKE 'ok-%' AND published_at IS NOT NULL") == 10 ]] ||
  fail "the other runs did not go out"
[[ $(q "SELECT count(*) FROM run_outbox WHERE run_id LIKE 'bad-%' AND published_at IS NOT NULL") == 0 ]] ||
  fail "an event of a refused run was marked published"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
