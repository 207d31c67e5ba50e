#!/usr/bin/env bash
# Starts and stops a throw-away Redis Cluster on loopback, for the tests and benchmarks.
#   scripts/cluster.sh start DIR [--primaries N] [--replicas R] [--tls PKI] [redis-server flags...]
#   scripts/cluster.sh stop DIR     -> kills every node of DIR (safe to call twice)
# start: N primaries (3) with R replicas each (0), on free ports below 30000 whose
# cluster bus port (+10000) is free too; `redis-cli --cluster create`; waits until every
# node says cluster_state:ok and every replica is in sync. A node that does not start is
# tried again on fresh ports (up to three times: a port found free can be taken before
# the node binds it). With --tls PKI the nodes speak only TLS (clients, cluster bus,
# replication) with PKI/server.crt, PKI/server.key and PKI/ca.crt. On failure it stops
# what it started and says why on stderr. Node I keeps its files in DIR/nodeI (pid file
# DIR/nodeI.pid, log DIR/nodeI.redis.out). DIR/env sets (bash) CLUSTER_PORTS (primaries
# first, as --cluster create assigns them), CLUSTER_PIDS (in the same order) and
# CLUSTER_NODES (127.0.0.1:PORT,... of all nodes).
set -Eeuo pipefail

cmd=${1:?usage: cluster.sh start|stop DIR [options]}
dir=${2:?usage: cluster.sh start|stop DIR [options]}
shift 2

. "$(dirname "${BASH_SOURCE[0]}")/ports.sh"
say() { echo "cluster.sh: $*" >&2; }

stop() {
  [[ -d "$dir" ]] || return 0
  local f pid
  for f in "$dir"/node*.pid; do
    [[ -s "$f" ]] || continue
    pid=$(cat "$f")
    kill -CONT "$pid" 2>/dev/null || true
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

start() {
  local primaries=3 replicas=0 pki=""
  while (($#)); do
    case $1 in
      --primaries) primaries=$2; shift 2 ;;
      --replicas) replicas=$2; shift 2 ;;
      --tls) pki=$2; shift 2 ;;
      *) break ;;
    esac
  done
  local -a flags=("$@") cli=(redis-cli)
  [[ -n $pki ]] && cli=(redis-cli --tls --cacert "$pki/ca.crt")
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # Whatever goes wrong from here on (an error, a signal), no node is left running.
  trap 'stop' ERR
  trap 'stop; exit 130' INT TERM
  local n=$((primaries * (1 + replicas))) i try p pid ready
  local -a ports=() pids=() listen
  for ((i = 1; i <= n; i++)); do
    ready=0
    for try in 1 2 3; do
      p=$((10000 + RANDOM % 20000))
      while ! port_free "$p" || ! port_free $((p + 10000)); do p=$((10000 + RANDOM % 20000)); done
      rm -rf "$dir/node$i" "$dir/node$i.pid"
      mkdir -p "$dir/node$i"
      listen=(--port "$p")
      [[ -n $pki ]] && listen=(--port 0 --tls-port "$p" --tls-cert-file "$pki/server.crt"
        --tls-key-file "$pki/server.key" --tls-ca-cert-file "$pki/ca.crt" --tls-auth-clients no
        --tls-cluster yes --tls-replication yes)
      redis-server --bind 127.0.0.1 "${listen[@]}" --save '' --appendonly no --daemonize yes --dir "$dir/node$i" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 --repl-diskless-sync-delay 0 \
        --pidfile "$dir/node$i.pid" --logfile "$dir/node$i.redis.out" "${flags[@]}" || {
        say "redis-server for node $i failed"
        stop
        return 1
      }
      for _ in $(seq 1 100); do [[ -s "$dir/node$i.pid" ]] && break; sleep 0.02; done
      pid=$(cat "$dir/node$i.pid" 2>/dev/null || true)
      # Up to 15 s: a loaded machine (other jobs on the same cores) can be slow.
      for _ in $(seq 1 300); do
        grep -q "Ready to accept connections" "$dir/node$i.redis.out" 2>/dev/null && break
        [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null && break
        sleep 0.05
      done
      if grep -q "Ready to accept connections" "$dir/node$i.redis.out" 2>/dev/null; then
        ready=1
        break
      fi
      say "node $i did not start on port $p (try $try): $(tail -2 "$dir/node$i.redis.out" 2>/dev/null | tr '\n' ' ')"
      [[ -z "$pid" ]] || kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/node$i.pid"
    done
    if ((!ready)); then
      say "node $i did not start: $(tail -3 "$dir/node$i.redis.out" 2>/dev/null | tr '\n' ' ')"
      stop
      return 1
    fi
    ports+=("$p")
    pids+=("$pid")
  done
  # shellcheck disable=SC2046
  "${cli[@]}" --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas "$replicas" --cluster-yes \
    >"$dir/create.out" 2>&1 || {
    say "cluster create: $(tail -5 "$dir/create.out")"
    stop
    return 1
  }
  local deadline=$((SECONDS + 30))
  for p in "${ports[@]}"; do
    until "${cli[@]}" -p "$p" cluster info 2>/dev/null | grep -q "cluster_state:ok"; do
      ((SECONDS < deadline)) || { say "node $p not ok within 30 s"; stop; return 1; }
      sleep 0.1
    done
  done
  # Replicas in sync, or a failover of their primary could not happen (a replica that
  # never synced does not stand for election).
  for p in "${ports[@]}"; do
    "${cli[@]}" -p "$p" role | head -1 | grep -q slave || continue
    until "${cli[@]}" -p "$p" info replication | grep -q "master_link_status:up"; do
      ((SECONDS < deadline)) || { say "replica $p not in sync within 30 s"; stop; return 1; }
      sleep 0.1
    done
  done
  {
    echo "CLUSTER_PORTS=(${ports[*]})"
    echo "CLUSTER_PIDS=(${pids[*]})"
    echo "CLUSTER_NODES=$(printf '127.0.0.1:%s\n' "${ports[@]}" | paste -sd,)"
  } >"$dir/env"
  trap - ERR INT TERM
}

case $cmd in
  start) start "$@" ;;
  stop) stop ;;
  *) echo "usage: cluster.sh start|stop DIR [options]" >&2; exit 2 ;;
esac
