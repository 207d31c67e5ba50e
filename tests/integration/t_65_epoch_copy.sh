#!/usr/bin/env bash
# A logical copy of the database (CREATE DATABASE ... TEMPLATE, as a pg_dump restore)
# keeps outboxd_meta's epoch, and on the same cluster the timeline too, so its relay
# uses the same mark keys as the original's. Its numbering starts where the copy was
# taken: its events reuse ids and seqs the original already published. The marks
# carry their origin (system identifier, database oid): the copy's relay passes over
# the original's marks and publishes its events. A mark without an origin (as v0.1.0
# writes them) still counts, so an upgrade keeps the marks set just before it.
. "$(dirname "$0")/lib.sh"
new_db
A_URL=$DATABASE_URL
B_DB="${A_URL##*/}_copy"
psql -X -q "$BASE_URL/postgres" -c "CREATE DATABASE $B_DB TEMPLATE ${A_URL##*/}" >/dev/null
B_URL="$BASE_URL/$B_DB"
start_redis cp plain
export REDIS_URL="redis://127.0.0.1:$R_PORT/0"
redis_listen "$WORK/raw.out" "$R_PORT" --csv psubscribe 'run:cp-*'
raw() { grep -c '^"pmessage"' "$WORK/raw.out" || true; }
wait_raw() { for _ in $(seq 1 60); do [[ $(raw) == "$1" ]] && return 0; sleep 0.05; done; [[ $(raw) == "$1" ]]; }

# The original publishes run cp-1 up to id 5, seq 5.
start_relay relay-a
for i in 1 2 3 4 5; do "$OUTBOXD" emit cp-1 "{\"db\":\"a\",\"i\":$i}" >/dev/null; done
wait_drained 10
wait_raw 5 || fail "$(raw) messages from the original (want 5)"
stop_relay "$RELAY_PID" 5
key=$(mark_key cp-1)
mark=$(redis-cli -p "$R_PORT" GET "$key")
oid_a=$(q "SELECT oid FROM pg_database WHERE datname = current_database()")

# The copy: same key, ids 1..3 and seqs 1..3 again, all at or below the mark.
export DATABASE_URL=$B_URL
[[ $(mark_key cp-1) == "$key" ]] || fail "the copy does not share the original's mark key"
start_relay relay-b
for i in 1 2 3; do "$OUTBOXD" emit cp-1 "{\"db\":\"b\",\"i\":$i}" >/dev/null; done
wait_drained 10
wait_raw 8 || fail "the copy's events did not reach Redis: $(raw) messages (want 8): passed off as duplicates"
order=$(grep -F '\"db\": \"b\"' "$WORK/raw.out" | grep -o '\\"i\\": [0-9]*' | sed 's/[^0-9]//g' | tr '\n' ' ')
[[ $order == "1 2 3 " ]] || fail "the copy's events arrived as: $order (want 1 2 3, once each)"

[[ $mark == "5:5:"*".$oid_a" ]] || fail "mark of the original: '$mark' (want 5:5:<system id>.$oid_a)"

# A mark without an origin counts, whatever the database.
redis-cli -p "$R_PORT" SET "$(mark_key cp-2)" "9:9" >/dev/null
"$OUTBOXD" emit cp-2 '{"db":"b","legacy":1}' >/dev/null
wait_drained 10
sleep 0.3
[[ $(raw) == 8 ]] || fail "an event below a mark without origin was published"
stop_relay "$RELAY_PID" 5
