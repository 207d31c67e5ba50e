#!/usr/bin/env bash
# A primary that refuses writes (min-replicas-to-write 1 and no replica: NOREPLICAS;
# then, briefly, OOM under maxmemory; MISCONF and BUSY take the same path): the
# publish script is declared as writing ("#!lua"), so Redis refuses it before any
# PUBLISH. That refuses every run alike, so the relay treats it as an outage of Redis,
# not as a fault of each run: for ~10 s while four runs emit events, subscribers
# receive nothing, the refusal is logged once and recorded on the rows, no run is held
# back, no mark moves, the relay asks again at least every second or so, and /readyz
# says 503 "refusing" with the reason. Once writes are allowed again every event
# arrives within a few seconds (not after per-run holds that had grown to 8 or 16 s),
# exactly once, in order, and /readyz is 200 again as soon.
. "$(dirname "$0")/lib.sh"
new_db
start_redis wr plain
WR_PORT=$R_PORT
rc() { redis-cli -p "$WR_PORT" "$@"; }
export REDIS_URL="redis://127.0.0.1:$WR_PORT/0"
# Every message as it arrives, one line each, to count them while the test runs.
redis_listen "$WORK/raw.out" "$WR_PORT" --csv psubscribe 'run:wr-*'
raw() { grep -c '^"pmessage"' "$WORK/raw.out" || true; }
hport=$(pick_port)
h="http://127.0.0.1:$hport"
metric() { curl -s "$h/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }
# The bound on "at once" after the refusal ends: the relay asks again within about a
# second; the rest is room for a loaded 2-core machine.
BOUND_MS=3000
REFUSED_S=10
phase2=$((REFUSED_S * 2 * 4)) # an event per run every 0.5 s
total=$((9 + phase2 + 3 + 10))
start_sub sub --port "$WR_PORT" --prefix wr --expect "$total" --idle-ms 30000 --max-seconds 120 --check
start_relay relay --redis-timeout 500ms --http-listen "127.0.0.1:$hport"

# 1. Writes allowed: events flow, marks are set.
for i in $(seq 1 3); do for r in 1 2 3; do "$OUTBOXD" emit "wr-$r" "{\"phase\":1,\"i\":$i}" >/dev/null; done; done
wait_drained 10
for _ in $(seq 1 40); do [[ $(raw) == 9 ]] && break; sleep 0.05; done
[[ $(raw) == 9 ]] || fail "$(raw) messages for the 9 events published before the refusal"
mark_before=$(rc GET "$(mark_key wr-1)")
[[ -n "$mark_before" ]] || fail "no mark for run wr-1"

# 2. Refused for ~10 s while four runs emit: nothing reaches subscribers, no run is
# held, the relay keeps asking.
rc CONFIG SET min-replicas-to-write 1 >/dev/null
tries_before=$(grep -c "events not published after" "$WORK/relay.log" || true)
for i in $(seq 1 $((REFUSED_S * 2))); do
  for r in 1 2 3 4; do "$OUTBOXD" emit "wr-$r" "{\"phase\":2,\"i\":$i}" >/dev/null; done
  ((i == 4)) && wait_log "$WORK/relay.log" "every event refused.*NOREPLICAS" 5
  sleep 0.5
done
[[ $(raw) == 9 ]] || fail "subscribers got $(( $(raw) - 9 )) messages while Redis refused writes"
left=$(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL")
[[ $left == "$phase2" ]] || fail "$left of $phase2 refused events unpublished"
errs=$(q "SELECT count(*) FROM run_outbox WHERE attempts > 0 AND last_error LIKE '%NOREPLICAS%'")
((errs >= 1)) || fail "the refusal is not recorded on the rows: $(q "SELECT attempts, last_error FROM run_outbox WHERE published_at IS NULL LIMIT 2")"
[[ $(rc GET "$(mark_key wr-1)") == "$mark_before" ]] || fail "the mark of wr-1 moved while writes were refused"
! grep -q "held back" "$WORK/relay.log" || fail "a run was held back for a refusal of everyone: $(grep -m1 "held back" "$WORK/relay.log")"
held=$(metric outboxd_held_runs)
[[ $held == 0 ]] || fail "outboxd_held_runs = $held while Redis refused everyone"
said=$(grep -c "every event refused" "$WORK/relay.log" || true)
[[ $said == 1 ]] || fail "the refusal was announced $said times (want once)"
tries=$(( $(grep -c "events not published after" "$WORK/relay.log" || true) - tries_before ))
info "the relay tried $tries batches in ${REFUSED_S} s of refusal"
((tries >= REFUSED_S / 2)) || fail "only $tries tries in ${REFUSED_S} s of refusal (want one every second or so)"
kill -0 "$RELAY_PID" || fail "the relay died"
r=$(readyz "$h")
[[ $r == "503 not ready"*"redis=refusing"*"NOREPLICAS"* ]] || fail "/readyz while writes are refused: $r"

# 3. Writes allowed again: everything arrives at once, exactly once, in order, and
# /readyz is 200 again.
t0=$(now_ms)
rc CONFIG SET min-replicas-to-write 0 >/dev/null
t_all=0 t_ready=0
while (( $(now_ms) - t0 < 15000 )); do
  ((t_all == 0)) && [[ $(raw) == $((9 + phase2)) ]] && t_all=$(( $(now_ms) - t0 ))
  ((t_ready == 0)) && [[ $(readyz "$h") == "200 ready"* ]] && t_ready=$(( $(now_ms) - t0 ))
  ((t_all && t_ready)) && break
  sleep 0.05
done
info "after the refusal: all $phase2 events delivered in ${t_all} ms, /readyz 200 in ${t_ready} ms"
((t_all > 0)) || fail "$(( $(raw) - 9 )) of $phase2 events delivered 15 s after writes were allowed again"
((t_all <= BOUND_MS)) || fail "the events held back by the refusal took ${t_all} ms to go out (bound ${BOUND_MS} ms)"
((t_ready > 0 && t_ready <= BOUND_MS)) || fail "/readyz took ${t_ready} ms to say ready again (bound ${BOUND_MS} ms): $(readyz "$h")"
wait_log "$WORK/relay.log" "events are taken again" 5
wait_drained 10

# 4. The same for OOM (maxmemory with noeviction), briefly: no run held, out at once.
rc CONFIG SET maxmemory-policy noeviction >/dev/null
rc CONFIG SET maxmemory 1 >/dev/null
for r in 1 2 3; do "$OUTBOXD" emit "wr-$r" "{\"phase\":4}" >/dev/null; done
wait_log "$WORK/relay.log" "every event refused.*OOM" 10
sleep 2
[[ $(raw) == $((9 + phase2)) ]] || fail "subscribers got messages while Redis was out of memory"
! grep -q "held back" "$WORK/relay.log" || fail "a run was held back for OOM: $(grep -m1 "held back" "$WORK/relay.log")"
r=$(readyz "$h")
[[ $r == "503 not ready"*"redis=refusing"*"OOM"* ]] || fail "/readyz while Redis is out of memory: $r"
t0=$(now_ms)
rc CONFIG SET maxmemory 0 >/dev/null
wait_drained 10
ms=$(( $(now_ms) - t0 ))
info "after OOM: 3 events out in ${ms} ms"
((ms <= BOUND_MS)) || fail "the events refused for OOM took ${ms} ms to go out (bound ${BOUND_MS} ms)"
for i in $(seq 1 10); do "$OUTBOXD" emit "wr-$(( i % 3 + 1 ))" "{\"phase\":3,\"i\":$i}" >/dev/null; done
wait_drained 10
for _ in $(seq 1 40); do [[ $(raw) == "$total" ]] && break; sleep 0.05; done
[[ $(raw) == "$total" ]] || fail "$(raw) messages for $total events (want each exactly once)"
wait_sub sub "$SUB_PID"
[[ $(field received "$WORK/sub.out") == "$total" ]] || fail "subscriber: $(cat "$WORK/sub.out")"
stop_relay "$RELAY_PID" 5
