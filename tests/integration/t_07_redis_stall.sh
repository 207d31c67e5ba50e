#!/usr/bin/env bash
# Redis stalled (SIGSTOP keeps its sockets open) for 3 s under load: command timeouts
# notice, nothing is lost or repeated. Then, with Redis stalled again, SIGTERM still
# stops the relay promptly with exit 0.
. "$(dirname "$0")/lib.sh"
new_db
rpid=$(cat "$STACK_DIR/redis.pid")
start_relay relay --redis-timeout 500ms
start_sub sub --prefix stall --idle-ms 8000 --max-seconds 90 --check
start_load --rate 300 --runs 20 --conns 4 --seconds 7 --prefix stall
sleep 2
kill -STOP "$rpid"; info "redis stopped"
sleep 3
kill -CONT "$rpid"; info "redis continued"
wait "$LOAD_PID"
finish_sub sub "$SUB_PID"
wait_drained 10
grep -q "failures=[1-9]" "$WORK/relay.log" || info "note: no publish failure was counted during the stall"

"$OUTBOXD" emit stall-late '{}' >/dev/null
kill -STOP "$rpid"
sleep 0.2
"$OUTBOXD" emit stall-late '{}' >/dev/null
sleep 0.5
stop_relay "$RELAY_PID" 5
kill -CONT "$rpid"
