#!/usr/bin/env bash
# The high-water of published ids is raised before any event above it is published
# (docs/GUARANTEES.md, "Numbering that goes back"): with one Redis its call rides on the
# same connection just ahead of the batch's calls, so Redis must run it first. MONITOR
# lists the commands in the order Redis ran them: every id a publish call carries must
# be at or below the highest high-water raised before that call.
. "$(dirname "$0")/lib.sh"
new_db
prefill 3000 30 order
stdbuf -oL redis-cli -p "$REDIS_PORT" MONITOR >"$WORK/monitor.out" 2>&1 &
MON_PID=$!
PIDS+=("$MON_PID")
for _ in $(seq 1 100); do grep -qx OK "$WORK/monitor.out" && break; sleep 0.05; done
grep -qx OK "$WORK/monitor.out" || fail "MONITOR did not start: $(head -3 "$WORK/monitor.out")"
start_relay relay --max-batch-size 100
wait_drained 30
stop_relay "$RELAY_PID" 5
# Until MONITOR's output has stopped growing.
size=-1
for _ in $(seq 1 50); do
  [[ $(stat -c %s "$WORK/monitor.out") == "$size" ]] && break
  size=$(stat -c %s "$WORK/monitor.out")
  sleep 0.2
done
kill "$MON_PID" 2>/dev/null
# A MONITOR line: time [db client] "arg" "arg" ...; a quote inside an argument is
# escaped (\"), so '" "' only ever separates arguments. Commands a script runs are
# listed too ("[0 lua]"): only the relay's own calls count here. Fields: $4 the key;
# the high-water's call: $5 its id; a publish call: from $9 on, id, seq, message.
read -r raises calls ids late first_late < <(awk -F'" "' '
  /lua\]/ || !/"EVALSHA"/ { next }
  $4 ~ /^outboxd:[^:]*:hw(:|$)/ { raises++; if ($5 + 0 > hw) hw = $5 + 0; next }
  $4 ~ /:mark:/ {
    calls++
    for (i = 9; i <= NF; i += 3) {
      ids++
      if ($i + 0 > hw) { late++; if (!first) first = $i }
    }
  }
  END { printf "%d %d %d %d %s\n", raises, calls, ids, late, first ? first : "-" }' "$WORK/monitor.out")
info "MONITOR: $raises high-water raises, $calls publish calls carrying $ids events; published above the high-water: $late"
((ids == 3000)) || fail "MONITOR saw $ids published events in $calls calls, want 3000 (the check would prove nothing)"
((raises >= 30)) || fail "only $raises high-water raises for 3,000 events in batches of 100"
((late == 0)) || fail "$late events were published before a high-water at or above their id was raised (first: id $first_late)"
