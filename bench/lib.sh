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
