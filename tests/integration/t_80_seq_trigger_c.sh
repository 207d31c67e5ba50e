#!/usr/bin/env bash
# The C seq trigger (the extension outboxd, pgext/): migrate installs it when its
# function is in the database, and every promise of the PL/pgSQL one holds with it:
# t_05 (16 writers of one run, rollbacks: gapless, id order, every event once in order),
# t_61 (retention empties runs, they go on from their last seq; counters forgotten)
# and t_67 (a prepared writer holds its run and its id's gap) run again on it. Then:
# one statement inserting many rows of a run, COPY, a savepoint rolled back, writers
# under REPEATABLE READ (the counter's update made them fail; the C trigger must not),
# writers beside retention (runs emptied and continued from their floor while written),
# switches between the two triggers while events flow (nothing lost, duplicated or out
# of order, seq gapless across each switch), and misuse refused with clear errors.
. "$(dirname "$0")/lib.sh"
[[ -f "$ROOT/pgext/outboxd.so" ]] || fail "pgext/outboxd.so is not built (make pgext)"
for t in t_05_same_run_writers t_61_run_counters t_67_prepared_writer; do
  SEQ_TRIGGER=c bash "$ROOT/tests/integration/$t.sh" || fail "$t failed with the C seq trigger"
  info "$t passed with the C seq trigger"
done

SEQ_TRIGGER=c new_db
gapless() { # every run: seq 1..n in id order
  local bad
  bad=$(q "SELECT count(*) FROM (SELECT seq, row_number() OVER (PARTITION BY run_id ORDER BY id) AS n
           FROM run_outbox) x WHERE seq <> n")
  [[ $bad == 0 ]] || fail "$1: $bad rows whose seq is not their place in the run: $(q "SELECT run_id, id, seq FROM run_outbox ORDER BY run_id, id" | head -20)"
}

# One statement, many rows of a run (each row's trigger sees the rows before it), COPY,
# a savepoint rolled back (its seq is given again), run ids that differ only in case
# or are long and not ASCII.
long=$(printf 'é%.0s' $(seq 1 600))
q "INSERT INTO run_outbox (run_id, payload) SELECT CASE WHEN g % 3 = 0 THEN 'Many' ELSE 'many' END, '{}'
   FROM generate_series(1, 300) g" >/dev/null
printf 'many\t{}\nMany\t{}\n%s\t{}\nmany\t{}\n' "$long" |
  psql -X -q "$DATABASE_URL" -c "\\copy run_outbox (run_id, payload) FROM STDIN" || fail "COPY into run_outbox failed"
psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" >/dev/null <<SQL || fail "savepoint sequence failed"
BEGIN;
INSERT INTO run_outbox (run_id, payload) VALUES ('sp', '{"i":1}');
SAVEPOINT a;
INSERT INTO run_outbox (run_id, payload) VALUES ('sp', '{"i":"rolled back"}');
ROLLBACK TO a;
INSERT INTO run_outbox (run_id, payload) VALUES ('sp', '{"i":2}'), ('$long', '{}');
COMMIT;
SQL
[[ $(q "SELECT string_agg(seq::text, ',' ORDER BY id) FROM run_outbox WHERE run_id = 'sp'") == "1,2" ]] ||
  fail "a rolled-back savepoint left a gap: $(q "SELECT seq, payload FROM run_outbox WHERE run_id = 'sp'")"
[[ $(q "SELECT max(seq) FROM run_outbox WHERE run_id = 'many'") == 202 &&
  $(q "SELECT max(seq) FROM run_outbox WHERE run_id = 'Many'") == 101 &&
  $(q "SELECT max(seq) FROM run_outbox WHERE run_id = '$long'") == 2 ]] ||
  fail "runs counted wrong: $(q "SELECT run_id = '$long', max(seq) FROM run_outbox GROUP BY 1 ORDER BY 2")"
gapless "one statement, COPY, savepoint"
"$OUTBOXD" status | grep -q "^seq trigger: *c$" || fail "status does not name the C trigger: $("$OUTBOXD" status)"
"$OUTBOXD" status --json | grep -q '"seq_trigger":"c"' || fail "status --json: $("$OUTBOXD" status --json)"

# Each writer has its transaction id before its event id is drawn (the relay's gap
# logic relies on it): a BEFORE trigger that runs after the seq trigger sees one, in
# 100 autocommit inserts (nextval alone gives one to one insert in 32).
q "CREATE FUNCTION xid_probe() RETURNS trigger LANGUAGE plpgsql AS \$f\$ BEGIN
     NEW.payload := jsonb_build_object('xid', pg_current_xact_id_if_assigned()::text); RETURN NEW; END \$f\$;
   CREATE TRIGGER zz_xid_probe BEFORE INSERT ON run_outbox FOR EACH ROW EXECUTE FUNCTION xid_probe()"
for i in $(seq 1 100); do echo "INSERT INTO run_outbox (run_id, payload) VALUES ('xid-$((i % 3))', '{}');"; done |
  psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" >/dev/null
q "DROP TRIGGER zz_xid_probe ON run_outbox"
[[ $(q "SELECT count(*) FROM run_outbox WHERE run_id LIKE 'xid-%' AND payload->>'xid' IS NOT NULL") == 100 ]] ||
  fail "a writer drew its event id before it had a transaction id: $(q "SELECT count(*) FROM run_outbox WHERE run_id LIKE 'xid-%' AND payload->>'xid' IS NULL") of 100"

# Runs per transaction: up to max_locks_per_transaction x 8 (each holds a lock in the
# lock table all sessions share); one more is refused with a clear error before the
# table fills (40,000 runs in one statement made every session fail), and another
# session's insert works meanwhile.
max=$(($(q "SHOW max_locks_per_transaction") * 8))
q "INSERT INTO run_outbox (run_id, payload) SELECT 'bulk-' || (g % $max), '{}' FROM generate_series(1, 2 * $max) g" >/dev/null ||
  fail "a transaction of $max runs failed"
out=$(psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "BEGIN" \
  -c "INSERT INTO run_outbox (run_id, payload) SELECT 'huge-' || g, '{}' FROM generate_series(1, 40000) g" \
  -c "COMMIT" 2>&1) && fail "a transaction of 40,000 runs was taken"
[[ $out == *"writes events of more than $max runs"* && $out == *"plpgsql"* ]] || fail "unclear error for 40,000 runs: $out"
[[ $(q "SELECT count(*) FROM run_outbox WHERE run_id LIKE 'huge-%'") == 0 ]] || fail "a refused transaction left rows"
[[ $(q "INSERT INTO run_outbox (run_id, payload) VALUES ('bulk-7', '{}') RETURNING seq") == 3 ]] ||
  fail "run bulk-7 did not go on at seq 3"
gapless "transactions of many runs"

# Writers under REPEATABLE READ, 8 connections on 2 runs, 2 events per transaction.
cat >"$WORK/rr.sql" <<'SQL'
\set r random(1, 2)
BEGIN ISOLATION LEVEL REPEATABLE READ;
INSERT INTO run_outbox (run_id, payload) VALUES ('rr-' || :r, '{}');
INSERT INTO run_outbox (run_id, payload) VALUES ('rr-' || :r, '{}');
COMMIT;
SQL
pgbench -n -f "$WORK/rr.sql" -c 8 -j 2 -t 100 "$DATABASE_URL" >"$WORK/rr.out" 2>&1 ||
  fail "REPEATABLE READ writers failed: $(tail -5 "$WORK/rr.out")"
[[ $(q "SELECT count(*) FROM run_outbox WHERE run_id LIKE 'rr-%'") == 1600 ]] ||
  fail "REPEATABLE READ writers lost inserts: $(q "SELECT count(*) FROM run_outbox WHERE run_id LIKE 'rr-%'") of 1600"
gapless "REPEATABLE READ writers"

# Writers beside retention: 300 events/s over 600 runs in turn, a run every 2 s,
# while the relay deletes published events after 1 s. Runs are emptied between their
# events and go on from the floor retention writes, in the same transaction as its
# delete, while their next writer may be reading it: every run must reach Redis as
# 1, 2, 3 ... with no seq missing, repeated or out of order.
start_relay relay --retention 1s
redis_listen "$WORK/rt.msgs" "$REDIS_PORT" psubscribe 'run:rt-*'
listener=$LISTEN_PID
start_load --rate 300 --runs 600 --conns 4 --seconds 9 --prefix rt
# Every run is written again in the load's last 3 s: a run with a floor at 6 s was
# emptied and then went on from that floor.
sleep 6
continued=$(q "SELECT count(*) FROM run_outbox_seq WHERE run_id LIKE 'rt-%'")
wait "$LOAD_PID" || fail "the load failed beside retention: $(cat "$WORK/load.out")"
info "$(cat "$WORK/load.out")"
((continued > 0)) || fail "retention emptied no run while they were written"
wait_drained 10
want=$(field inserted "$WORK/load.out")
for _ in $(seq 1 100); do
  (($(grep -c '^{' "$WORK/rt.msgs" || true) >= want)) && break
  sleep 0.05
done
kill "$listener" 2>/dev/null || true
stop_relay "$RELAY_PID" 5
verdict=$({ grep '^{' "$WORK/rt.msgs" || true; } | jq -r '[.run_id, .seq] | @tsv' | awk -F'\t' '
  { if ($2 != last[$1] + 1) bad++; last[$1] = $2; n++ }
  END { printf "%d %d", n, bad }')
[[ ${verdict#* } == 0 ]] || fail "a run reached Redis with a seq missing, repeated or out of order ($verdict)"
[[ ${verdict% *} == "$want" ]] || fail "Redis got ${verdict% *} events of $want inserted beside retention"
info "beside retention: $want events, every run in order; $continued runs emptied and written again from their floor"
q "DELETE FROM run_outbox" >/dev/null

# Switches while 1,000 events/s flow over 20 runs: C -> PL/pgSQL (counters raised to
# each run's newest seq first) -> C -> PL/pgSQL.
start_relay relay
start_sub sub --prefix sw --idle-ms 3000 --max-seconds 60 --check
start_load --rate 1000 --runs 20 --conns 4 --seconds 6 --prefix sw
for want in plpgsql c plpgsql; do
  sleep 1.2
  "$OUTBOXD" migrate --seq-trigger "$want" >"$WORK/switch.out" 2>&1 || fail "migrate --seq-trigger $want: $(cat "$WORK/switch.out")"
  grep -q "^seq trigger: ${want}.*(installed now)" "$WORK/switch.out" || fail "no switch to $want: $(cat "$WORK/switch.out")"
done
wait "$LOAD_PID" || fail "the load failed across the switches: $(cat "$WORK/load.out")"
info "$(cat "$WORK/load.out")"
finish_sub sub "$SUB_PID"
wait_drained 10
gapless "switches under load"
[[ $(q "SELECT count(*) FROM run_outbox r JOIN run_outbox_seq f USING (run_id) WHERE f.last_seq < r.seq") == 0 ]] ||
  fail "a counter is below its run's newest seq after the switch to PL/pgSQL"
stop_relay "$RELAY_PID" 5
"$OUTBOXD" status | grep -q "^seq trigger: *plpgsql$" || fail "status does not name the PL/pgSQL trigger: $("$OUTBOXD" status)"

# A migrate with nothing to do takes no lock on run_outbox: it returns while a writer's
# transaction is open (installing would wait for it).
"$OUTBOXD" migrate | grep -q "^seq trigger: c .*(installed now)" || fail "migrate did not install the C trigger again"
psql -X -q "$DATABASE_URL" -c "BEGIN" -c "INSERT INTO run_outbox (run_id, payload) VALUES ('open', '{}')" \
  -c "SELECT pg_sleep(5)" -c "COMMIT" >/dev/null &
opener=$!
sleep 0.5
t0=$EPOCHREALTIME
timeout 3 "$OUTBOXD" migrate >"$WORK/idle.out" 2>&1 || fail "an idle migrate waited or failed: $(cat "$WORK/idle.out")"
grep -q "installed now" "$WORK/idle.out" && fail "an idle migrate installed the trigger again: $(cat "$WORK/idle.out")"
info "idle migrate beside an open writer: $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.3f", b - a}') s"
wait "$opener"

# --seq-trigger c without the function: a clear error, the trigger left as it was.
other="t80_other_$$"
trap 'q "DROP TABLE IF EXISTS secret" >/dev/null 2>&1; psql -X -q "$BASE_URL/postgres" -c "DROP ROLE IF EXISTS $other" -c "DROP ROLE IF EXISTS ${other}_owner" -c "DROP ROLE IF EXISTS ${other}_nogrant" >/dev/null 2>&1; cleanup' EXIT
new_db
out=$("$OUTBOXD" migrate --seq-trigger c 2>&1) && fail "--seq-trigger c without the extension succeeded: $out"
[[ $out == *"CREATE EXTENSION outboxd"* ]] || fail "unclear error without the extension: $out"
[[ $(q "SELECT tgfoid::regproc FROM pg_trigger WHERE tgname = 'run_outbox_assign_seq'") == outboxd_assign_seq ]] ||
  fail "the PL/pgSQL trigger was changed by a failed --seq-trigger c"
# Misuse of the function itself: each refused with its reason, nothing inserted.
# A PL/pgSQL look-alike on the search_path is not taken for the C function.
q "CREATE SCHEMA evil; CREATE FUNCTION evil.outboxd_assign_seq_c() RETURNS trigger LANGUAGE plpgsql
   AS \$f\$ BEGIN RAISE EXCEPTION 'look-alike ran'; END \$f\$; SET search_path = evil, public"
out=$("$OUTBOXD" migrate --database-url "$DATABASE_URL?options=-csearch_path%3Devil,public" --seq-trigger c 2>&1) &&
  fail "a PL/pgSQL look-alike was taken for the C function: $out"
load_extension "$ROOT/pgext/outboxd.so"
# A role that was not granted the function cannot attach it to a table of its own
# (it would take run locks and read counters through it): CREATE TRIGGER is refused.
q "CREATE ROLE ${other}_nogrant; GRANT CREATE ON SCHEMA public TO ${other}_nogrant" >/dev/null
out=$(psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "SET ROLE ${other}_nogrant" \
  -c "CREATE TABLE mine (id bigint, run_id text, seq bigint, payload jsonb)" \
  -c "CREATE TRIGGER t BEFORE INSERT ON mine FOR EACH ROW EXECUTE FUNCTION outboxd_assign_seq_c()" 2>&1) &&
  fail "a role without EXECUTE attached the C trigger function"
[[ $out == *"permission denied for function outboxd_assign_seq_c"* ]] || fail "want permission denied, got: $out"
q "DROP TABLE IF EXISTS mine; REVOKE CREATE ON SCHEMA public FROM ${other}_nogrant; DROP ROLE ${other}_nogrant" >/dev/null
# The C trigger reads the counter only from a table of the outbox's owner: migrate says so.
q "CREATE ROLE ${other}_owner; ALTER TABLE run_outbox_seq OWNER TO ${other}_owner"
out=$("$OUTBOXD" migrate --seq-trigger c 2>&1) && fail "migrate installed the C trigger over two owners: $out"
[[ $out == *"different owners"* ]] || fail "unclear error for two owners: $out"
q "ALTER TABLE run_outbox_seq OWNER TO CURRENT_USER; DROP ROLE ${other}_owner"
ins="INSERT INTO run_outbox (run_id, payload) VALUES ('x', '{}')"
# mk WHEN EACH ARGS: the function as a second trigger beside the PL/pgSQL one (it runs
# after it among the BEFORE ROW triggers), then an insert, in a transaction.
mk() { echo "BEGIN; CREATE TRIGGER z_misuse $1 ON run_outbox FOR EACH $2 EXECUTE FUNCTION outboxd_assign_seq_c($3); $ins; COMMIT"; }
args="'run_outbox_run_seq', 'run_outbox_seq_pkey', 'last_seq', 'run_outbox_id_seq', 'outboxd', '1868724324'"
# A run's newest entry must be its last in the index: a descending seq is refused.
q "CREATE UNIQUE INDEX run_outbox_desc ON run_outbox (run_id, seq DESC)"
for case in \
  "BEFORE INSERT|ROW|${args/run_outbox_run_seq/run_outbox_desc}, '3'|is not a unique btree index" \
  "BEFORE INSERT|STATEMENT|$args, '3'|runs BEFORE INSERT FOR EACH ROW" \
  "AFTER INSERT|ROW|$args, '3'|runs BEFORE INSERT FOR EACH ROW" \
  "BEFORE INSERT|ROW|'run_outbox_run_seq'|with 7 arguments" \
  "BEFORE INSERT|ROW|${args/run_outbox_run_seq/run_outbox_pkey}, '3'|is not a unique btree index" \
  "BEFORE INSERT|ROW|${args/run_outbox_run_seq/no_such_index}, '3'|no index \"no_such_index\"" \
  "BEFORE INSERT|ROW|${args/run_outbox_id_seq/run_outbox_pkey}, '3'|no sequence \"run_outbox_pkey\"" \
  "BEFORE INSERT|ROW|${args/last_seq/run_id}, '3'|no bigint column \"run_id\"" \
  "BEFORE INSERT|ROW|$args, '3x'|is not an int4 lock key"; do
  IFS='|' read -r when each a want <<<"$case"
  out=$(psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "$(mk "$when" "$each" "$a")" 2>&1) && fail "accepted: $when $each ($a)"
  [[ $out == *"$want"* ]] || fail "want \"$want\" for $when $each ($a), got: $out"
done
q "DROP INDEX run_outbox_desc"
# A counter table of another owner: the trigger would read it without the inserting
# role's privileges, so it is refused.
q "CREATE ROLE $other; CREATE TABLE secret (k text PRIMARY KEY, v bigint); ALTER TABLE secret OWNER TO $other;
   INSERT INTO secret VALUES ('x', 41)"
out=$(psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "$(mk "BEFORE INSERT" ROW "${args/run_outbox_seq_pkey/secret_pkey}, '3'" | sed "s/'last_seq'/'v'/")" 2>&1) &&
  fail "a counter table of another owner was read: $(q "SELECT seq FROM run_outbox WHERE run_id = 'x'")"
[[ $out == *"does not belong to the owner"* ]] || fail "want an ownership error, got: $out"
out=$(q "SELECT outboxd_assign_seq_c()" 2>&1) && fail "called as a plain function: $out"
[[ $out == *"trigger"* ]] || fail "unclear error for a plain call: $out"
[[ $(q "SELECT count(*) FROM run_outbox") == 0 ]] || fail "a refused insert left a row"
"$OUTBOXD" migrate >"$WORK/m.out" 2>&1 && grep -q "^seq trigger: c" "$WORK/m.out" || fail "migrate did not mend the trigger: $(cat "$WORK/m.out")"
q "$ins" >/dev/null
info "misuse refused; migrate installs the trigger again"
