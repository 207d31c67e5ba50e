#!/bin/sh
# Prints "VERSION COMMIT" for the build: from git when the tree is a clone (a tag
# vX.Y.Z gives X.Y.Z; N commits after it X.Y.Z+N.gHASH; local changes add .dirty),
# else from the VERSION file that `git archive` fills in (or `make deb` writes into
# its copy of the tree), else the newest release in CHANGELOG.md with commit
# "unknown". The version is also a valid Debian version (no hyphen).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

changelog_version() {
  sed -n 's/^## \[\([0-9][0-9.]*\)\].*/\1/p' CHANGELOG.md 2>/dev/null | head -1
}

if top=$(git rev-parse --show-toplevel 2>/dev/null) && [ "$(cd "$top" && pwd -P)" = "$(pwd -P)" ]; then
  commit=$(git rev-parse --short=12 HEAD)
  if d=$(git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null); then
    # v0.1.0 | v0.1.0-3-gabc1234 | v0.1.0-3-gabc1234-dirty | v0.1.0-dirty
    version=$(printf '%s\n' "${d#v}" | sed -e 's/-/+/' -e 's/-/./g')
  else
    # No tag reachable (a shallow clone): the last release and the commit.
    version="$(changelog_version)+g$(git rev-parse --short HEAD)"
    git diff-index --quiet HEAD -- 2>/dev/null || version="$version.dirty"
  fi
  echo "$version $commit"
  exit 0
fi

if [ -f VERSION ] && ! grep -q 'Format:' VERSION; then
  # "X.Y.Z COMMIT" from make deb, or "vX.Y.Z[-N-gHASH] FULLHASH" from git archive.
  read -r v c <VERSION
  v=$(printf '%s\n' "${v#v}" | sed -e 's/-/+/' -e 's/-/./g')
  echo "$v $(printf '%.12s' "$c")"
  exit 0
fi

v=$(changelog_version)
echo "${v:-0.0.0} unknown"
