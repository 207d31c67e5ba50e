#!/usr/bin/env bash
# Runs every tests/integration/t_*.sh against one PostgreSQL and Redis started here
# (and always stopped), each test under a time limit. Ends with "N passed, N failed".
# ONLY=t_12 runs the tests whose name contains it; SKIP="t_40 t_41" leaves out the
# tests whose name starts with one of the words.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export BUILD=${BUILD:-build}
export STACK_DIR
STACK_DIR=$(mktemp -d /tmp/outboxd-it.XXXXXX)
chmod 755 "$STACK_DIR"
# KEEP=1 keeps the servers' and processes' logs for a look after a failure.
trap 'bash "$root/scripts/stack.sh" stop "$STACK_DIR"; [[ -n "${KEEP:-}" ]] && echo "kept $STACK_DIR" || rm -rf "$STACK_DIR"' EXIT
bash "$root/scripts/stack.sh" start "$STACK_DIR" || { echo "could not start the test servers"; exit 1; }

pass=0 failed=0 skipped=0 failures=()
for t in "$here"/t_*.sh; do
  [[ -n "${ONLY:-}" && "$t" != *"$ONLY"* ]] && continue
  name=$(basename "$t" .sh)
  skip=0
  for s in ${SKIP:-}; do [[ $name == "$s"* ]] && skip=1; done
  if ((skip)); then
    skipped=$((skipped + 1))
    continue
  fi
  start=$SECONDS
  if timeout -k 5 240 bash "$t"; then
    echo "ok   $name ($((SECONDS - start)) s)"
    pass=$((pass + 1))
  else
    echo "FAIL $name ($((SECONDS - start)) s)"
    failed=$((failed + 1))
    failures+=("$name")
  fi
done
echo
[[ $failed -gt 0 ]] && echo "failed: ${failures[*]}"
echo "integration: $pass passed, $failed failed, $skipped left out by SKIP ($((SECONDS / 60)) min $((SECONDS % 60)) s)"
[[ $failed -eq 0 ]]
