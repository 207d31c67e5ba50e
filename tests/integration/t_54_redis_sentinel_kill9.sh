#!/usr/bin/env bash
# Sentinel: kill -9 of the primary under 1,000 events/s over 50 runs (tests/integration/
# sentinel.sh): nothing lost or out of order at the Redis subscriber and the SSE
# clients, nothing repeated at the SSE clients; failover time and duplicates reported.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/sentinel.sh"
sentinel_scenario kill9
