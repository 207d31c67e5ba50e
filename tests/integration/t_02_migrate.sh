#!/usr/bin/env bash
# Migrations are versioned and idempotent; a newer schema than the binary knows is a
# clear error for migrate and relay; a plain INSERT gets a gapless per-run seq and
# wakes the relay through NOTIFY.
. "$(dirname "$0")/lib.sh"
new_db   # migrates once

out=$("$OUTBOXD" migrate)
[[ "$out" == *"up to date (version 3)"* ]] || fail "second migrate said: $out"
# Migrations 1, 2 and 3, each once.
[[ $(q "SELECT string_agg(version::text, ',' ORDER BY version) FROM outboxd_migrations") == 1,2,3 ]] ||
  fail "migrations recorded: $(q "SELECT string_agg(version::text, ',' ORDER BY version) FROM outboxd_migrations")"

# The contract's columns, with their types and nullability.
cols=$(q "SELECT string_agg(column_name || ':' || data_type || ':' || is_nullable, ',' ORDER BY ordinal_position)
          FROM information_schema.columns WHERE table_name = 'run_outbox'")
for c in "id:bigint:NO" "run_id:text:NO" "seq:bigint:NO" "payload:jsonb:NO" \
         "created_at:timestamp with time zone:NO" "published_at:timestamp with time zone:YES"; do
  [[ ",$cols," == *",$c,"* ]] || fail "column $c missing in: $cols"
done

# Plain INSERTs: seq assigned per run, gapless, increasing.
q "INSERT INTO run_outbox (run_id, payload) VALUES ('a', '{}'), ('b', '{}'), ('a', '[1]'), ('a', '\"x\"')"
[[ $(q "SELECT string_agg(seq::text, ',' ORDER BY id) FROM run_outbox WHERE run_id = 'a'") == "1,2,3" ]] ||
  fail "run a seqs: $(q "SELECT string_agg(seq::text, ',' ORDER BY id) FROM run_outbox WHERE run_id = 'a'")"
[[ $(q "SELECT seq FROM run_outbox WHERE run_id = 'b'") == 1 ]] || fail "run b seq"
# A rolled-back insert leaves no gap.
q "BEGIN; INSERT INTO run_outbox (run_id, payload) VALUES ('a', '{}'); ROLLBACK;"
q "INSERT INTO run_outbox (run_id, payload) VALUES ('a', '{}')"
[[ $(q "SELECT max(seq) FROM run_outbox WHERE run_id = 'a'") == 4 ]] || fail "rollback left a gap in seq"
# An empty run id is refused by the table itself.
psql -X -q "$DATABASE_URL" -c "INSERT INTO run_outbox (run_id, payload) VALUES ('', '{}')" 2>/dev/null &&
  fail "empty run_id accepted"

# The relay's mark can be a HOT update: published_at is in no index, and pages keep room.
idx=$(q "SELECT string_agg(indexdef, '; ') FROM pg_indexes WHERE tablename = 'run_outbox'")
[[ "$idx" != *published_at* ]] || fail "an index involves published_at: $idx"
[[ $(q "SELECT reloptions::text FROM pg_class WHERE relname = 'run_outbox'") == *fillfactor=80* ]] ||
  fail "run_outbox has no fillfactor below 100: $(q "SELECT reloptions::text FROM pg_class WHERE relname = 'run_outbox'")"
# The id is drawn once, in the trigger, after the run's lock: no column default.
[[ -z $(q "SELECT column_default FROM information_schema.columns WHERE table_name = 'run_outbox' AND column_name = 'id'") ]] ||
  fail "run_outbox.id still has a default"

# A newer schema is refused clearly.
q "INSERT INTO outboxd_migrations (version, name) VALUES (99, 'from the future')"
rc=0; "$OUTBOXD" migrate 2>"$WORK/err" || rc=$?
[[ $rc -ne 0 ]] && grep -q "newer than this binary" "$WORK/err" || fail "migrate on newer schema: rc=$rc $(cat "$WORK/err")"
start_relay relay
sleep 1
grep -q "newer than this binary" "$WORK/relay.log" || fail "relay did not report the newer schema: $(cat "$WORK/relay.log")"
kill -TERM "$RELAY_PID"; wait "$RELAY_PID" || true
