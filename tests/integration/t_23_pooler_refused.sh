#!/usr/bin/env bash
# Leader election (a session advisory lock) and LISTEN need a session: through
# PgBouncer in transaction pooling the relay must refuse with a clear error (exit 1)
# instead of running with a lock that any relay could hold. Through session pooling
# it works.
. "$(dirname "$0")/lib.sh"
command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || fail "pgbouncer is not installed (scripts/install-deps.sh installs it)"
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
new_db
db=${DATABASE_URL##*/}
bouncer() { # bouncer MODE: PgBouncer in front of the test database; sets BOUNCER_URL
  local mode=$1 port dir="$WORK/pgb-$1"
  port=$(pick_port)
  chmod 755 "$WORK" # PgBouncer runs as postgres and must reach its files
  mkdir -p "$dir"
  cat >"$dir/pgbouncer.ini" <<EOT
[databases]
$db = host=127.0.0.1 port=$PGPORT dbname=$db user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
auth_type = trust
auth_file = $dir/users.txt
pool_mode = $mode
default_pool_size = 4
unix_socket_dir =
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOT
  echo '"postgres" ""' >"$dir/users.txt"
  if [[ $(id -u) -eq 0 ]]; then chown -R postgres "$dir"; runuser -u postgres -- "$PGBOUNCER" -d "$dir/pgbouncer.ini"
  else "$PGBOUNCER" -d "$dir/pgbouncer.ini"; fi
  for _ in $(seq 1 100); do [[ -f "$dir/pgbouncer.pid" ]] && break; sleep 0.05; done
  PIDS+=("$(cat "$dir/pgbouncer.pid")")
  BOUNCER_URL="postgresql://postgres@127.0.0.1:$port/$db"
  for _ in $(seq 1 100); do psql -X -qtA "$BOUNCER_URL" -c 'SELECT 1' >/dev/null 2>&1 && return 0; sleep 0.05; done
  fail "pgbouncer ($mode) did not come up: $(tail -3 "$dir/pgbouncer.log")"
}

bouncer transaction
rc=0
DATABASE_URL=$BOUNCER_URL timeout 20 "$OUTBOXD" relay >"$WORK/tx.log" 2>&1 || rc=$?
[[ $rc == 1 ]] || fail "relay through transaction pooling exited $rc, want 1: $(tail -3 "$WORK/tx.log")"
grep -q "transaction-pooling proxy" "$WORK/tx.log" || fail "no clear error: $(tail -3 "$WORK/tx.log")"
info "refused: $(grep -o 'this connection does not own.*proxy' "$WORK/tx.log" | head -1)"

bouncer session
start_sub sub --prefix pgb --expect 1 --max-seconds 20 --check
DATABASE_URL=$BOUNCER_URL start_relay session
"$OUTBOXD" emit pgb-1 '{"through":"session pooling"}' >/dev/null
wait_sub sub "$SUB_PID"
stop_relay "$RELAY_PID" 5
