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
# X.Y.Z from a describe string (vX.Y.Z[-N-gHASH][-dirty]); with none (no tag reachable,
# as in a shallow clone), the newest release in CHANGELOG.md and the commit.
version_of() { # version_of DESCRIBE COMMIT
  if [ -n "$1" ]; then
    printf '%s\n' "${1#v}" | sed -e 's/-/+/' -e 's/-/./g'
  else
    printf '%s+g%.7s\n' "$(changelog_version)" "$2"
  fi
}

if top=$(git rev-parse --show-toplevel 2>/dev/null) && [ "$(cd "$top" && pwd -P)" = "$(pwd -P)" ]; then
  full=$(git rev-parse HEAD)
  # v0.1.0 | v0.1.0-3-gabc1234
  version=$(version_of "$(git describe --tags --match 'v[0-9]*' 2>/dev/null || true)" "$full")
  case $(git describe --always --dirty) in
  *-dirty) case $version in *+*) version="$version.dirty" ;; *) version="$version+dirty" ;; esac ;;
  esac
  echo "$version $(printf '%.12s' "$full")"
  exit 0
fi

if [ -f VERSION ] && ! grep -q 'Format:' VERSION; then
  # "X.Y.Z COMMIT" from make deb, or "vX.Y.Z[-N-gHASH] FULLHASH" from git archive.
  read -r v c <VERSION || true
  [ -n "${c:-}" ] || { c=$v; v=; } # a describe that found no tag leaves only the hash
  echo "$(version_of "$v" "$c") $(printf '%.12s' "$c")"
  exit 0
fi

v=$(changelog_version)
echo "${v:-0.0.0} unknown"
