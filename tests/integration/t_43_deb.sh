#!/usr/bin/env bash
# make deb builds outboxd_<version>_<arch>.deb with dpkg-buildpackage, and lintian
# finds neither errors nor warnings in it. Its contents: Depends from dpkg-shlibdeps,
# the units in /lib/systemd/system and never enabled or started by the maintainer
# scripts, /etc/outboxd/outboxd.env a private conffile, the outboxd user created on
# install and deleted only on purge, and a binary that reports the version and
# commit it was built from although the package builds from a copy without .git.
# (tests/deb/test-deb.sh installs it in a clean Debian 12 root: make test-deb.) The
# extension's package postgresql-15-outboxd is built beside it.
. "$(dirname "$0")/lib.sh"
# A command that fails outside a check names itself (set -e would end the test silently).
trap 'echo "  [$T] line $LINENO failed: $BASH_COMMAND" >&2' ERR

# The package builds its own binary, never the sanitizer build: once, in the plain pass.
if [[ "${SANITIZE:-}" == 1 ]]; then
  info "skipped under make test-sanitize: the package does not contain the sanitizer build"
  exit 0
fi

read -r version commit < <(sh "$ROOT/scripts/version.sh")
make -C "$ROOT" --no-print-directory BUILD="$BUILD" deb >"$WORK/deb.log" 2>&1 || fail "make deb: $(tail -20 "$WORK/deb.log")"
deb="$BUILD/deb/outboxd_${version}_$(dpkg --print-architecture).deb"
[[ -f "$deb" ]] || fail "make deb did not produce $(basename "$deb"): $(ls "$BUILD/deb")"

lintian --fail-on error,warning --no-tag-display-limit "$deb" >"$WORK/lintian" 2>&1 ||
  fail "lintian: $(grep -E '^[EW]:' "$WORK/lintian" | head -10 || tail -5 "$WORK/lintian")"
info "lintian: no errors or warnings"

field() { dpkg-deb -f "$deb" "$1"; }
[[ $(field Version) == "$version" ]] || fail "Version: $(field Version), want $version"
for lib in libpq5 libhiredis0.14 libevent-2.1-7 libc6 adduser; do
  field Depends | grep -q "\b$lib\b" || fail "Depends lacks $lib: $(field Depends)"
done
# Every library the binary links is a dependency (dpkg-shlibdeps did its work).
root="$WORK/root"
dpkg-deb -x "$deb" "$root"
# The libraries it links directly (NEEDED), where the loader finds them here.
ldd "$root/usr/bin/outboxd" | awk '$2 == "=>" {print $1, $3}' |
  grep -F -f <(objdump -p "$root/usr/bin/outboxd" | awk '$1 == "NEEDED" {print $2 " "}') >"$WORK/libs"
[[ $(wc -l <"$WORK/libs") -ge 5 ]] || fail "ldd found only: $(cat "$WORK/libs")"
while read -r so path; do
  pkg=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$(realpath "$path")" 2>/dev/null) || fail "no package provides $path"
  pkg=${pkg%%:*}
  field Depends | grep -q "\b$pkg\b" || fail "$so comes from $pkg, which Depends does not name: $(field Depends)"
done <"$WORK/libs"
"$root/usr/bin/outboxd" --version | grep -qx "outboxd $version (commit $commit)" ||
  fail "the packaged binary says '$("$root/usr/bin/outboxd" --version)', want '$version (commit $commit)'"

dpkg-deb -c "$deb" | awk '{print $1, $2, $6}' >"$WORK/contents"
for p in ./lib/systemd/system/outboxd-relay.service ./lib/systemd/system/outboxd-sse.service ./usr/bin/outboxd \
  ./usr/share/man/man1/outboxd.1.gz ./usr/share/bash-completion/completions/outboxd ./usr/share/doc/outboxd/copyright; do
  grep -q " $p$" "$WORK/contents" || fail "the package lacks $p"
done
grep -q "^-rw------- root/root ./etc/outboxd/outboxd.env$" "$WORK/contents" ||
  fail "outboxd.env: $(grep outboxd.env "$WORK/contents")"
ctl="$WORK/control"
dpkg-deb -e "$deb" "$ctl"
[[ $(cat "$ctl/conffiles") == /etc/outboxd/outboxd.env ]] || fail "conffiles: $(cat "$ctl/conffiles")"
for u in relay sse; do
  grep -q "^Type=notify$" "$root/lib/systemd/system/outboxd-$u.service" || fail "outboxd-$u.service is not Type=notify"
  grep -q "^ExecStart=/usr/bin/outboxd $u$" "$root/lib/systemd/system/outboxd-$u.service" || fail "outboxd-$u.service ExecStart"
done
# Installed, not enabled, not started: postinst invokes no service action but the
# try-restart of an upgrade, and re-enables a unit only where it was installed and
# enabled before (make test-deb checks the outcome: units disabled after install).
grep -n "deb-systemd-invoke\|_dh_action\|systemctl.* \(start\|enable\)" "$ctl/postinst" | grep -v "try-restart" &&
  fail "postinst starts or enables a service"
awk '/deb-systemd-helper debian-installed/ {guard = 1} /End automatically added section/ {guard = 0}
     /deb-systemd-helper enable/ && !guard {print; bad = 1} END {exit bad}' "$ctl/postinst" ||
  fail "postinst enables a unit on a first installation"
grep -q "adduser .*--system" "$ctl/postinst" || fail "postinst does not create the outboxd system user"
awk '/"\$1" = purge/ {p = 1} p && /deluser --quiet --system outboxd/ {found = 1} END {exit !found}' "$ctl/postrm" ||
  fail "postrm does not delete the user on purge"

# The extension's package: lintian-clean, for PostgreSQL 15, its library and files where
# CREATE EXTENSION looks for them, and the packaged library works: a database given its
# function gets the C seq trigger from migrate, and an insert its seq.
ext="$BUILD/deb/postgresql-15-outboxd_${version}_$(dpkg --print-architecture).deb"
[[ -f "$ext" ]] || fail "make deb did not produce $(basename "$ext"): $(ls "$BUILD/deb")"
lintian --fail-on error,warning --no-tag-display-limit "$ext" >"$WORK/lintian-ext" 2>&1 ||
  fail "lintian (extension): $(grep -E '^[EW]:' "$WORK/lintian-ext" | head -10 || tail -5 "$WORK/lintian-ext")"
dpkg-deb -f "$ext" Depends | grep -q "\bpostgresql-15\b" || fail "the extension's Depends lacks postgresql-15: $(dpkg-deb -f "$ext" Depends)"
dpkg-deb -c "$ext" | awk '{print $6}' >"$WORK/ext-contents"
for p in ./usr/lib/postgresql/15/lib/outboxd.so ./usr/share/postgresql/15/extension/outboxd.control \
  ./usr/share/postgresql/15/extension/outboxd--1.0.sql ./usr/share/doc/postgresql-15-outboxd/copyright; do
  grep -qx "$p" "$WORK/ext-contents" || fail "the extension's package lacks $p"
done
extroot="$WORK/extroot"
dpkg-deb -x "$ext" "$extroot"
chmod 755 "$WORK" "$extroot"
new_db
load_extension "$extroot/usr/lib/postgresql/15/lib/outboxd.so"
"$OUTBOXD" migrate | grep -q "^seq trigger: c " || fail "migrate did not take the packaged extension's trigger"
[[ $(q "INSERT INTO run_outbox (run_id, payload) VALUES ('p', '{}'), ('p', '{}') RETURNING seq" | paste -sd,) == 1,2 ]] ||
  fail "the packaged trigger did not give seq 1, 2"
info "extension package: lintian clean, its library gives seqs"

# CHANGELOG.md's newest release is debian/changelog's newest release.
md=$(sed -n 's/^## \[\([0-9][0-9.]*\)\].*/\1/p' "$ROOT/CHANGELOG.md" | head -1)
deb_released=$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Version)
[[ "$md" == "$deb_released" ]] || fail "CHANGELOG.md's newest release is $md, debian/changelog's $deb_released"
