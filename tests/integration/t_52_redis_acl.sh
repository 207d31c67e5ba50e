#!/usr/bin/env bash
# ACL users with exactly the rules docs/OPERATIONS.md gives: relay, gateway and status
# work with them. Then the relay's user loses `publish`: NOPERM is logged naming the
# cause, the run is held back, /readyz says 503 "refusing", nothing is published and
# no mark is left behind (the script publishes before it raises the mark); once the
# rule is back every event arrives once, in order, and /readyz is 200 again. The
# gateway's user losing its channels: one log line, streams served from PostgreSQL,
# live again once fixed. Last, the relay's user loses `evalsha`: Redis refuses the
# whole call for every run, which is an outage, not a fault of each run: no run is
# held back, /readyz says 503 with the reason, and once the rule is back the events
# go out within a few seconds, not after per-run holds.
. "$(dirname "$0")/lib.sh"
new_db
{
  echo "user default off"
  echo "user admin on >admin-pw ~* &* +@all"
  acl_rules relay
  acl_rules gateway
  acl_rules status
} >"$WORK/users.acl"
info "rules: $(grep outboxd "$WORK/users.acl" | tr '\n' '|')"
start_redis acl plain --aclfile "$WORK/users.acl"
ACL_PORT=$R_PORT
admin() { redis-cli -p "$ACL_PORT" --user admin --pass admin-pw --no-auth-warning "$@"; }

hport=$(pick_port)
h="http://127.0.0.1:$hport"
REDIS_URL="redis://outboxd-relay:relay-pw@127.0.0.1:$ACL_PORT/0" \
  start_relay relay --redis-timeout 300ms --http-listen "127.0.0.1:$hport"
REDIS_URL="redis://outboxd-gateway:gateway-pw@127.0.0.1:$ACL_PORT/0" start_sse sse --redis-timeout 300ms
start_sub sub --port "$ACL_PORT" --user admin --password admin-pw --prefix acl --idle-ms 20000 --max-seconds 85 --check
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix acl --runs 10 --per-run 1 --idle-ms 20000 --max-seconds 85 \
  --ready-file "$WORK/sse.ready" --check >"$WORK/sse.out" 2>"$WORK/sse.err" &
spid=$!; PIDS+=("$spid")
for _ in $(seq 1 100); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done

# 1. The documented rules carry events.
"$BUILD/obx_load" --rate 300 --runs 10 --conns 2 --seconds 3 --prefix acl >/dev/null
wait_drained 10
for _ in $(seq 1 100); do [[ $(readyz "$h") == "200 ready"* ]] && break; sleep 0.05; done
[[ $(readyz "$h") == "200 ready"* ]] || fail "/readyz with the documented rules: $(readyz "$h")"
live0=$(curl -s "http://127.0.0.1:$SSE_PORT/metrics" | awk '$1 == "outboxd_sse_live_messages_total" {print $2}')
((live0 >= 800)) || fail "the gateway got only $live0 messages live with its documented rules"
REDIS_URL="redis://outboxd-status:status-pw@127.0.0.1:$ACL_PORT/0" "$OUTBOXD" status >"$WORK/status.out"
grep -q "redis: *up, primary 127.0.0.1:$ACL_PORT (plaintext)" "$WORK/status.out" || fail "status: $(cat "$WORK/status.out")"

# 2. The relay may no longer publish.
mark_before=$(admin GET "$(mark_key acl-0)")
[[ -n "$mark_before" ]] || fail "no mark for run acl-0 after it was published"
admin ACL SETUSER outboxd-relay -publish >/dev/null
for i in 1 2 3; do "$OUTBOXD" emit acl-0 "{\"held\":$i}" >/dev/null; done
wait_log "$WORK/relay.log" "NOPERM (ACL)" 10
wait_log "$WORK/relay.log" "run acl-0 held back" 10
info "relay: $(grep -m1 -o "run acl-0 held back.*" "$WORK/relay.log" | cut -c1-220)"
r=$(readyz "$h")
[[ $r == "503 not ready"*"redis=refusing"*"NOPERM"* ]] || fail "/readyz while publishing is refused: $r"
sleep 1
held=$(q "SELECT count(*) FROM run_outbox WHERE run_id = 'acl-0' AND published_at IS NULL")
[[ $held == 3 ]] || fail "$held of 3 refused events unpublished"
[[ $(admin GET "$(mark_key acl-0)") == "$mark_before" ]] ||
  fail "a refused publish moved the mark: $mark_before -> $(admin GET "$(mark_key acl-0)")"
kill -0 "$RELAY_PID" || fail "the relay died"

# 3. The gateway's user loses its channels while the relay is refused: one line, and
#    streams keep being served (from PostgreSQL).
admin ACL SETUSER outboxd-gateway resetchannels >/dev/null
admin CLIENT KILL USER outboxd-gateway >/dev/null
wait_log "$WORK/sse.log" "SUBSCRIBE run:acl-.* refused: NOPERM" 10
for _ in $(seq 1 40); do curl -s "http://127.0.0.1:$SSE_PORT/healthz" | grep -q '"redis":"down"' && break; sleep 0.05; done

# 4. Fixed: everything arrives, once, in order; the gateway is live again.
admin ACL SETUSER outboxd-relay +publish >/dev/null
admin ACL SETUSER outboxd-gateway '&run:*' >/dev/null
wait_drained 70
for _ in $(seq 1 100); do [[ $(readyz "$h") == "200 ready"* ]] && break; sleep 0.1; done
[[ $(readyz "$h") == "200 ready"* ]] || fail "/readyz after the fix: $(readyz "$h")"
[[ $(admin GET "$(mark_key acl-0)") != "$mark_before" ]] || fail "the mark did not move after the fix"
for _ in $(seq 1 100); do curl -s "http://127.0.0.1:$SSE_PORT/healthz" | grep -q '"redis":"up"' && break; sleep 0.1; done
curl -s "http://127.0.0.1:$SSE_PORT/healthz" | grep -q '"redis":"up"' || fail "the gateway did not subscribe again"
"$BUILD/obx_load" --rate 300 --runs 10 --conns 2 --seconds 1 --prefix acl >/dev/null
wait_drained 10
# At most twice per process (each worker subscribes on its own): the first refusal,
# and the first after a reconnect that had looked healthy.
n=$(grep "SUBSCRIBE run:acl-.* refused" "$WORK/sse.log" | awk '{print $3}' | sort | uniq -c | awk 'max < $1 {max = $1} END {print max + 0}')
((n <= 2)) || fail "a gateway process logged the refusal $n times"

# 5. The relay may no longer run its script: refused for everyone, no run held.
held_metric() { curl -s "$h/metrics" | awk '$1 == "outboxd_held_runs" {print $2}'; }
held_before=$(held_metric)
holds_before=$(grep -c "held back for" "$WORK/relay.log" || true)
admin ACL SETUSER outboxd-relay -evalsha >/dev/null
for i in 1 2 3; do for r in 1 2 3; do "$OUTBOXD" emit "acl-$r" "{\"noeval\":$i}" >/dev/null; done; done
wait_log "$WORK/relay.log" "every event refused.*evalsha" 10
sleep 3 # holds of 1 and 2 s would have been taken and passed by now
r=$(readyz "$h")
[[ $r == "503 not ready"*"redis=refusing"*"evalsha"* ]] || fail "/readyz while evalsha is refused: $r"
held=$(held_metric)
[[ $held == "$held_before" ]] || fail "outboxd_held_runs = $held (was $held_before) while Redis refused the script to everyone"
holds=$(( $(grep -c "held back for" "$WORK/relay.log" || true) - holds_before ))
[[ $holds == 0 ]] || fail "$holds runs held back while Redis refused the script to everyone: $(grep "held back for" "$WORK/relay.log" | tail -1)"
left=$(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL")
[[ $left == 9 ]] || fail "$left of 9 refused events unpublished"
t0=${EPOCHREALTIME/./}
admin ACL SETUSER outboxd-relay +evalsha >/dev/null
wait_drained 10
ms=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))
info "9 events refused for 3 s went out ${ms} ms after evalsha was given back"
((ms <= 3000)) || fail "the refused events took ${ms} ms to go out after the fix (bound 3000 ms)"
for _ in $(seq 1 60); do [[ $(readyz "$h") == "200 ready"* ]] && break; sleep 0.05; done
[[ $(readyz "$h") == "200 ready"* ]] || fail "/readyz 3 s after evalsha was given back: $(readyz "$h")"
kill -TERM "$SUB_PID"
wait_sub sub "$SUB_PID"
kill -TERM "$spid"
rc=0; wait "$spid" || rc=$?
info "sse: $(cat "$WORK/sse.out")"
[[ $rc -eq 0 ]] || fail "SSE check failed: $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
stop_relay "$RELAY_PID" 5
