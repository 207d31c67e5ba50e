#!/usr/bin/env bash
# `make run`: a local PostgreSQL and Redis (in .run/), the schema, the relay, the SSE
# gateway with its viewer page, and a producer writing events to three demo runs; a
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
"$bin/outboxd" sse --listen "127.0.0.1:$port" --stats-interval 60s 2>"$dir/sse.log" &
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

outboxd demo is running. Watch a run in your browser:

    http://127.0.0.1:$port/runs/demo-1

  raw stream: curl -N http://127.0.0.1:$port/runs/demo-1/events
  DATABASE_URL=$DATABASE_URL
  REDIS_URL=$REDIS_URL
  logs:      $dir/relay.log $dir/sse.log
  try:       $bin/outboxd status      (with the two variables above exported: . $dir/env)
Events published to Redis (run:*) follow; Ctrl-C stops the demo.

EOT
redis-cli -p "$REDIS_PORT" --raw psubscribe 'run:*' | grep --line-buffered '^{' &
pids+=($!)
if [[ -n "${DEMO_SECONDS:-}" ]]; then sleep "$DEMO_SECONDS"; else wait; fi
