#!/usr/bin/env bash
# make install puts exactly the expected files under DESTDIR, with PREFIX's paths
# written into the systemd units; the environment file is private, and an edited one
# survives a reinstall and an uninstall; make uninstall removes everything else.
. "$(dirname "$0")/lib.sh"

mk() { make -C "$ROOT" --no-print-directory BUILD="$BUILD" "$@" >>"$WORK/make.log" 2>&1 || fail "make $*: $(tail -5 "$WORK/make.log")"; }
listing() { (cd "$1" && find . -mindepth 1 | sort); }
docs=$(cd "$ROOT" && ls README.md CHANGELOG.md docs/*.md | xargs -n1 basename | sort)

# PREFIX=/usr: the layout of the Debian package.
dest="$WORK/usr-root"
mk install DESTDIR="$dest" PREFIX=/usr
{
  printf '%s\n' ./etc ./etc/outboxd ./etc/outboxd/outboxd.env ./lib ./lib/systemd ./lib/systemd/system \
    ./lib/systemd/system/outboxd-relay.service ./lib/systemd/system/outboxd-sse.service ./usr ./usr/bin \
    ./usr/bin/outboxd ./usr/share ./usr/share/bash-completion ./usr/share/bash-completion/completions \
    ./usr/share/bash-completion/completions/outboxd ./usr/share/doc ./usr/share/doc/outboxd \
    ./usr/share/doc/outboxd/examples ./usr/share/doc/outboxd/examples/grafana-dashboard.json \
    ./usr/share/man ./usr/share/man/man1 ./usr/share/man/man1/outboxd.1
  for d in $docs; do echo "./usr/share/doc/outboxd/$d"; done
} | sort >"$WORK/want"
diff "$WORK/want" <(listing "$dest") >"$WORK/diff" || fail "make install PREFIX=/usr: unexpected files: $(cat "$WORK/diff")"
info "PREFIX=/usr installs $(grep -c . "$WORK/want") paths"
"$dest/usr/bin/outboxd" --version | grep -q "^outboxd " || fail "the installed binary does not run"
cmp -s "$dest/usr/share/man/man1/outboxd.1" "$ROOT/docs/outboxd.1" || fail "the installed man page is not docs/outboxd.1"
for u in relay sse; do
  unit="$dest/lib/systemd/system/outboxd-$u.service"
  grep -q "^ExecStart=/usr/bin/outboxd $u" "$unit" || fail "outboxd-$u.service: $(grep ExecStart "$unit")"
  grep -q "^EnvironmentFile=/etc/outboxd/outboxd.env$" "$unit" || fail "outboxd-$u.service: $(grep EnvironmentFile "$unit")"
  grep -q "^Type=notify$" "$unit" || fail "outboxd-$u.service is not Type=notify"
  grep -q "/usr/local" "$unit" && fail "outboxd-$u.service still names /usr/local: $(grep /usr/local "$unit")"
done
[[ $(stat -c %a "$dest/etc/outboxd/outboxd.env") == 600 ]] || fail "outboxd.env is mode $(stat -c %a "$dest/etc/outboxd/outboxd.env")"
mk uninstall DESTDIR="$dest" PREFIX=/usr
[[ -z $(find "$dest" -type f) ]] || fail "make uninstall left files: $(find "$dest" -type f)"

# The default PREFIX=/usr/local: configuration and units under it.
dest="$WORK/local-root"
mk install DESTDIR="$dest"
env_file="$dest/usr/local/etc/outboxd/outboxd.env"
[[ -f "$env_file" && -x "$dest/usr/local/bin/outboxd" && -f "$dest/usr/local/share/man/man1/outboxd.1" ]] ||
  fail "make install (PREFIX=/usr/local): $(listing "$dest" | xargs)"
unit="$dest/usr/local/lib/systemd/system/outboxd-relay.service"
grep -q "^ExecStart=/usr/local/bin/outboxd relay" "$unit" && grep -q "^EnvironmentFile=/usr/local/etc/outboxd/outboxd.env$" "$unit" ||
  fail "units of PREFIX=/usr/local: $(grep -E '^(ExecStart|EnvironmentFile)=' "$unit" | xargs)"
# An edited environment file survives reinstalling and uninstalling.
echo "DATABASE_URL=postgresql:///edited" >>"$env_file"
mk install DESTDIR="$dest"
grep -q "^DATABASE_URL=postgresql:///edited$" "$env_file" || fail "make install overwrote the edited outboxd.env"
mk uninstall DESTDIR="$dest"
[[ $(find "$dest" -type f) == "$env_file" ]] || fail "uninstall should leave only the edited outboxd.env: $(find "$dest" -type f | xargs)"
grep -q "keeping .*outboxd.env: it was edited" "$WORK/make.log" || fail "uninstall did not say it kept outboxd.env"
