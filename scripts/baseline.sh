#!/usr/bin/env bash
# Builds an earlier release of outboxd for side-by-side benchmarks and upgrade tests.
#   scripts/baseline.sh [REF]  -> prints the directory holding that build's outboxd,
#                                 obx_load and obx_sub (build/baseline/<commit>/)
# REF defaults to $BASELINE_REF, then v0.1.0. The first release is also known by its
# commit (0ac45c6), so a clone without tags still finds it. The source is checked out
# into a scratch git worktree that is removed again, whatever happens; a build that
# exists already for the same commit is reused.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ref=${1:-${BASELINE_REF:-v0.1.0}}

resolve() { git -C "$ROOT" rev-parse --verify --quiet "$1^{commit}" 2>/dev/null; }
commit=$(resolve "$ref" || true)
if [[ -z "$commit" && "$ref" == v0.1.0 ]]; then
  commit=$(resolve 0ac45c6 || true)
  if [[ -z "$commit" ]]; then
    # A shallow clone: ask the remote for the tag, then for the commit.
    git -C "$ROOT" fetch --quiet origin tag v0.1.0 >/dev/null 2>&1 ||
      git -C "$ROOT" fetch --quiet origin 0ac45c6 >/dev/null 2>&1 || true
    commit=$(resolve v0.1.0 || resolve 0ac45c6 || true)
  fi
fi
[[ -n "$commit" ]] || { echo "baseline.sh: cannot resolve '$ref' in this repository" >&2; exit 1; }

dest="$ROOT/build/baseline/$commit"
if [[ -x "$dest/outboxd" && -x "$dest/obx_load" && -x "$dest/obx_sub" ]]; then
  echo "$dest"
  exit 0
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-baseline.XXXXXX")
cleanup() {
  git -C "$ROOT" worktree remove --force "$scratch/src" >/dev/null 2>&1 || true
  git -C "$ROOT" worktree prune >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT
git -C "$ROOT" worktree add --quiet --detach "$scratch/src" "$commit" >&2
mkdir -p "$dest.tmp"
# Only the binaries: the old Makefile's own test and deps targets are not wanted here.
make -s -C "$scratch/src" BUILD="$dest.tmp" "$dest.tmp/outboxd" "$dest.tmp/obx_load" "$dest.tmp/obx_sub" >&2
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest"
