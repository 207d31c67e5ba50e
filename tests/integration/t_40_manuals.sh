#!/usr/bin/env bash
# The man page and bash completion are generated from the settings and command tables
# and must not drift from the checked-in copies; the page renders without warnings
# and names every command, flag and environment variable that --help names, the exit
# codes and the signals; completion offers what each command takes. --version prints
# the version and commit, also when the tree it was built from has no .git.
. "$(dirname "$0")/lib.sh"

diff <("$OUTBOXD" settings --format man) "$ROOT/docs/outboxd.1" >"$WORK/drift" ||
  fail "docs/outboxd.1 differs from 'outboxd settings --format man' (run make docs): $(head -5 "$WORK/drift")"
diff <("$OUTBOXD" settings --format bash-completion) "$ROOT/contrib/bash-completion/outboxd" >"$WORK/drift" ||
  fail "contrib/bash-completion/outboxd differs from the generator (run make docs): $(head -5 "$WORK/drift")"
diff <("$OUTBOXD" settings --format markdown) <("$OUTBOXD" settings) >/dev/null ||
  fail "settings --format markdown is not what settings prints"
rc=0; "$OUTBOXD" settings --format roff >/dev/null 2>"$WORK/err" || rc=$?
[[ $rc == 2 ]] && grep -q "unknown format 'roff'" "$WORK/err" || fail "an unknown format: exit $rc, $(cat "$WORK/err")"

# groff and man-db report any markup problem on stderr (lintian runs the same).
LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$ROOT/docs/outboxd.1" >/dev/null 2>"$WORK/warn"
[[ ! -s "$WORK/warn" ]] || fail "the man page has markup warnings: $(head -5 "$WORK/warn")"
LC_ALL=C.UTF-8 MANWIDTH=200 man -l "$ROOT/docs/outboxd.1" 2>/dev/null | col -b >"$WORK/page"
# in_section NAME REGEX: a line of that section of the rendered page matches (grep
# reads all its input: a grep -q cutting the pipe short would fail it under pipefail).
in_section() { awk -v s="$1" '/^[A-Z][A-Z ]*$/ {on = ($0 == s)} on' "$WORK/page" | grep -E "$2" >/dev/null; }

# What --help says (printed by its own code) is what the page says.
commands=$("$OUTBOXD" --help | awk '/^commands:/ {on = 1; next} on && /^  [a-z]/ {print $1}')
[[ $(wc -w <<<"$commands") -ge 8 ]] || fail "could not read the commands from --help: $commands"
for c in $commands settings; do
  in_section COMMANDS "^ {7}$c( |$)" || fail "COMMANDS does not describe '$c'"
  in_section SYNOPSIS "outboxd $c" || fail "SYNOPSIS lacks 'outboxd $c'"
done
nflags=0
for c in $commands; do
  for f in $("$OUTBOXD" "$c" --help | grep -oE '^  --[a-z0-9-]+' | sort -u); do
    in_section OPTIONS "^ {7}$f( |$)" || fail "OPTIONS does not describe $f (from '$c --help')"
    nflags=$((nflags + 1))
  done
  for e in $("$OUTBOXD" "$c" --help | grep -oE 'env [A-Z_]+' | cut -d' ' -f2 | sort -u); do
    in_section ENVIRONMENT "^ {7}$e$" || fail "ENVIRONMENT lacks $e (from '$c --help')"
  done
done
info "page checked against --help: $(wc -w <<<"$commands") commands, $nflags command flags"
in_section OPTIONS '^ {7}--version' || fail "OPTIONS does not describe --version"
for code in 0 1 2; do in_section "EXIT STATUS" "^ {7}$code " || fail "EXIT STATUS lacks $code"; done
for sig in SIGTERM SIGINT SIGPIPE; do in_section SIGNALS "$sig" || fail "SIGNALS lacks $sig"; done

# Completion, as bash asks for it: COMP_WORDS split at '=' as COMP_WORDBREAKS does.
complete_words() { # complete_words WORD... (the last one is being completed)
  bash -c '. "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
           _outboxd; printf "%s\n" "${COMPREPLY[@]}"' _ "$ROOT/contrib/bash-completion/outboxd" "$@" | sort | xargs
}
expect_completion() { # expect_completion "WANTED" WORD...
  local want=$1 got; shift
  got=$(complete_words "$@")
  [[ "$got" == "$want" ]] || fail "completing '$*': got '$got', want '$want'"
}
expect_completion "relay retry revoke" outboxd re
expect_completion "settings skip sse status" outboxd s
expect_completion "--batch-size" outboxd relay --bat
expect_completion "" outboxd sse --no-li # relay-only flag
expect_completion "--no-listen" outboxd relay --no-li
expect_completion "debug error info warn" outboxd relay --log-level ""
expect_completion "json text" outboxd status --log-format = ""
expect_completion "debug" outboxd migrate --log-level = d
expect_completion "" outboxd relay --batch-size ""
expect_completion "false true" outboxd relay --no-listen = ""
expect_completion "bash-completion" outboxd settings --format b
[[ $(complete_words outboxd relay "" | wc -w) == $("$OUTBOXD" relay --help | grep -cE '^  --') ]] ||
  fail "completion offers $(complete_words outboxd relay "" | wc -w) relay flags, --help lists $("$OUTBOXD" relay --help | grep -cE '^  --')"

# --version: the version and commit of this tree, from git when it is a clone.
read -r want_version want_commit < <(sh "$ROOT/scripts/version.sh")
out=$("$OUTBOXD" --version)
[[ "$out" == "outboxd $want_version (commit $want_commit)" ]] ||
  fail "--version printed '$out', want 'outboxd $want_version (commit $want_commit)'"
[[ "$want_version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([+][0-9a-z.]+)?$ ]] || fail "version '$want_version' is not X.Y.Z[+...]"
# Without .git: the VERSION file of a release archive, else CHANGELOG.md's newest release.
copy="$WORK/no-git"
mkdir -p "$copy/scripts"
cp "$ROOT/scripts/version.sh" "$copy/scripts/"
cp "$ROOT/CHANGELOG.md" "$copy/"
released=$(sed -n 's/^## \[\([0-9][0-9.]*\)\].*/\1/p' "$ROOT/CHANGELOG.md" | head -1)
printf '$Format:%%(describe) %%H$\n' >"$copy/VERSION"
[[ $(sh "$copy/scripts/version.sh") == "$released unknown" ]] ||
  fail "without git or a filled-in VERSION: '$(sh "$copy/scripts/version.sh")', want '$released unknown'"
echo "v1.2.3-4-gabcdef1 abcdef1234567890abcdef1234567890abcdef12" >"$copy/VERSION"
[[ $(sh "$copy/scripts/version.sh") == "1.2.3+4.gabcdef1 abcdef123456" ]] ||
  fail "from an archive's VERSION: '$(sh "$copy/scripts/version.sh")'"
echo " abcdef1234567890abcdef1234567890abcdef12" >"$copy/VERSION" # archived where no tag was reachable
[[ $(sh "$copy/scripts/version.sh") == "$released+gabcdef1 abcdef123456" ]] ||
  fail "from an archive's VERSION without a tag: '$(sh "$copy/scripts/version.sh")'"
if git -C "$ROOT" rev-parse -q --verify HEAD >/dev/null 2>&1; then
  git -C "$ROOT" archive HEAD VERSION scripts/version.sh CHANGELOG.md | tar -x -C "$WORK" -f - --one-top-level=archive
  read -r av ac < <(sh "$WORK/archive/scripts/version.sh")
  [[ $ac == $(git -C "$ROOT" rev-parse --short=12 HEAD) && $av == "${want_version%[+.]dirty}" ]] ||
    fail "git archive of HEAD says '$av $ac', the clone '${want_version%[+.]dirty} $(git -C "$ROOT" rev-parse --short=12 HEAD)'"
fi
