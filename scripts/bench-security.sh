#!/usr/bin/env bash
# What security costs, as ratios measured side by side: the same workloads against a plain
# local cluster and a `--secure` one (authentication and authorization on, signed Raft
# traffic), alternating runs with a fresh cluster each (scripts/cluster.sh), for standalone
# brokers and for 3-replica groups:
# - pipelined produce: `sluice bench produce --in-flight 256`, msgs/s;
# - one in flight: `sluice bench produce --in-flight 1 --no-batching`, p50 send-to-ack.
#
#   scripts/bench-security.sh [--runs N] [--seconds S] [--replicas "1 3"]
#
#   --runs      runs per setting (default 3); --seconds: length of each run (default 10)
# Environment: SLUICE_BIN_DIR (default: cargo build --release).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
RUNS=3
SECS=10
REPLICA_SET="1 3"

die() {
  echo "bench-security.sh: $*" >&2
  exit 1
}

while (($#)); do
  case $1 in
    --runs) RUNS=${2:-}; shift 2 ;;
    --seconds) SECS=${2:-}; shift 2 ;;
    --replicas) REPLICA_SET=${2:-}; shift 2 ;;
    -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a whole number >= 1"
[[ $SECS =~ ^[1-9][0-9]*$ ]] || die "--seconds must be a whole number >= 1"
command -v python3 >/dev/null || die "python3 is needed (JSON and the table)"

# shellcheck source=lib/release-bins.sh
source "$REPO_ROOT/scripts/lib/release-bins.sh"
SLUICE=$SLUICE_BIN_DIR/sluice
DIR=$(mktemp -d "${TMPDIR:-/tmp}/sluice-security.XXXXXX")
RESULTS=$DIR/results.tsv
: >"$RESULTS"
CLUSTER=""

cleanup() {
  if [[ -n $CLUSTER ]]; then
    "$REPO_ROOT/scripts/cluster.sh" down --dir "$CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT

# One run: a fresh cluster ($1: plain|secure, $2: replicas), both workloads, then down.
run() {
  local mode=$1 replicas=$2 n=$3 flags=() ns
  [[ $mode == secure ]] && flags=(--secure)
  CLUSTER=$DIR/cluster-$mode-$replicas-$n
  SLUICE_METRICS=0 "$REPO_ROOT/scripts/cluster.sh" up --dir "$CLUSTER" --replicas "$replicas" \
    "${flags[@]}" >"$CLUSTER.up.log" 2>&1 || { cat "$CLUSTER.up.log" >&2; die "cluster.sh up failed"; }
  ns=$(<"$CLUSTER/nameservers")
  (
    # The secured cluster's admin signs (cluster.sh wrote the environment).
    if [[ -f $CLUSTER/secure/env ]]; then
      # shellcheck disable=SC1091
      source "$CLUSTER/secure/env"
    fi
    "$SLUICE" --nameservers "$ns" bench produce --topic sec --queues 8 --size 1024 \
      --in-flight 256 --duration "$SECS" --json >"$DIR/pipelined.json" 2>/dev/null
    "$SLUICE" --nameservers "$ns" bench produce --topic sec --queues 8 --size 1024 \
      --in-flight 1 --no-batching --duration "$SECS" --json >"$DIR/single.json" 2>/dev/null
  ) || die "a bench run failed ($mode, $replicas replicas)"
  python3 - "$DIR/pipelined.json" "$DIR/single.json" "$mode" "$replicas" >>"$RESULTS" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))["produce"]
s = json.load(open(sys.argv[2]))["produce"]
print("\t".join([sys.argv[3], sys.argv[4], str(p["msgs_per_sec"]), str(s["latency_us"]["p50"]),
                 str(p["failed"] + s["failed"])]))
PY
  "$REPO_ROOT/scripts/cluster.sh" down --dir "$CLUSTER" >/dev/null 2>&1 || true
  rm -rf "$CLUSTER"
  CLUSTER=""
}

for replicas in $REPLICA_SET; do
  for ((i = 1; i <= RUNS; i++)); do
    # Alternating which goes first, so neither gains from the other's phase of the machine.
    if ((i % 2)); then
      run plain "$replicas" "$i"; run secure "$replicas" "$i"
    else
      run secure "$replicas" "$i"; run plain "$replicas" "$i"
    fi
  done
done

python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
k = lambda v: f"{v / 1000:.0f}k"
print("| replicas | setting | pipelined msgs/s (runs) | median | ratio | one-in-flight p50 us (runs) | median | change | failed |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in sorted({x[1] for x in rows}, key=int):
    base_t = base_l = None
    for mode in ("plain", "secure"):
        sel = [x for x in rows if x[0] == mode and x[1] == r]
        t = [float(x[2]) for x in sel]
        l = [float(x[3]) for x in sel]
        mt, ml = statistics.median(t), statistics.median(l)
        if mode == "plain":
            base_t, base_l = mt, ml
        print(f"| {r} | {mode} | {', '.join(map(k, t))} | {k(mt)} | {100 * mt / base_t:.1f} % | "
              f"{', '.join(f'{v:.0f}' for v in l)} | {ml:.0f} | {100 * (ml - base_l) / base_l:+.1f} % | "
              f"{sum(int(x[4]) for x in sel)} |")
PY
