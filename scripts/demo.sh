#!/usr/bin/env bash
# `make run`: a local PostgreSQL and Redis (in .run/), the schema, the relay, the SSE
# gateway with its viewer page and authorization on (a JWKS generated here, and a demo
# token for the demo runs), and a producer writing events to three demo runs; a
# subscriber prints what Redis carries.
# Runs until Ctrl-C (or for DEMO_SECONDS), then stops everything it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/build"
dir="$root/.run"
pids=()
stop() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  pkill -TERM -P $$ 2>/dev/null || true
  sleep 0.5
  bash "$root/scripts/stack.sh" stop "$dir"
  echo "demo stopped"
}
trap stop EXIT
trap 'exit 0' INT TERM

bash "$root/scripts/stack.sh" stop "$dir" 2>/dev/null || true
rm -rf "$dir"
mkdir -p "$dir"
chmod 755 "$dir"
bash "$root/scripts/stack.sh" start "$dir"
. "$dir/env"
"$bin/outboxd" migrate
"$bin/outboxd" relay --stats-interval 10s 2>"$dir/relay.log" &
pids+=($!)

port=${DEMO_PORT:-8080}
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
# Authorization: an HMAC key in a JWKS file, and a token (HS256, made here with the
# openssl command line) that may read the demo runs for an hour.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
key_hex=$(openssl rand -hex 32)
secret=$(printf '%b' "$(printf '%s' "$key_hex" | sed 's/../\\x&/g')" | b64url)
printf '{"keys":[{"kty":"oct","kid":"demo","alg":"HS256","k":"%s"}]}\n' "$secret" >"$dir/jwks.json"
header=$(printf '{"alg":"HS256","kid":"demo","typ":"JWT"}' | b64url)
payload=$(printf '{"sub":"demo","aud":"outboxd-demo","exp":%d,"runs":["demo-*"]}' $(($(date +%s) + 3600)) | b64url)
signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key_hex" -binary | b64url)
token="$header.$payload.$signature"
"$bin/outboxd" sse --listen "127.0.0.1:$port" --stats-interval 60s --auth jwt --auth-jwks "$dir/jwks.json" \
  --auth-audience outboxd-demo --auth-query-token 2>"$dir/sse.log" &
pids+=($!)

# A producer: a few events per second across three runs, like a job orchestrator.
( i=0
  while true; do
    i=$((i + 1))
    run="demo-$((i % 3 + 1))"
    "$bin/outboxd" emit "$run" "{\"step\":$i,\"message\":\"step $i of $run\",\"at\":\"$(date -u +%H:%M:%S.%3N)\"}" >/dev/null
    sleep 0.3
  done ) &
pids+=($!)

cat <<EOT

outboxd demo is running, with authorization on (a JWKS made for this demo in $dir/jwks.json).
Watch a run in your browser (the page takes its token from the URL fragment):

    http://127.0.0.1:$port/runs/demo-1#token=$token

  raw stream: curl -N -H "Authorization: Bearer $token" http://127.0.0.1:$port/runs/demo-1/events
  without the token the gateway answers 401: curl -i http://127.0.0.1:$port/runs/demo-1/events
  DATABASE_URL=$DATABASE_URL
  REDIS_URL=$REDIS_URL
  logs:      $dir/relay.log $dir/sse.log
  try:       $bin/outboxd status      (with the two variables above exported: . $dir/env)
Events published to Redis (run:*) follow; Ctrl-C stops the demo.

EOT
redis-cli -p "$REDIS_PORT" --raw psubscribe 'run:*' | grep --line-buffered '^{' &
pids+=($!)
if [[ -n "${DEMO_SECONDS:-}" ]]; then sleep "$DEMO_SECONDS"; else wait; fi
