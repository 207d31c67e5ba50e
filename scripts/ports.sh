# shellcheck shell=bash
# Sourced by the scripts, the tests and the benches: free loopback ports for the
# servers they start.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: a free port below Linux's ephemeral range (32768+), so that no outgoing
# connection's local port can hold the one a server is about to bind. (Free when
# asked: a caller that binds it later retries on "Address already in use".)
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((10000 + RANDOM % 22000))
    port_free "$p" && { echo "$p"; return 0; }
  done
  echo "no free port found" >&2
  return 1
}
