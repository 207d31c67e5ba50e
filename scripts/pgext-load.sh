#!/usr/bin/env bash
# Loads the extension outboxd into a database the way CREATE EXTENSION outboxd does
# (its install script, pgext/outboxd--1.0.sql), with the library at a path of the
# caller's choice: a built pgext/outboxd.so is not in the server's directories.
# Used by the tests and benchmarks, which run the server's own binaries.
#   scripts/pgext-load.sh DATABASE_URL [LIBRARY]   (LIBRARY: pgext/outboxd.so)
set -euo pipefail
url=${1:?usage: pgext-load.sh DATABASE_URL [LIBRARY]}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lib=${2:-$root/pgext/outboxd.so}
[[ -f $lib ]] || { echo "pgext-load.sh: $lib is not built (make pgext)" >&2; exit 1; }
sed -e '/^\\echo/d' -e "s|'MODULE_PATHNAME'|:'lib'|" "$root/pgext/outboxd--1.0.sql" |
  psql -X -q -1 -v ON_ERROR_STOP=1 -v lib="$lib" "$url" >/dev/null
