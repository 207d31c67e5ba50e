#!/usr/bin/env bash
# What huge pages for PostgreSQL's shared memory change for the producer (after
# `make all pgext`; docs/BENCHMARKS.md, "Huge pages"). Two throw-away servers
# (scripts/stack.sh, loopback), one with huge_pages=on and one with huge_pages=off,
# each with run_outbox under the C seq trigger and the plain table of part 1 of
# `make bench`. Cells alternate: on/plain, on/C trigger, off/plain, off/C trigger, each
# repetition, so that load from other jobs falls on all four. Prints each repetition,
# then per server the medians and the C trigger's ratio to the plain table within a
# repetition (median and range).
# Needs huge pages reserved on the machine for one server (about 80 of 2 MB: as root,
# sysctl vm.nr_hugepages=100).
# Environment:
#   HUGE_CONNS (32)    pgbench connections
#   HUGE_RUNS (1000)   runs the events are spread over
#   HUGE_REPEAT (8)    repetitions
#   HUGE_SECONDS (5)   length of each pgbench run
#   HUGE_OWN_RUNS (0)  1: each connection writes runs of its own, HUGE_RUNS / HUGE_CONNS
#                      of them (bench/pgbench-insert-own.sql), instead of any of the runs
set -Eeuo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
CONNS=${HUGE_CONNS:-32}
RUNS=${HUGE_RUNS:-1000}
REPEAT=${HUGE_REPEAT:-8}
SECS=${HUGE_SECONDS:-5}
OWN=${HUGE_OWN_RUNS:-0}
for v in CONNS RUNS REPEAT SECS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "huge_pages.sh: $v must be a positive integer" >&2; exit 2; }
done
case $OWN in
  0) SCRIPT=bench/pgbench-insert.sql WHOSE="any run from any connection" ;;
  1) SCRIPT=bench/pgbench-insert-own.sql WHOSE="$((RUNS / CONNS)) runs of its own per connection"
     ((RUNS >= CONNS)) || { echo "huge_pages.sh: HUGE_OWN_RUNS=1 needs HUGE_RUNS >= HUGE_CONNS" >&2; exit 2; } ;;
  *) echo "huge_pages.sh: HUGE_OWN_RUNS must be 0 or 1" >&2; exit 2 ;;
esac
[[ -x "$BUILD/outboxd" && -f pgext/outboxd.so ]] || { echo "huge_pages.sh: run 'make all pgext' first" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-huge.XXXXXX")
chmod 755 "$WORK"
trap 'for m in on off; do bash scripts/stack.sh stop "$WORK/$m" >/dev/null 2>&1 || true; done; rm -rf "$WORK"' EXIT
declare -A URL
for m in on off; do
  PG_HUGE_PAGES=$m bash scripts/stack.sh start "$WORK/$m" >"$WORK/$m.log" 2>&1 || {
    echo "huge_pages.sh: the server with huge_pages=$m did not start: $(tail -3 "$WORK/$m.log")" >&2
    [[ $m == on ]] && echo "huge_pages.sh: reserve huge pages first (as root: sysctl vm.nr_hugepages=100)" >&2
    exit 1
  }
  # shellcheck disable=SC1090,SC1091
  URL[$m]=$(. "$WORK/$m/env" && echo "$DATABASE_URL")
  bash scripts/pgext-load.sh "${URL[$m]}"
  if ! DATABASE_URL=${URL[$m]} "$BUILD/outboxd" migrate >"$WORK/migrate-$m.log" 2>&1 ||
    ! grep -q '^seq trigger: c' "$WORK/migrate-$m.log"; then
    echo "huge_pages.sh: migrate with the C seq trigger: $(cat "$WORK/migrate-$m.log")" >&2
    exit 1
  fi
  plain_table "${URL[$m]}"
done
[[ $(huge_pages "$WORK/on/pg") == huge* && $(huge_pages "$WORK/off/pg") == 4* ]] ||
  { echo "huge_pages.sh: the servers' shared memory is not mapped as asked" >&2; exit 1; }

echo "huge pages on and off, $CONNS connections over $RUNS runs ($WHOSE), ${SECS}s per cell ($(date -u '+%F %H:%M UTC'), load avg $(cut -d' ' -f1-3 /proc/loadavg))"
for ((r = 1; r <= REPEAT; r++)); do
  line="  repetition $r:"
  for m in on off; do
    for t in plain c; do
      u=${URL[$m]}
      psql -X -q "$u" -c "TRUNCATE run_outbox, plain.run_outbox" -c CHECKPOINT
      [[ $t == plain ]] && u=$(schema_url "$u" plain)
      v=$(insert_rate "$u" "$CONNS" "$RUNS" "$SECS" "$SCRIPT")
      echo "$r $m $t $v" >>"$WORK/cells"
      line+=" $m/$t $v"
    done
  done
  echo "$line"
done
for m in on off; do
  # The C trigger's ratio to the plain table within each repetition.
  awk -v m=$m '$2 == m {v[$1, $3] = $4} END {for (r = 1; (r, "c") in v; r++) printf "%.4f\n", v[r, "c"] / v[r, "plain"]}' \
    "$WORK/cells" >"$WORK/ratios-$m"
  printf '  huge_pages=%-3s  plain %s/s, C trigger %s/s (medians); C trigger / plain within a repetition %.2fx (%s)\n' "$m" \
    "$(awk -v m=$m '$2 == m && $3 == "plain" {print $4}' "$WORK/cells" | median | xargs printf '%.0f')" \
    "$(awk -v m=$m '$2 == m && $3 == "c" {print $4}' "$WORK/cells" | median | xargs printf '%.0f')" \
    "$(median <"$WORK/ratios-$m")" "$(xargs printf '%.2f\n' <"$WORK/ratios-$m" | range)"
done
