#!/usr/bin/env bash
# make deb: builds $BUILD/deb/outboxd_<version>_<arch>.deb with dpkg-buildpackage
# (debian/) from a copy of this tree, because dpkg-buildpackage writes its results
# beside the source directory. The copy has no .git: its VERSION file carries the
# version and commit, as a release archive's does. Installs the tools it needs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
: "${VERSION:?VERSION is set by make deb}" "${COMMIT:?COMMIT is set by make deb}"
BUILD=${BUILD:-build}

bash scripts/install-deps.sh dpkg-dev debhelper pkg-config libpq-dev libhiredis-dev libevent-dev libcmocka-dev \
  postgresql-server-dev-15

[[ "$BUILD" = /* ]] || BUILD="$root/$BUILD"
out="$BUILD/deb"
src="$out/src/outboxd-$VERSION"
rm -rf "$out"
mkdir -p "$src"
tar -C "$root" --exclude=./build --exclude=./.git --exclude=./.run --exclude=./.var --exclude=./tmp \
  -cf - . | tar -C "$src" -xf -
echo "$VERSION $COMMIT" >"$src/VERSION"

# A build that is not the release at the top of debian/changelog gets an entry of its
# own, dated like its commit so that rebuilding it gives the same files.
top=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)
if [[ "$top" != "$VERSION" ]]; then
  maintainer=$(sed -n 's/^Maintainer: //p' "$src/debian/control")
  when=$(git log -1 --format=%cD 2>/dev/null || date -R)
  {
    printf 'outboxd (%s) UNRELEASED; urgency=medium\n\n' "$VERSION"
    printf '  * Build of commit %s; see /usr/share/doc/outboxd/CHANGELOG.md.\n\n' "$COMMIT"
    printf ' -- %s  %s\n\n' "$maintainer" "$when"
    cat "$src/debian/changelog"
  } >"$src/debian/changelog.new"
  mv "$src/debian/changelog.new" "$src/debian/changelog"
fi

echo "deb: building outboxd $VERSION (commit $COMMIT); log in $out/build.log"
# The copy builds as a fresh tree would: its own build/ and the version in its VERSION
# file, not what the caller's make exported.
if ! (cd "$src" && env -u BUILD -u SANITIZE -u OPT -u VERSION -u COMMIT -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
  dpkg-buildpackage -b -us -uc -jauto) >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  echo "deb: dpkg-buildpackage failed (full log: $out/build.log)" >&2
  exit 1
fi
mv "$out"/src/*.deb "$out"/src/*.changes "$out"/src/*.buildinfo "$out/"
rm -rf "$out/src"
ls "$out"/outboxd_*.deb "$out"/postgresql-15-outboxd_*.deb
