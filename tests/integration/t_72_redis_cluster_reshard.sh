#!/usr/bin/env bash
# Redis Cluster: the slot of a busy run migrated to another primary under 1,000
# events/s over 500 runs (SETSLOT MIGRATING/IMPORTING, MIGRATE key by key, SETSLOT
# NODE; tests/integration/cluster.sh): the relay follows ASK and MOVED, the gateways
# resubscribe after the server ends the subscription; 0 lost, 0 duplicated, 0 out of
# order at the browser.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cluster.sh"
cluster_scenario reshard
