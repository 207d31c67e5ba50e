#!/usr/bin/env bash
# Starts and stops a throw-away PostgreSQL and Redis for tests, benchmarks and the demo.
#   scripts/stack.sh start DIR   -> servers on free loopback ports; writes DIR/env
#   scripts/stack.sh stop DIR    -> stops both (safe to call twice)
# DIR/env exports DATABASE_URL, REDIS_URL, PGPORT, REDIS_PORT, PGDATA, REDIS_PID.
# PostgreSQL refuses to run as root, so as root it runs as the 'postgres' user.
# PG_HUGE_PAGES (on|off|try; unset: PostgreSQL's default, try) sets PostgreSQL's
# huge_pages: with on, the start fails unless the machine has huge pages reserved
# (vm.nr_hugepages); the benchmarks use it (docs/BENCHMARKS.md, "Huge pages").
set -euo pipefail

cmd=${1:?usage: stack.sh start|stop DIR}
dir=${2:?usage: stack.sh start|stop DIR}
pgbin=$(pg_config --bindir 2>/dev/null || true)
[[ -x "$pgbin/initdb" ]] || pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

. "$(dirname "${BASH_SOURCE[0]}")/ports.sh"

start() {
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local pgdata="$dir/pg" pgport redisport
  case ${PG_HUGE_PAGES:-try} in
    on | off | try) ;;
    *) echo "stack.sh: PG_HUGE_PAGES must be on, off or try, not \"$PG_HUGE_PAGES\"" >&2; exit 2 ;;
  esac
  pgport=$(free_port)
  redisport=$(free_port)
  while [[ "$redisport" == "$pgport" ]]; do redisport=$(free_port); done

  mkdir -p "$pgdata"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$dir" "$pgdata"
  as_pg "$pgbin/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    as_pg "$pgbin/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1
  # fsync off: a test server loses nothing we care about in a crash of the machine,
  # and commits stay cheap enough for the load tests on a small VM.
  as_pg "$pgbin/pg_ctl" -D "$pgdata" -l "$dir/pg.log" -w -t 30 \
    -o "-p $pgport -c listen_addresses=127.0.0.1 -k $pgdata -c fsync=off -c max_connections=300 -c max_prepared_transactions=16 -c huge_pages=${PG_HUGE_PAGES:-try}" start >/dev/null ||
    { echo "stack.sh: PostgreSQL did not start: $(tail -3 "$dir/pg.log")" >&2; exit 1; }
  as_pg "$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U postgres outboxd

  redis-server --port "$redisport" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  for _ in $(seq 1 50); do
    redis-cli -p "$redisport" ping >/dev/null 2>&1 && break
    sleep 0.1
  done

  cat >"$dir/env" <<EOT
export DATABASE_URL=postgresql://postgres@127.0.0.1:$pgport/outboxd
export REDIS_URL=redis://127.0.0.1:$redisport/0
export PGPORT=$pgport
export REDIS_PORT=$redisport
export PGDATA=$pgdata
export PGBIN=$pgbin
export REDIS_PID=$(cat "$dir/redis.pid")
EOT
}

stop() {
  [[ -d "$dir" ]] || return 0
  if [[ -f "$dir/redis.pid" ]]; then
    local pid
    pid=$(cat "$dir/redis.pid")
    kill -CONT "$pid" 2>/dev/null || true
    kill -9 "$pid" 2>/dev/null || true
  fi
  if [[ -f "$dir/pg/postmaster.pid" ]]; then
    as_pg "$pgbin/pg_ctl" -D "$dir/pg" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: stack.sh start|stop DIR" >&2; exit 2 ;;
esac
