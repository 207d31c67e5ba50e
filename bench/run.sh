#!/usr/bin/env bash
# outboxd benchmark, run by `make bench` (after `make all`). Builds the previous release
# (BASELINE_REF, v0.1.0 by default; scripts/baseline.sh, in a scratch worktree that is
# removed again) and measures it beside this tree, in one run, on one throw-away
# PostgreSQL + Redis (scripts/stack.sh, loopback only). Each version gets a database
# of its own, migrated by its own binary. Measurements of the two alternate, so that
# load from other jobs on the machine falls on both:
#   1. producer cost: inserts/s of a pgbench script (bench/pgbench-insert.sql) into
#      run_outbox of each schema and into a plain table with the same columns
#      (BIGSERIAL primary key, nothing else), at 1, 8 and 32 connections over 1,000
#      runs and at 32 connections on one run; no relay runs meanwhile; beside them the
#      plain table with the unique index replays need, and that with a PL/pgSQL
#      trigger that only draws the id, to show where the outbox's cost goes;
#   2. wake-up: commit->subscriber latency at 1,000 and 10,000 events/s (obx_load,
#      obx_sub --check: nothing lost, repeated or reordered);
#   3. drain: a pre-filled backlog, events/s and the CPU per event of the relay, its
#      PostgreSQL backend and Redis;
#   4. Redis transports: drain and 1,000/s latency of the previous release's relay and
#      of this one over plaintext, over TLS, and with --redis-wait-replicas 1 against a
#      replica, all against one more Redis with a plaintext and a TLS port;
#   5. Redis Cluster (cluster): this tree's relay over a cluster of 3 primaries
#      (scripts/cluster.sh, no replicas) with sharded Pub/Sub: the drain of part 3 (CPU
#      per event of each shard, and how many events each shard got) and the 1,000/s
#      latency of part 2 (obx_sub SSUBSCRIBEd on every node), beside the same relay on
#      one plaintext Redis (part 4's figures when part 4 runs, else measured here,
#      interleaved). The previous release is built only for parts 1-4.
# Environment:
#   BASELINE_REF (v0.1.0)      the release to compare with
#   BENCH_EVENTS (200000)      events pre-filled for each drain
#   BENCH_REPEAT (3)           repetitions of each drain (median reported)
#   BENCH_STEADY_SECONDS (10)  length of each steady-load run
#   BENCH_PRODUCER_SECONDS (5) length of each pgbench run
#   BENCH_PRODUCER_REPEAT (3)  repetitions of each producer measurement (median)
#   BENCH_PRODUCER_WORKLOADS ("1:1000 8:1000 32:1000 32:1")  part 1's CONNS:RUNS; a
#                              workload CONNS:RUNS:own has each connection write runs of
#                              its own (bench/pgbench-insert-own.sql), not any of the runs
#   BENCH_PRODUCER_TARGETS ("pidx ptrig base base0 cur curc")  part 1's tables besides
#                              the plain one (always measured: every ratio is to it)
#   BENCH_PARTS (producer,steady,drain,transports,cluster)  which parts to run
#   BENCH_HUGE_PAGES (try)     PostgreSQL's huge_pages: on needs huge pages reserved
#                              on the machine (docs/BENCHMARKS.md, "Huge pages")
#   BENCH_KEEP (0)             1 keeps the work directory (logs, raw outputs)
#   BUILD (build)              where this tree's outboxd, obx_load and obx_sub are
set -Eeuo pipefail
trap 'echo "[bench] FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
N=${BENCH_EVENTS:-200000}
REPEAT=${BENCH_REPEAT:-3}
STEADY_S=${BENCH_STEADY_SECONDS:-10}
PROD_S=${BENCH_PRODUCER_SECONDS:-5}
PROD_REPEAT=${BENCH_PRODUCER_REPEAT:-3}
# Each once, in the order given; the plain table first, whether named or not.
uniq_words() { awk '{for (i = 1; i <= NF; i++) if (!seen[$i]++) printf "%s ", $i}' <<<"$*"; }
read -r -a PROD_WORKLOADS <<<"$(uniq_words "${BENCH_PRODUCER_WORKLOADS:-1:1000 8:1000 32:1000 32:1}")"
read -r -a PROD_TARGETS <<<"$(uniq_words plain "${BENCH_PRODUCER_TARGETS:-pidx ptrig base base0 cur curc}")"
PARTS=${BENCH_PARTS:-producer,steady,drain,transports,cluster}
REF=${BASELINE_REF:-v0.1.0}
DRAIN_RUNS=100
STEADY_RUNS=50
STEADY_CONNS=8
PAD=210 # obx_load payload {"t":..,"k":..,"pad":"x..."}: about 250 bytes as stored
HZ=1000000000 # ticks() counts nanoseconds

# A workload's connections, runs, and the script its connections run.
wl_conns() { cut -d: -f1 <<<"$1"; }
wl_runs() { cut -d: -f2 <<<"$1"; }
wl_script() { if [[ $1 == *:own ]]; then echo bench/pgbench-insert-own.sql; else echo bench/pgbench-insert.sql; fi; }
wl_label() { echo "$(wl_conns "$1") conns, $(wl_runs "$1")$([[ $1 == *:own ]] && echo " own") run$([[ $(wl_runs "$1") == 1 ]] || echo s)"; }
for w in "${PROD_WORKLOADS[@]}"; do
  [[ $w =~ ^[1-9][0-9]*:[1-9][0-9]*(:own)?$ ]] ||
    { echo "bench: BENCH_PRODUCER_WORKLOADS: \"$w\" is not CONNS:RUNS or CONNS:RUNS:own" >&2; exit 2; }
  [[ $w != *:own ]] || (($(wl_runs "$w") >= $(wl_conns "$w"))) ||
    { echo "bench: BENCH_PRODUCER_WORKLOADS: \"$w\": each connection needs a run of its own (RUNS >= CONNS)" >&2; exit 2; }
done
for t in "${PROD_TARGETS[@]:1}"; do
  [[ " pidx ptrig base base0 cur curc " == *" $t "* ]] ||
    { echo "bench: BENCH_PRODUCER_TARGETS: \"$t\" is none of pidx ptrig base base0 cur curc" >&2; exit 2; }
done
for b in outboxd obx_load obx_sub; do
  [[ -x "$BUILD/$b" ]] || { echo "bench: $BUILD/$b missing: run 'make all' first" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-bench.XXXXXX")
chmod 755 "$WORK"
STACK="$WORK/stack"
CLDIR="$WORK/cluster"
TR_PIDS=()
CLUSTER_PORTS=() # part 5's primaries while its cluster runs
cleanup() {
  # Only this shell's own background jobs that are still running, the Redis servers
  # part 4 started and part 5's cluster.
  local p
  for p in $(jobs -p) "${TR_PIDS[@]}"; do
    kill -9 "$p" 2>/dev/null || true
  done
  bash "$ROOT/scripts/cluster.sh" stop "$CLDIR" >/dev/null 2>&1 || true
  bash "$ROOT/scripts/stack.sh" stop "$STACK" >/dev/null 2>&1 || true
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
    echo "bench: work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
part() { [[ ",$PARTS," == *",$1,"* ]]; }

# ---- the two versions ----------------------------------------------------------------

# The previous release takes part in parts 1-4 only; part 5 alone does not build it.
VERSIONS=(cur)
declare -A BIN=([cur]="$BUILD/outboxd" [curc]="$BUILD/outboxd")
declare -A NAME=([base]="no baseline (part 5 alone)" [cur]="this tree" [curc]="this tree, C trig.")
if part producer || part steady || part drain || part transports; then
  say "building $REF (scripts/baseline.sh)"
  BASE_BUILD=$(bash scripts/baseline.sh "$REF" 2>"$WORK/baseline.log") || die "baseline build: $(tail -5 "$WORK/baseline.log")"
  BASE_REV=$(basename "$BASE_BUILD" | cut -c1-7)
  BIN[base]="$BASE_BUILD/outboxd"
  NAME[base]="$REF ($BASE_REV)"
  VERSIONS=(base cur)
fi

say "compiling bench helpers"
CFL="-std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -I$ROOT/src $(pkg-config --cflags libpq)"
# shellcheck disable=SC2086,SC2046
cc $CFL bench/bench_tool.c -o "$WORK/bench_tool" $(pkg-config --libs libpq)

say "starting PostgreSQL and Redis"
PG_HUGE_PAGES=${BENCH_HUGE_PAGES:-try} bash scripts/stack.sh start "$STACK" >"$WORK/stack.log" 2>&1 ||
  die "stack: $(tail -5 "$WORK/stack.log")"
# shellcheck disable=SC1091
. "$STACK/env"
SHMEM=$(huge_pages "$PGDATA")
SERVER_URL="postgresql://postgres@127.0.0.1:$PGPORT"
declare -A URL=([base]="$SERVER_URL/bench_base" [cur]="$SERVER_URL/bench_cur")
for v in "${VERSIONS[@]}"; do
  psql -X -q "$SERVER_URL/postgres" -c "CREATE DATABASE bench_$v" >/dev/null
  DATABASE_URL=${URL[$v]} "${BIN[$v]}" migrate >"$WORK/migrate-$v.log" 2>&1 || die "migrate $v: $(cat "$WORK/migrate-$v.log")"
done
# This tree with the C seq trigger of pgext/ (the extension outboxd, loaded from the
# built library as CREATE EXTENSION outboxd loads the installed one).
psql -X -q "$SERVER_URL/postgres" -c "CREATE DATABASE bench_curc" >/dev/null
URL[curc]="$SERVER_URL/bench_curc"
bash scripts/pgext-load.sh "${URL[curc]}" || die "could not load the extension outboxd"
if ! DATABASE_URL=${URL[curc]} "${BIN[cur]}" migrate >"$WORK/migrate-curc.log" 2>&1 ||
  ! grep -q "^seq trigger: c" "$WORK/migrate-curc.log"; then
  die "migrate with the C seq trigger: $(cat "$WORK/migrate-curc.log")"
fi
# The plain table: the same columns, a BIGSERIAL primary key, no other index, no
# trigger. It lives in the current database, reached through search_path.
plain_table "${URL[cur]}"
URL[plain]=$(schema_url "${URL[cur]}" plain)
# Where the producer's cost goes, beside them: pidx = plain + a unique index of the
# shape replays need (text, bigint: here (run_id, id)); ptrig = that + a
# PL/pgSQL BEFORE INSERT trigger that only draws the id (and copies it into seq): all
# the outbox's insert does except serializing the writers of a run (its counter) and
# the wake-up check. No relay reads either.
for s in pidx ptrig; do
  psql -X -q "${URL[cur]}" -c "CREATE SCHEMA $s" \
    -c "CREATE TABLE $s.run_outbox (LIKE plain.run_outbox INCLUDING DEFAULTS INCLUDING CONSTRAINTS, PRIMARY KEY (id))" \
    -c "CREATE UNIQUE INDEX ON $s.run_outbox (run_id, $([[ $s == pidx ]] && echo id || echo seq))" >/dev/null
  URL[$s]=$(schema_url "${URL[cur]}" "$s")
done
psql -X -q "${URL[cur]}" -c "ALTER TABLE ptrig.run_outbox ALTER COLUMN id DROP DEFAULT" \
  -c "CREATE FUNCTION ptrig.draw_id() RETURNS trigger LANGUAGE plpgsql AS \$f\$
        BEGIN NEW.id := pg_catalog.nextval('plain.run_outbox_id_seq'::pg_catalog.regclass); NEW.seq := NEW.id;
        RETURN NEW; END \$f\$" \
  -c "CREATE TRIGGER draw_id BEFORE INSERT ON ptrig.run_outbox FOR EACH ROW EXECUTE FUNCTION ptrig.draw_id()" >/dev/null

q() { psql -X -qtA -v ON_ERROR_STOP=1 "$1" "${@:2}"; }
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
ticks() { # CPU time of a process (all its threads) in ns, from schedstat (0 if it is gone)
  { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } | awk '{t += $1} END {printf "%.0f\n", t}'
}
sys_busy_ns() { # CPU time the whole machine spent busy (all cores), in ns
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.0f\n", ($2 + $3 + $4 + $7 + $8 + $9) * 1e9 / hz}' /proc/stat
}
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# Empties a version's outbox and Redis, and part 5's cluster while it runs (ids keep
# increasing; the relay's marks go with FLUSHALL, so every measurement starts alike).
reset_data() {
  local p
  q "${URL[$1]}" -c "TRUNCATE run_outbox, run_outbox_seq" >/dev/null
  rcli FLUSHALL >/dev/null
  for p in "${CLUSTER_PORTS[@]}"; do redis-cli -p "$p" FLUSHALL >/dev/null; done
}

# start_relay VERSION LOG [flags]: that version's relay on its database; pid in RELAY_PID.
# RELAY_EXTRA (flags) and SUB_EXTRA (obx_sub flags) let part 4 vary the transport.
RELAY_EXTRA=()
SUB_EXTRA=()
start_relay() {
  local v=$1 log=$2
  shift 2
  DATABASE_URL=${URL[$v]} "${BIN[$v]}" relay "$@" "${RELAY_EXTRA[@]}" >"$log" 2>&1 &
  RELAY_PID=$!
}

stop_pid() { # SIGTERM, wait up to 15 s, then SIGKILL; then until its backend is gone
  local pid=$1 url=$2
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    [[ $(q "$url" -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'outboxd-relay%'") == 0 ]] && break
    sleep 0.05
  done
}

relay_backend() { # pid of the relay's PostgreSQL backend (the newest: an old one may be exiting)
  local b=""
  for _ in $(seq 1 100); do
    b=$(q "$1" -c "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'outboxd-relay%'
              ORDER BY backend_start DESC LIMIT 1")
    [[ -n "$b" ]] && break
    sleep 0.02
  done
  echo "${b:-0}"
}

# ---- 1. producer cost ------------------------------------------------------------------

declare -A PROD PAIR
producer_once() { # TARGET CONNS RUNS SCRIPT -> inserts/s (base0: the previous release with its NOTIFY trigger off)
  local t=$1 c=$2 runs=$3 v db=$1
  [[ $t == base0 ]] && db=base
  if [[ $t == plain || $t == pidx || $t == ptrig ]]; then
    db=$t
    q "${URL[cur]}" -c "TRUNCATE $t.run_outbox" -c CHECKPOINT >/dev/null
  else
    reset_data "$db"
    q "${URL[$db]}" -c CHECKPOINT >/dev/null
  fi
  [[ $t == base0 ]] && q "${URL[base]}" -c "ALTER TABLE run_outbox DISABLE TRIGGER run_outbox_notify" >/dev/null
  v=$(insert_rate "${URL[$db]}" "$c" "$runs" "$PROD_S" "$4" 2>"$WORK/pgbench.err") || die "$t: $(cat "$WORK/pgbench.err")"
  [[ $t == base0 ]] && q "${URL[base]}" -c "ALTER TABLE run_outbox ENABLE TRIGGER run_outbox_notify" >/dev/null
  echo "$v"
}

run_producers() {
  local rep w t v
  # Repetitions outermost, targets innermost: a burst of other load on the machine
  # spreads over all cells instead of spoiling one, and each table's cell lies next
  # to the plain table's of the same repetition (the within-repetition ratios).
  for ((rep = 1; rep <= PROD_REPEAT; rep++)); do
    for w in "${PROD_WORKLOADS[@]}"; do
      for t in "${PROD_TARGETS[@]}"; do
        v=$(producer_once "$t" "$(wl_conns "$w")" "$(wl_runs "$w")" "$(wl_script "$w")")
        [[ $v =~ ^[0-9]+$ ]] || die "pgbench $t $(wl_label "$w") printed no inserts/s"
        echo "$rep $w-$t $v" >>"$WORK/producer.txt"
        say "producer $rep/$PROD_REPEAT: $(wl_label "$w") $t: $v/s"
      done
    done
  done
  local key
  while read -r key; do
    PROD[$key]=$(awk -v k="$key" '$2 == k {print $3}' "$WORK/producer.txt" | median | xargs printf '%.0f')
    # The ratio to the plain table within each repetition: its median and range.
    PAIR[$key]=$(awk -v k="$key" -v p="${key%-*}-plain" '$2 == p {pl[$1] = $3} $2 == k {v[$1] = $3}
      END {for (r in v) if (pl[r] > 0) printf "%.4f\n", v[r] / pl[r]}' "$WORK/producer.txt" | sort -g |
      awk '{l[NR] = $1} END {if (NR) printf "%.2fx %.2f-%.2f\n", (l[int((NR + 1) / 2)] + l[int(NR / 2) + 1]) / 2, l[1], l[NR]}')
  done < <(cut -d' ' -f2 "$WORK/producer.txt" | sort -u)
}

# producer_table KEY:LABEL...: part 1's table, a row per workload: the plain table's
# inserts/s, then each KEY's and its ratio to the plain table ("-": not measured).
producer_table() {
  local w p v kl line
  line=$(printf '  %-24s %9s' "workload" "plain")
  for kl in "$@"; do line+=$(printf ' %11s %7s' "${kl#*:}" "/plain"); done
  echo "$line"
  for w in "${PROD_WORKLOADS[@]}"; do
    p=${PROD[$w-plain]:-0}
    line=$(printf '  %-24s %9s' "$(wl_label "$w")" "$(thousands "$p")")
    for kl in "$@"; do
      v=${PROD[$w-${kl%%:*}]:-}
      if [[ -z $v ]]; then
        line+=$(printf ' %11s %7s' - -)
      else
        line+=$(printf ' %11s %6.2fx' "$(thousands "$v")" "$(calc %.4f "$v / ($p + 0.001)")")
      fi
    done
    echo "$line"
  done
}

# pair_table KEY:LABEL...: each KEY's ratio to the plain table within a repetition
# (the two cells measured a few seconds apart): median and range over the repetitions.
pair_table() {
  local w kl line
  line=$(printf '  %-24s' "workload")
  for kl in "$@"; do line+=$(printf ' %17s' "${kl#*:}"); done
  echo "$line"
  for w in "${PROD_WORKLOADS[@]}"; do
    line=$(printf '  %-24s' "$(wl_label "$w")")
    for kl in "$@"; do line+=$(printf ' %17s' "${PAIR[$w-${kl%%:*}]:--}"); done
    echo "$line"
  done
}

# ---- 2. steady load ------------------------------------------------------------------

declare -A STEADY
steady_once() { # VERSION RATE [KEY]: the result goes to STEADY[KEY] (VERSION-RATE)
  local v=$1 rate=$2 key=${3:-$1-$2}
  local tag="steady-$key"
  reset_data "$v"
  start_relay "$v" "$WORK/relay-$tag.log"
  relay_backend "${URL[$v]}" >/dev/null
  rm -f "$WORK/$tag.ready"
  DATABASE_URL=${URL[$v]} "$BUILD/obx_sub" --port "$REDIS_PORT" "${SUB_EXTRA[@]}" --prefix steady --ready-file "$WORK/$tag.ready" \
    --max-seconds $((STEADY_S + 90)) --check >"$WORK/$tag.sub" 2>"$WORK/$tag.sub.err" &
  local sub=$!
  for _ in $(seq 1 200); do [[ -f "$WORK/$tag.ready" ]] && break; sleep 0.05; done
  [[ -f "$WORK/$tag.ready" ]] || die "$tag: subscriber did not subscribe"
  local c0 c1 t0=$EPOCHREALTIME t1 be b0 b1
  be=$(relay_backend "${URL[$v]}")
  c0=$(ticks "$RELAY_PID")
  b0=$(ticks "$be")
  "$BUILD/obx_load" --url "${URL[$v]}" --rate "$rate" --runs "$STEADY_RUNS" --conns "$STEADY_CONNS" \
    --seconds "$STEADY_S" --prefix steady --pad "$PAD" >"$WORK/$tag.load" 2>"$WORK/$tag.load.err" || true
  c1=$(ticks "$RELAY_PID")
  b1=$(ticks "$be")
  t1=$EPOCHREALTIME
  DATABASE_URL=${URL[$v]} "$WORK/bench_tool" wait-drained --since "$t1" --timeout 60 >/dev/null || true
  sleep 0.3 # the last messages reach the subscriber
  kill -TERM "$sub" 2>/dev/null || true
  wait "$sub" 2>/dev/null || true
  stop_pid "$RELAY_PID" "${URL[$v]}"
  local sub_line check=ok f lat
  sub_line=$(cat "$WORK/$tag.sub")
  for f in lost duplicates out_of_order unexpected; do
    [[ "$(kv "$f" "$sub_line")" == 0 ]] || check="$f=$(kv "$f" "$sub_line")"
  done
  lat=${sub_line##*latency_ms }
  STEADY[$key]="$(kv rate "$(cat "$WORK/$tag.load")") $(kv received "$sub_line") $(kv p50 "$lat") $(kv p99 "$lat") \
$(kv p999 "$lat") $(kv max "$lat") $(calc %.1f "($c1 - $c0) / $HZ / ($t1 - $t0) * 100") \
$(calc %.1f "($b1 - $b0) / $HZ / ($t1 - $t0) * 100") $check"
  say "  $tag: $(cat "$WORK/$tag.load") | $sub_line"
}

run_steady() {
  local rate v
  for rate in 1000 10000; do
    for v in base cur curc; do
      say "steady: ${NAME[$v]}, $rate events/s, ${STEADY_S}s"
      steady_once "$v" "$rate"
    done
  done
}

# ---- 3. drain ------------------------------------------------------------------------

# prefill VERSION COUNT: COUNT events over DRAIN_RUNS runs, ~250-byte payloads, in one
# statement with the triggers off for this session (session_replication_role): seq and
# id are computed here, as the trigger would (one id per event, in seq order per run).
prefill() {
  reset_data "$1"
  q "${URL[$1]}" -c "SET session_replication_role = replica" \
    -c "INSERT INTO run_outbox (id, run_id, seq, payload)
        SELECT nextval('run_outbox_id_seq'), 'drain-' || (g % $DRAIN_RUNS), g / $DRAIN_RUNS + 1,
               jsonb_build_object('t', (extract(epoch FROM clock_timestamp()) * 1e6)::bigint,
                                  'k', g, 'pad', repeat('x', 200))
        FROM generate_series(0, $2 - 1) g ORDER BY g" \
    -c "VACUUM ANALYZE run_outbox" -c "CHECKPOINT" >/dev/null
}

declare -A DRAIN
# drain_once VERSION [KEY]: appends "rate secs relay_ns backend_ns redis_ns hwm_kb others_ns"
# to drain-KEY.txt (KEY = VERSION). DRAIN_REDIS_PIDS (default: REDIS_PID) names the Redis
# servers whose CPU counts as Redis's; with it set, each one's ns follow, in its order,
# and then what DRAIN_HOOK (a command, if set) prints after the drain.
DRAIN_REDIS_PIDS=()
DRAIN_HOOK=""
drain_once() {
  local v=$1 key=${2:-$1}
  prefill "$v" "$N"
  local t0 out be s0 i
  local -a rp=("${DRAIN_REDIS_PIDS[@]}") r0=()
  ((${#rp[@]})) || rp=("$REDIS_PID")
  for i in "${!rp[@]}"; do r0[i]=$(ticks "${rp[i]}"); done
  s0=$(sys_busy_ns)
  t0=$EPOCHREALTIME
  start_relay "$v" "$WORK/relay-drain-$key.log"
  be=$(relay_backend "${URL[$v]}")
  out=$(DATABASE_URL=${URL[$v]} "$WORK/bench_tool" wait-drained --since "$t0" --timeout $((N / 1000 + 120))) ||
    die "drain $v: $out"
  local secs relay_t be_t redis_t hwm others vac
  secs=${out##*seconds=}
  relay_t=$(ticks "$RELAY_PID")
  be_t=$(ticks "$be")
  # This tree's relay also runs VACUUM on a connection of its own: its work counts.
  vac=$(q "${URL[$v]}" -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'outboxd-vacuum-$RELAY_PID'")
  [[ -n "$vac" ]] && be_t=$((be_t + $(ticks "$vac")))
  local each="" d
  redis_t=0
  for i in "${!rp[@]}"; do
    d=$(($(ticks "${rp[i]}") - r0[i]))
    redis_t=$((redis_t + d))
    each+=" $d"
  done
  ((${#DRAIN_REDIS_PIDS[@]})) || each=""
  others=$(($(sys_busy_ns) - s0 - relay_t - be_t - redis_t))
  hwm=$(hwm_kb "$RELAY_PID")
  stop_pid "$RELAY_PID" "${URL[$v]}"
  [[ $(q "${URL[$v]}" -c "SELECT count(*) FROM run_outbox WHERE published_at IS NULL") == 0 ]] ||
    die "drain $v: rows left unpublished"
  [[ -n $DRAIN_HOOK ]] && each+=" $($DRAIN_HOOK)"
  echo "$(calc %.0f "$N / $secs") $secs $relay_t $be_t $redis_t $hwm $others$each" >>"$WORK/drain-$key.txt"
  say "  drain ${NAME[$v]}: $(calc %.0f "$N / $secs") events/s, PostgreSQL $(calc %.2f "$be_t / $N / 1000") us/event"
}

run_drains() {
  local i v
  for ((i = 1; i <= REPEAT; i++)); do
    for v in base cur; do
      say "drain $i/$REPEAT: ${NAME[$v]}, $N events"
      drain_once "$v"
    done
  done
}

# alternate LABEL FN VARIANT...: REPEAT rounds of `FN drain VARIANT` over the variants,
# then REPEAT rounds of `FN steady VARIANT ROUND`: the variants take turns, so that load
# from other jobs on the machine falls on all of them.
alternate() {
  local label=$1 fn=$2 i v
  shift 2
  for ((i = 1; i <= REPEAT; i++)); do
    for v in "$@"; do
      say "$label $i/$REPEAT: drain, $v"
      "$fn" drain "$v"
    done
  done
  for ((i = 1; i <= REPEAT; i++)); do
    for v in "$@"; do
      say "$label $i/$REPEAT: steady 1000/s, $v"
      "$fn" steady "$v" "$i"
    done
  done
}

# ---- 4. Redis transports -------------------------------------------------------------

median_line() { # the line with the median first field, of the lines on stdin
  sort -t' ' -k1,1g | awk '{l[NR] = $0} END {print l[int((NR + 1) / 2)]}'
}

# One more Redis with a plaintext and a TLS port (certificates from a throw-away CA),
# and a second one that becomes its replica for the WAIT measurements. Each variant
# runs the drain of part 3 (median of REPEAT) and the 1,000/s load of part 2 (REPEAT
# runs, the one with the median p99 shown), interleaved so that a burst of other load
# spreads over all of them. The baseline relay is the build of part 1's comparisons.
declare -A TRANSPORT TRANGE
run_transports() {
  local pki="$WORK/pki"
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 2 \
      -subj "/CN=bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
      -subj "/CN=127.0.0.1" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' >ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext \
      -out server.crt 2>/dev/null
  ) || die "openssl"
  local pp tp rp
  pp=$(free_port); tp=$(free_port); rp=$(free_port)
  redis-server --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$WORK" --port "$pp" \
    --tls-port "$tp" --tls-cert-file "$pki/server.crt" --tls-key-file "$pki/server.key" \
    --tls-ca-cert-file "$pki/ca.crt" --tls-auth-clients no --pidfile "$WORK/tr.pid" --logfile "$WORK/tr.log"
  redis-server --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$WORK" --port "$rp" \
    --pidfile "$WORK/trr.pid" --logfile "$WORK/trr.log"
  for _ in $(seq 1 100); do [[ -s "$WORK/tr.pid" && -s "$WORK/trr.pid" ]] && break; sleep 0.05; done
  TR_PIDS=("$(cat "$WORK/tr.pid")" "$(cat "$WORK/trr.pid")")
  local trpid=${TR_PIDS[0]} v i phase
  # variant -> version (binary and database), Redis URL, relay flags, subscriber flags
  declare -A ver url rflags sflags
  ver=([base]=base [plain]=cur [tls]=cur [repl]=cur [wait1]=cur)
  url=([base]=redis://127.0.0.1:$pp/0 [plain]=redis://127.0.0.1:$pp/0 [tls]=rediss://127.0.0.1:$tp/0
    [repl]=redis://127.0.0.1:$pp/0 [wait1]=redis://127.0.0.1:$pp/0)
  rflags=([tls]="--redis-tls-ca $pki/ca.crt" [wait1]="--redis-wait-replicas 1")
  sflags=([tls]="--port $tp --tls-ca $pki/ca.crt")
  one() { # one drain|steady VARIANT [RUN]
    local -a rf sf
    read -r -a rf <<<"${rflags[$2]:-}"
    read -r -a sf <<<"${sflags[$2]:-}"
    RELAY_EXTRA=("${rf[@]}")
    SUB_EXTRA=("${sf[@]}")
    if [[ $1 == drain ]]; then
      REDIS_URL=${url[$2]} REDIS_PORT=$pp REDIS_PID=$trpid drain_once "${ver[$2]}" "tr-$2"
    else
      REDIS_URL=${url[$2]} REDIS_PORT=$pp steady_once "${ver[$2]}" 1000 "tr-$2-$3"
      echo "${STEADY[tr-$2-$3]}" >>"$WORK/steady-tr-$2.txt"
    fi
    RELAY_EXTRA=()
    SUB_EXTRA=()
  }
  for phase in alone replica; do
    local vs=(base plain tls)
    if [[ $phase == replica ]]; then
      vs=(repl wait1)
      redis-cli -p "$rp" replicaof 127.0.0.1 "$pp" >/dev/null
      for _ in $(seq 1 200); do
        redis-cli -p "$rp" info replication | grep -q master_link_status:up && break
        sleep 0.05
      done
    fi
    alternate transports one "${vs[@]}"
  done
  for v in base plain tls repl wait1; do
    TRANSPORT[$v]=$(median_line <"$WORK/drain-tr-$v.txt")
    # By p99 (field 4): "p99 line" sorted, the key dropped again.
    STEADY[tr-$v]=$(awk '{print $4, $0}' "$WORK/steady-tr-$v.txt" | median_line | cut -d' ' -f2-)
    TRANGE[$v]=$(cut -d' ' -f1 "$WORK/drain-tr-$v.txt" | range)
  done
  kill -9 "${TR_PIDS[@]}" 2>/dev/null || true
  TR_PIDS=()
}

# ---- 5. Redis Cluster ----------------------------------------------------------------

# A cluster of 3 primaries (scripts/cluster.sh, no replicas; stopped by cleanup). This
# tree's relay is given every node as a seed and publishes with sharded Pub/Sub (the
# default with --redis-cluster): each run's events go to the primary that owns its
# channel's slot. Drains as in part 3, each shard's Redis CPU and SPUBLISH count
# (INFO commandstats, reset before each drain: the script's SPUBLISHes count there);
# 1,000/s as in part 2 with obx_sub SSUBSCRIBEd to every run on every node. Without
# part 4, the single-Redis figures come from the stack's Redis, interleaved with the
# cluster's runs; with part 4, from its "this relay, plaintext".
declare -A CLUSTER
# cluster_spublish: the SPUBLISH calls of each primary since its CONFIG RESETSTAT, then
# for each whether it holds the relay's high-water key (1/0: one more script call per
# batch lands there), in the order of CLUSTER_PORTS.
cluster_spublish() {
  local p n out=() hw=()
  for p in "${CLUSTER_PORTS[@]}"; do
    n=$(redis-cli -p "$p" info commandstats | grep -o 'cmdstat_spublish:calls=[0-9]*' | cut -d= -f2 || true)
    out+=("${n:-0}")
    hw+=("$(redis-cli -p "$p" --scan --pattern 'outboxd:*:hw*' | grep -c . || true)")
  done
  echo "${out[*]} ${hw[*]}"
}
run_cluster() {
  say "starting a Redis Cluster of 3 primaries (scripts/cluster.sh)"
  bash scripts/cluster.sh start "$CLDIR" --primaries 3 --replicas 0 >"$WORK/cluster.log" 2>&1 ||
    die "cluster: $(tail -5 "$WORK/cluster.log")"
  # shellcheck disable=SC1091
  . "$CLDIR/env"
  local single=1 i v p
  part transports && single=0
  cl_one() { # cl_one drain|steady cluster|single [RUN]
    if [[ $2 == cluster ]]; then
      RELAY_EXTRA=(--redis-cluster "$CLUSTER_NODES")
      SUB_EXTRA=(--nodes "$CLUSTER_NODES" --sharded "$STEADY_RUNS")
      DRAIN_REDIS_PIDS=("${CLUSTER_PIDS[@]}")
      DRAIN_HOOK=cluster_spublish
      for p in "${CLUSTER_PORTS[@]}"; do redis-cli -p "$p" config resetstat >/dev/null; done
    fi
    if [[ $1 == drain ]]; then
      drain_once cur "cl-$2"
    else
      steady_once cur 1000 "cl-$2-$3"
      echo "${STEADY[cl-$2-$3]}" >>"$WORK/steady-cl-$2.txt"
    fi
    RELAY_EXTRA=()
    SUB_EXTRA=()
    DRAIN_REDIS_PIDS=()
    DRAIN_HOOK=""
  }
  local vs=(cluster)
  ((single)) && vs=(single cluster)
  alternate cluster cl_one "${vs[@]}"
  for v in "${vs[@]}"; do
    CLUSTER[$v]=$(median_line <"$WORK/drain-cl-$v.txt")
    CLUSTER[$v-range]=$(cut -d' ' -f1 "$WORK/drain-cl-$v.txt" | range)
    STEADY[cl-$v]=$(awk '{print $4, $0}' "$WORK/steady-cl-$v.txt" | median_line | cut -d' ' -f2-)
  done
  if ((!single)); then
    CLUSTER[single]=${TRANSPORT[plain]}
    CLUSTER[single-range]=${TRANGE[plain]}
    STEADY[cl-single]=${STEADY[tr-plain]}
  fi
  CLUSTER_PORT_LIST=("${CLUSTER_PORTS[@]}")
  bash scripts/cluster.sh stop "$CLDIR"
  CLUSTER_PORTS=()
}

# ---- run -------------------------------------------------------------------------------

STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no git")
git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || REV="$REV + uncommitted src changes"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$SECONDS
part producer && run_producers
part steady && run_steady
part drain && run_drains
part transports && run_transports
part cluster && run_cluster
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$((SECONDS - T_START))

# ---- table -----------------------------------------------------------------------------

fld() { cut -d' ' -f"$1" <<<"$2"; }
thousands() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; }
col() { awk -v c="$1" '{print $c}' "$2"; }

{
  echo
  if [[ -n ${BIN[base]:-} ]]; then
    echo "outboxd benchmark  $STARTED  (bench/run.sh, ${ELAPSED}s; this tree $REV vs ${NAME[base]})"
  else
    echo "outboxd benchmark  $STARTED  (bench/run.sh, ${ELAPSED}s; this tree $REV; parts: $PARTS)"
  fi
  echo "host: $(nproc) cores, $(psql --version | awk '{print "PostgreSQL", $3}'), $(redis-server --version | awk '{print "Redis", $3}' | tr -d 'v='), loopback;" \
    "PostgreSQL fsync=off as scripts/stack.sh starts it, shared memory in $SHMEM; load avg before $LOAD0, after $LOAD1"
  if part producer; then
    echo
    echo "1. PRODUCER COST  (inserts/s, pgbench -f bench/pgbench-insert.sql, autocommit, ${PROD_S}s each, median of $PROD_REPEAT;"
    echo "   plain = same columns, BIGSERIAL primary key, no other index, no trigger; no relay running)"
    echo "   $REF as released (NOTIFY trigger on) and with its NOTIFY trigger off"
    producer_table "base:$REF" "base0:no NOTIFY" "cur:this tree" "curc:C trigger"
    echo "   where this tree's cost goes (each /plain): + a unique (run_id, bigint) index, the shape replays need;"
    echo "   + a PL/pgSQL BEFORE INSERT trigger that only draws the id (no per-run counter, no wake-up check); this tree;"
    echo "   this tree with the C seq trigger (the extension outboxd, pgext/)"
    producer_table "pidx:+index" "ptrig:+trigger" "cur:this tree" "curc:C trigger"
    echo "   ratio to the plain table within each repetition (cells seconds apart): median and range"
    pair_table "base:$REF" "base0:no NOTIFY" "cur:this tree" "curc:C trigger"
  fi
  if part steady; then
    echo
    echo "2. WAKE-UP  ($STEADY_RUNS runs, $STEADY_CONNS writer connections, one event per transaction, ${STEADY_S}s each;"
    echo "   latency = subscriber receipt - insert time stamped in the payload; CPU = % of one core over the load)"
    printf '  %-8s %-18s %9s %9s %8s %8s %9s %8s %8s %8s  %s\n' "offered" "version" "achieved" "received" \
      "p50 ms" "p99 ms" "p99.9 ms" "max ms" "relay %" "its PG %" "check"
    for rate in 1000 10000; do
      for v in base cur curc; do
        l=${STEADY[$v-$rate]:-"? ? ? ? ? ? ? ? ?"}
        printf '  %-8s %-18s %8s/s %9s %8s %8s %9s %8s %8s %8s  %s\n' "$rate/s" "${NAME[$v]}" "$(fld 1 "$l")" \
          "$(fld 2 "$l")" "$(fld 3 "$l")" "$(fld 4 "$l")" "$(fld 5 "$l")" "$(fld 6 "$l")" "$(fld 7 "$l")" \
          "$(fld 8 "$l")" "$(fld 9 "$l")"
      done
    done
  fi
  if part drain; then
    echo
    echo "3. DRAIN  ($N pre-filled events, $DRAIN_RUNS runs, ~250-byte payloads, default settings; median of $REPEAT, alternating)"
    echo "   CPU per event: the relay, its PostgreSQL backends (with the VACUUM it starts), Redis; busy = their sum / wall;"
    echo "   others = everything else (autovacuum, other jobs), in cores"
    printf '  %-18s %9s %17s %9s %9s %9s %6s %7s %7s\n' "version" "events/s" "range" "relay us" "PG us" \
      "Redis us" "busy" "others" "RSS MB"
    for v in base cur; do
      f="$WORK/drain-$v.txt"
      rate=$(col 1 "$f" | median) secs=$(col 2 "$f" | median)
      rl=$(col 3 "$f" | median) pg=$(col 4 "$f" | median) rd=$(col 5 "$f" | median)
      hwm=$(col 6 "$f" | median) oth=$(col 7 "$f" | median) rg=$(col 1 "$f" | range)
      DRAIN[$v]=$rate
      printf '  %-18s %9s %17s %9.2f %9.2f %9.2f %5.0f%% %7.2f %7.1f\n' "${NAME[$v]}" "$(thousands "$rate")" \
        "$(thousands "${rg%-*}")-$(thousands "${rg#*-}")" "$(calc %.4f "$rl / $N / 1000")" \
        "$(calc %.4f "$pg / $N / 1000")" "$(calc %.4f "$rd / $N / 1000")" \
        "$(calc %.1f "($rl + $pg + $rd) / $HZ / $secs * 100")" "$(calc %.3f "$oth / $HZ / $secs")" \
        "$(calc %.1f "$hwm / 1024")"
    done
    printf '  drain ratio, this tree / %s: %.2fx\n' "$REF" "$(calc %.4f "${DRAIN[cur]} / ${DRAIN[base]}")"
  fi
  if part transports; then
    echo
    echo "4. REDIS TRANSPORTS  (one more Redis with a plaintext and a TLS port; drain as in part 3, median of $REPEAT,"
    echo "   interleaved; steady 1,000/s as in part 2 ($REPEAT runs each, interleaved, the run with the median p99 shown),"
    echo "   the subscriber on the same transport as the relay; wait: --redis-wait-replicas 1 with one replica attached)"
    printf '  %-42s %9s %15s %7s %7s %8s  %8s %7s %7s %8s %7s  %s\n' "variant" "drain/s" "range" "relay" "Redis" \
      "vs base" "achieved" "p50 ms" "p99 ms" "p99.9 ms" "relay %" "check"
    row_tr() { # label key
      local l=${TRANSPORT[$2]} st=${STEADY[tr-$2]:-"? ? ? ? ? ? ? ? ?"} rg=${TRANGE[$2]}
      printf '  %-42s %9s %15s %7s %7s %7sx  %7s/s %7s %7s %8s %6s%%  %s\n' "$1" "$(thousands "$(fld 1 "$l")")" \
        "$(thousands "${rg%-*}")-$(thousands "${rg#*-}")" \
        "$(calc %.3f "$(fld 3 "$l") / $HZ / $N * 100000")" "$(calc %.3f "$(fld 5 "$l") / $HZ / $N * 100000")" \
        "$(calc %.2f "$(fld 1 "$l") / $(fld 1 "${TRANSPORT[base]}")")" "$(fld 1 "$st")" "$(fld 3 "$st")" \
        "$(fld 4 "$st")" "$(fld 5 "$st")" "$(fld 7 "$st")" "$(fld 9 "$st")"
    }
    row_tr "${NAME[base]} relay, plaintext" base
    row_tr "this relay, plaintext" plain
    row_tr "this relay, TLS (rediss://)" tls
    row_tr "this relay, plaintext, replica attached" repl
    row_tr "this relay, --redis-wait-replicas 1" wait1
    echo "   (relay, Redis = CPU seconds per 100k events in the drain; relay % = relay CPU at 1,000/s, % of one core)"
    printf '   ratios: plaintext/baseline drain %.2fx, p99 %.2fx;  TLS/plaintext drain %.2fx, p99 %.2fx;  wait/replica drain %.2fx, p99 %.2fx\n' \
      "$(calc %.4f "$(fld 1 "${TRANSPORT[plain]}") / $(fld 1 "${TRANSPORT[base]}")")" \
      "$(calc %.4f "$(fld 4 "${STEADY[tr-plain]}") / $(fld 4 "${STEADY[tr-base]}")")" \
      "$(calc %.4f "$(fld 1 "${TRANSPORT[tls]}") / $(fld 1 "${TRANSPORT[plain]}")")" \
      "$(calc %.4f "$(fld 4 "${STEADY[tr-tls]}") / $(fld 4 "${STEADY[tr-plain]}")")" \
      "$(calc %.4f "$(fld 1 "${TRANSPORT[wait1]}") / $(fld 1 "${TRANSPORT[repl]}")")" \
      "$(calc %.4f "$(fld 4 "${STEADY[tr-wait1]}") / $(fld 4 "${STEADY[tr-repl]}")")"
  fi
  if part cluster; then
    echo
    echo "5. REDIS CLUSTER  (3 primaries, no replicas; this relay with --redis-cluster <every node>, sharded Pub/Sub;"
    if part transports; then
      echo "   single = part 4's \"this relay, plaintext\"; cluster: drain as in part 3, median of $REPEAT;"
    else
      echo "   single = the same relay on one plaintext Redis; drain as in part 3, median of $REPEAT, interleaved;"
    fi
    echo "   steady 1,000/s as in part 2 ($REPEAT runs each, the run with the median p99 shown), obx_sub SSUBSCRIBEd"
    echo "   to every run on every node (cluster) or PSUBSCRIBEd (single); Redis = all of its servers)"
    printf '  %-22s %9s %15s %9s %9s  %8s %7s %7s %8s %7s  %s\n' "variant" "drain/s" "range" "relay us" "Redis us" \
      "achieved" "p50 ms" "p99 ms" "p99.9 ms" "relay %" "check"
    for v in single cluster; do
      l=${CLUSTER[$v]} st=${STEADY[cl-$v]:-"? ? ? ? ? ? ? ? ?"} rg=${CLUSTER[$v-range]}
      printf '  %-22s %9s %15s %9.2f %9.2f  %7s/s %7s %7s %8s %6s%%  %s\n' \
        "$([[ $v == single ]] && echo "one Redis" || echo "cluster, 3 primaries")" "$(thousands "$(fld 1 "$l")")" \
        "$(thousands "${rg%-*}")-$(thousands "${rg#*-}")" "$(calc %.4f "$(fld 3 "$l") / $N / 1000")" \
        "$(calc %.4f "$(fld 5 "$l") / $N / 1000")" "$(fld 1 "$st")" "$(fld 3 "$st")" "$(fld 4 "$st")" \
        "$(fld 5 "$st")" "$(fld 7 "$st")" "$(fld 9 "$st")"
    done
    printf '   ratios cluster/single: drain %.2fx, p50 %.2fx, p99 %.2fx, relay CPU per event %.2fx, Redis CPU per event %.2fx\n' \
      "$(calc %.4f "$(fld 1 "${CLUSTER[cluster]}") / $(fld 1 "${CLUSTER[single]}")")" \
      "$(calc %.4f "$(fld 3 "${STEADY[cl-cluster]}") / $(fld 3 "${STEADY[cl-single]}")")" \
      "$(calc %.4f "$(fld 4 "${STEADY[cl-cluster]}") / $(fld 4 "${STEADY[cl-single]}")")" \
      "$(calc %.4f "$(fld 3 "${CLUSTER[cluster]}") / $(fld 3 "${CLUSTER[single]}")")" \
      "$(calc %.4f "$(fld 5 "${CLUSTER[cluster]}") / $(fld 5 "${CLUSTER[single]}")")"
    echo "   each shard in the median cluster drain (events = its SPUBLISHes; us per own event = its CPU / its events;"
    echo "   hw = it holds the relay's high-water key, one more script call per batch)"
    printf '  %-22s %9s %7s %9s %14s %15s\n' "shard" "events" "share" "CPU s" "us/own event" "us/all events"
    l=${CLUSTER[cluster]}
    for i in 0 1 2; do
      ns=$(fld $((8 + i)) "$l") ev=$(fld $((11 + i)) "$l")
      printf '  %-22s %9s %6.1f%% %9.3f %14.2f %15.2f\n' \
        "127.0.0.1:${CLUSTER_PORT_LIST[i]}$([[ $(fld $((14 + i)) "$l") == 0 ]] || echo " hw")" "$(thousands "$ev")" \
        "$(calc %.4f "$ev / $N * 100")" "$(calc %.4f "$ns / $HZ")" "$(calc %.4f "$ns / ($ev + 0.0001) / 1000")" \
        "$(calc %.4f "$ns / $N / 1000")"
    done
    printf '  %-22s %9s %6.1f%% %9.3f %14.2f %15.2f\n' "all 3" \
      "$(thousands "$(($(fld 11 "$l") + $(fld 12 "$l") + $(fld 13 "$l")))")" \
      "$(calc %.4f "($(fld 11 "$l") + $(fld 12 "$l") + $(fld 13 "$l")) / $N * 100")" \
      "$(calc %.4f "$(fld 5 "$l") / $HZ")" "$(calc %.4f "$(fld 5 "$l") / $N / 1000")" \
      "$(calc %.4f "$(fld 5 "$l") / $N / 1000")"
  fi
  echo
} | tee "$WORK/table.txt"
