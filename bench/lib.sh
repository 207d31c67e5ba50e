# shellcheck shell=bash
# Shared by the bench scripts (sourced): where the tree and its build are, and the
# small helpers that turn measurements into figures.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
[[ "$BUILD" = /* ]] || BUILD="$ROOT/$BUILD"

# median [NONE]: of the numbers on stdin, one per line: the middle one, or the mean of
# the two middle ones; NONE (default 0) when there are none. Every digit is kept
# (awk's own print gives six significant digits, too few for CPU nanoseconds).
median() {
  sort -g | awk -v none="${1:-0}" '{l[NR] = $1}
    END {if (NR) printf "%.15g\n", (l[int((NR + 1) / 2)] + l[int(NR / 2) + 1]) / 2; else print none}'
}
# range: "lowest-highest" of the numbers on stdin.
range() { sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {print lo "-" hi}'; }
# kv NAME TEXT: the value of NAME=value in TEXT (a tool's summary line), or "?".
kv() {
  local v
  v=$(grep -o "$1=[0-9.]*" <<<"$2" | head -1 | cut -d= -f2 || true)
  echo "${v:-?}"
}
# free_port, port_free
. "$ROOT/scripts/ports.sh"

# plain_table URL: creates plain.run_outbox in the database at URL, the table the
# producer's inserts/s are compared with: the outbox's columns, a BIGSERIAL primary
# key, no other index, no trigger. Reached through search_path (schema_url URL plain).
plain_table() {
  psql -X -q -v ON_ERROR_STOP=1 "$1" -c "CREATE SCHEMA plain" \
    -c "CREATE TABLE plain.run_outbox (id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, seq BIGINT NOT NULL DEFAULT 0,
          payload JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), published_at TIMESTAMPTZ NULL,
          attempts INT NOT NULL DEFAULT 0, last_error TEXT NULL)" >/dev/null
}
# schema_url URL SCHEMA: URL with SCHEMA first on its search_path.
schema_url() { echo "$1?options=-csearch_path%3D$2"; }
# insert_rate URL CONNS RUNS SECONDS [SCRIPT]: inserts/s of bench/pgbench-insert.sql
# (one event of one of RUNS runs per transaction), or of another script given the same
# variables (runs, conns), at CONNS connections; fails with pgbench's output when it
# prints no rate.
insert_rate() {
  local out
  if out=$(pgbench -n -f "${5:-$ROOT/bench/pgbench-insert.sql}" -D runs="$3" -D conns="$2" -c "$2" -j "$(($2 < 4 ? $2 : 4))" \
    -T "$4" "$1" 2>&1) &&
    awk '/^tps = / {printf "%.0f\n", $3; found = 1} END {exit !found}' <<<"$out"; then
    return 0
  fi
  echo "pgbench at $2 connections over $3 runs: $out" >&2
  return 1
}
# huge_pages PGDATA: how the server's shared memory is mapped, from its postmaster's
# HugetlbPages: "huge pages (N kB)" or "4 kB pages".
huge_pages() {
  local kb
  kb=$(awk '/^HugetlbPages:/ {print $2}' "/proc/$(head -1 "$1/postmaster.pid")/status" 2>/dev/null || true)
  if [[ ${kb:-0} -gt 0 ]]; then echo "huge pages ($kb kB)"; else echo "4 kB pages"; fi
}
