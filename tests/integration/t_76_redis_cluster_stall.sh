#!/usr/bin/env bash
# Redis Cluster: one primary SIGSTOPped for 1.5 s (less than cluster-node-timeout, so
# no failover) under 1,000 events/s over 500 runs (tests/integration/cluster.sh): the
# other shards' runs are not held up beyond the first timeout (the stalled node is
# suspect, its runs parked); 0 lost, 0 duplicated, 0 out of order at the browser and
# in Redis.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cluster.sh"
cluster_scenario stall
