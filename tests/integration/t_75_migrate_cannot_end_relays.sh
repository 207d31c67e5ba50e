#!/usr/bin/env bash
# `migrate` from v0.1.0's schema run by a role that may not end a running v0.1.0
# relay's session (the relay connects as a superuser): the schema is committed, but
# migrate does not pretend all is well. It exits 1 and says that relays of an earlier
# version must be stopped now, because such a relay could keep leading on the new
# schema. Run again by a role that may end it, it ends the session and the old
# relay refuses the schema.
. "$(dirname "$0")/lib.sh"
OLD=$(bash "$ROOT/scripts/baseline.sh" v0.1.0 2>"$WORK/baseline.log") ||
  fail "cannot build v0.1.0: $(tail -5 "$WORK/baseline.log")"
role="mig_$RANDOM" db="t_nokill_$RANDOM"
psql -X -q "$BASE_URL/postgres" -c "CREATE ROLE $role LOGIN" -c "CREATE DATABASE $db OWNER $role" >/dev/null
trap 'psql -X -q "$BASE_URL/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "DROP ROLE IF EXISTS $role" >/dev/null 2>&1; cleanup' EXIT
export DATABASE_URL="$BASE_URL/$db"
MIG_URL="postgresql://$role@127.0.0.1:$PGPORT/$db"
DATABASE_URL=$MIG_URL "$OLD/outboxd" migrate >"$WORK/migrate-old.out" 2>&1 || fail "v0.1.0 migrate: $(cat "$WORK/migrate-old.out")"
"$OLD/outboxd" relay --stats-interval 1s >"$WORK/old-relay.log" 2>&1 &
OLD_PID=$!
PIDS+=("$OLD_PID")
wait_log "$WORK/old-relay.log" "leader: this relay publishes" 10

rc=0
DATABASE_URL=$MIG_URL "$OUTBOXD" migrate >"$WORK/migrate.out" 2>"$WORK/migrate.log" || rc=$?
info "migrate as $role: exit $rc: $(cat "$WORK/migrate.out") $(cat "$WORK/migrate.log" | cut -c1-400)"
[[ $rc == 1 ]] || fail "migrate exited $rc although it could not end the old relay's session (want 1)"
grep -q "the schema is migrated, but" "$WORK/migrate.log" && grep -q "stop every relay of an earlier version now" "$WORK/migrate.log" ||
  fail "migrate did not say that the old relays must be stopped: $(cat "$WORK/migrate.log")"
[[ $(q "SELECT max(version) FROM outboxd_migrations") == 3 ]] || fail "the schema was not migrated"
kill -0 "$OLD_PID" || fail "the old relay stopped"
grep -q "newer than this binary's 1" "$WORK/old-relay.log" && fail "the old relay's session was ended after all"

# A superuser can end it: the old relay reconnects and refuses the schema. (A second
# migrate finds nothing to apply, so the session is ended by hand, as UPGRADING says.)
[[ $(q "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name LIKE 'outboxd-relay-%'") == 1 ]] ||
  fail "could not end the old relay's session as a superuser"
wait_log "$WORK/old-relay.log" "newer than this binary's 1: upgrade outboxd" 10
"$OUTBOXD" emit nk-1 '{"after":1}' >/dev/null
sleep 1
[[ $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL") == 1 ]] || fail "the old relay published on the new schema"
kill -TERM "$OLD_PID"; wait "$OLD_PID" || true
