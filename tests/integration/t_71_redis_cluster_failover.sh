#!/usr/bin/env bash
# Redis Cluster: CLUSTER FAILOVER of the shard of a busy run under 1,000 events/s over
# 500 runs (tests/integration/cluster.sh), watched through two gateways: 0 lost, 0
# duplicated, 0 out of order at the browser; the relay and the gateways move to the
# promoted replica by themselves.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cluster.sh"
cluster_scenario failover
