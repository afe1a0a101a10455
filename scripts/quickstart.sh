#!/usr/bin/env bash
# Builds Sluice, starts a local cluster (nameserver + broker on free loopback ports) and runs a
# real produce/consume round on it. The cluster keeps running: stop it with
#   scripts/cluster.sh down
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${SLUICE_CLUSTER_DIR:-.cluster}
scripts/cluster.sh up --dir "$dir"
bin=${SLUICE_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
SLUICE_NAMESERVERS=$(cat "$dir/nameservers")
export SLUICE_NAMESERVERS
sluice() { "$bin/sluice" "$@"; }

sluice topic create quickstart --queues 4
echo "== producing 1000 orders"
seq 1 1000 | sed 's/^/order-/' | sluice produce quickstart --tag demo | tail -n 3
echo "== consuming them in group quickstart-readers"
sluice consume quickstart --group quickstart-readers --from earliest --max 1000 --idle-timeout 10 | tail -n 3
echo "== group lag"
sluice group lag quickstart-readers
echo "== cluster"
sluice cluster status
echo "The cluster is still running (SLUICE_NAMESERVERS=$SLUICE_NAMESERVERS); stop it with: scripts/cluster.sh down --dir $dir"
