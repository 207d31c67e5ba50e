#!/usr/bin/env bash
# Bad configuration and bad emit input get a one-line error naming the problem, exit
# code 2, and (for configuration) fail before anything connects; nothing is written.
. "$(dirname "$0")/lib.sh"
new_db

expect_2() { # expect_2 PATTERN CMD...: exit code 2 and PATTERN in stderr
  local pat=$1; shift
  local rc=0
  timeout 5 "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
  [[ $rc -eq 2 ]] || fail "'$*' exited $rc, want 2 (stderr: $(cat "$WORK/err"))"
  grep -q -- "$pat" "$WORK/err" || fail "'$*' stderr lacks '$pat': $(cat "$WORK/err")"
  [[ $(wc -l <"$WORK/err") -le 2 ]] || fail "'$*' error is not short: $(cat "$WORK/err")"
}

expect_2 "batch-size" "$OUTBOXD" relay --batch-size 0
expect_2 "batch-size" "$OUTBOXD" relay --batch-size 10abc
expect_2 "poll-interval-ms" "$OUTBOXD" relay --poll-interval-ms -1
expect_2 "stats-interval" "$OUTBOXD" relay --stats-interval -5s
expect_2 "unknown option" "$OUTBOXD" relay --no-such-flag
expect_2 "unknown command" "$OUTBOXD" frobnicate
expect_2 "REDIS_URL" env REDIS_URL=http://nope "$OUTBOXD" relay
expect_2 "DATABASE_URL" env DATABASE_URL='postgresql://h:port/x' "$OUTBOXD" relay
for c in relay sse status; do
  expect_2 "--redis-cluster and --redis-sentinel exclude each other" "$OUTBOXD" "$c" --redis-cluster 127.0.0.1:7000 \
    --redis-sentinel 127.0.0.1:26379 --redis-sentinel-master m
  expect_2 "redis-cluster" env OUTBOXD_REDIS_CLUSTER=127.0.0.1: "$OUTBOXD" "$c"
  expect_2 "redis-pubsub" "$OUTBOXD" "$c" --redis-pubsub broadcast
done
# A bad value must be reported before any connection: pointing the database at a
# black-hole address would otherwise make this take the connect timeout.
t0=$(date +%s%N)
expect_2 "max-attempts" env DATABASE_URL=postgresql://192.0.2.1/x "$OUTBOXD" relay --max-attempts 0
(( ($(date +%s%N) - t0) / 1000000 < 500 )) || fail "bad config took too long: it connected first"

before=$(q "SELECT count(*) FROM run_outbox")
expect_2 "must not be empty" "$OUTBOXD" emit '' '{"a":1}'
expect_2 "invalid input" "$OUTBOXD" emit run-1 '{"a":'
expect_2 "invalid input" "$OUTBOXD" emit run-1 'not json'
expect_2 "expected 2 arguments" "$OUTBOXD" emit run-1
[[ $(q "SELECT count(*) FROM run_outbox") == "$before" ]] || fail "a refused emit wrote a row"

# --help tells the truth for every command and exits 0.
for c in migrate relay sse emit status retry skip; do
  "$OUTBOXD" "$c" --help >"$WORK/help" || fail "$c --help exited non-zero"
  grep -q "usage: outboxd $c" "$WORK/help" || fail "$c --help has no usage line"
done
grep -q -- "--poll-interval-ms" <("$OUTBOXD" relay --help) || fail "relay --help lacks --poll-interval-ms"
grep -q "DATABASE_URL" <("$OUTBOXD" relay --help) || fail "relay --help does not name DATABASE_URL"

# A good emit prints the id and seq the database assigned.
out=$("$OUTBOXD" emit run-1 '{"a":1}')
[[ "$out" =~ ^\{\"id\":[0-9]+,\"seq\":1\}$ ]] || fail "emit printed '$out'"

# docs/CONFIGURATION.md is generated from the settings table and must not drift.
diff <("$OUTBOXD" settings) "$ROOT/docs/CONFIGURATION.md" >"$WORK/drift" ||
  fail "docs/CONFIGURATION.md differs from 'outboxd settings' (run make docs): $(head -5 "$WORK/drift")"
