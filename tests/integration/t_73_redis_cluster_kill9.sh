#!/usr/bin/env bash
# Redis Cluster: kill -9 of the primary of a busy run's shard under 1,000 events/s over
# 500 runs (tests/integration/cluster.sh): while the shard has no primary only its runs
# wait (the others keep flowing); once its replica is promoted everything goes out;
# 0 lost, 0 duplicated, 0 out of order at the browser.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cluster.sh"
cluster_scenario kill9
