#!/usr/bin/env bash
# An ACL user that may PUBLISH but not write the run marks (the documented relay rules
# without `set`): Redis runs the script, its PUBLISHes go out, and only the SET of the
# mark fails. Those events count as published: each reaches subscribers exactly once
# (they used to be re-sent after every hold), the relay says so in one log line and
# counts it (outboxd_redis_mark_failures_total, mark_failures= in its stats), and no
# mark is left. With `set` given back, marks are written again and the relay says so.
. "$(dirname "$0")/lib.sh"
new_db
{
  echo "user default off"
  echo "user admin on >admin-pw ~* &* +@all"
  echo "$(acl_rules relay) -set"
} >"$WORK/users.acl"
start_redis acl plain --aclfile "$WORK/users.acl"
ACL_PORT=$R_PORT
admin() { redis-cli -p "$ACL_PORT" --user admin --pass admin-pw --no-auth-warning "$@"; }
hport=$(pick_port)
start_sub sub --port "$ACL_PORT" --user admin --password admin-pw --prefix am --expect 610 --idle-ms 30000 \
  --max-seconds 90 --check
REDIS_URL="redis://outboxd-relay:relay-pw@127.0.0.1:$ACL_PORT/0" \
  start_relay relay --redis-timeout 500ms --http-listen "127.0.0.1:$hport"

# Several batches and runs, with the relay reading while events arrive.
"$BUILD/obx_load" --rate 300 --runs 5 --conns 2 --seconds 2 --prefix am >"$WORK/load.out"
n=$(field inserted "$WORK/load.out")
[[ -n "$n" ]] || n=$(q "SELECT count(*) FROM run_outbox")
wait_drained 20
wait_log "$WORK/relay.log" "its mark could not be written" 5
info "relay: $(grep -m1 -o "run am-.*mark could not be written.*" "$WORK/relay.log" | cut -c1-240)"
grep "mark could not be written" "$WORK/relay.log" | grep -q "NOPERM" || fail "the log line does not name the ACL denial"
said=$(grep -c "mark could not be written" "$WORK/relay.log" || true)
[[ $said == 1 ]] || fail "the failed mark was logged $said times (want one line)"
failures=$(curl -s "http://127.0.0.1:$hport/metrics" | awk '$1 == "outboxd_redis_mark_failures_total" {print $2}')
((${failures:-0} >= 5)) || fail "outboxd_redis_mark_failures_total = ${failures:-missing} (want at least one per run)"
[[ -z $(admin GET "$(mark_key am-0)") ]] || fail "a mark was written by a user without set"
[[ $(q "SELECT count(*) FROM run_outbox WHERE attempts > 0") == 0 ]] || fail "events were recorded as failed"
wait_log "$WORK/relay.log" "mark_failures=[1-9]" 5
[[ $(readyz "http://127.0.0.1:$hport") == "200 ready"* ]] || fail "/readyz: $(readyz "http://127.0.0.1:$hport")"

# `set` given back: marks are written again, and said once.
admin ACL SETUSER outboxd-relay +set >/dev/null
more=$((610 - n))
((more > 0)) || fail "the load inserted $n events, more than the 610 the subscriber expects"
for i in $(seq 1 "$more"); do echo "INSERT INTO run_outbox (run_id, payload) VALUES ('am-$((i % 5))', '{\"after\":$i}');"; done |
  psql -X -q "$DATABASE_URL" >/dev/null
wait_drained 10
wait_log "$WORK/relay.log" "run marks are written again" 5
[[ -n $(admin GET "$(mark_key am-0)") ]] || fail "no mark for am-0 after set was given back"
wait_sub sub "$SUB_PID"
[[ $(field received "$WORK/sub.out") == 610 ]] || fail "subscriber: $(cat "$WORK/sub.out")"
stop_relay "$RELAY_PID" 5
