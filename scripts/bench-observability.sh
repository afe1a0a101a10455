#!/usr/bin/env bash
# What observability costs, as ratios measured side by side:
# - metrics: pipelined produce against a broker with `metrics_listen` on and one with it off,
#   alternating runs (a fresh local cluster each run, scripts/cluster.sh), while a scraper
#   reads /metrics every second as Prometheus would;
# - message trace: `sluice bench modes --trace` on one cluster (pipelined produce of the
#   client's default producer with trace on and off, alternating rounds).
#
#   scripts/bench-observability.sh [--runs N] [--seconds S] [--dir DIR]
#
#   --runs     runs per metrics setting, and rounds of the trace comparison (default 3)
#   --seconds  length of each metrics run (default 10)
# Environment: SLUICE_BIN_DIR (default: cargo build --release).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
RUNS=3
SECS=10
DIR=""

die() {
  echo "bench-observability.sh: $*" >&2
  exit 1
}

while (($#)); do
  case $1 in
    --runs) RUNS=${2:-}; shift 2 ;;
    --seconds) SECS=${2:-}; shift 2 ;;
    --dir) DIR=${2:-}; shift 2 ;;
    -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a whole number >= 1"
[[ $SECS =~ ^[1-9][0-9]*$ ]] || die "--seconds must be a whole number >= 1"
command -v python3 >/dev/null || die "python3 is needed (JSON and the table)"
command -v curl >/dev/null || die "curl is needed (the scraper)"

# shellcheck source=lib/release-bins.sh
source "$REPO_ROOT/scripts/lib/release-bins.sh"
SLUICE=$SLUICE_BIN_DIR/sluice
if [[ -z $DIR ]]; then
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/sluice-observability.XXXXXX")
fi
mkdir -p "$DIR"
RESULTS=$DIR/results.tsv
: >"$RESULTS"
CLUSTER=""
SCRAPER=""

cleanup() {
  if [[ -n $SCRAPER ]]; then
    kill "$SCRAPER" 2>/dev/null || true
  fi
  if [[ -n $CLUSTER ]]; then
    "$REPO_ROOT/scripts/cluster.sh" down --dir "$CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT

up() {
  CLUSTER=$DIR/cluster-$1
  "$REPO_ROOT/scripts/cluster.sh" up --dir "$CLUSTER" >"$CLUSTER.up.log" 2>&1 ||
    { cat "$CLUSTER.up.log" >&2; die "cluster.sh up failed"; }
}

down() {
  "$REPO_ROOT/scripts/cluster.sh" down --dir "$CLUSTER" >/dev/null 2>&1 || true
  rm -rf "$CLUSTER"
  CLUSTER=""
}

metrics_run() {
  local mode=$1 run=$2 ns port
  SLUICE_METRICS=$([[ $mode == on ]] && echo 1 || echo 0) up "metrics-$mode-$run"
  ns=$(<"$CLUSTER/nameservers")
  if [[ $mode == on ]]; then
    port=$(<"$CLUSTER/nodes/broker-a-1/metrics")
    (while true; do curl -s "http://$port/metrics" >/dev/null; sleep 1; done) &
    SCRAPER=$!
  fi
  "$SLUICE" --nameservers "$ns" bench produce --topic obs --queues 8 --size 1024 --in-flight 256 \
    --duration "$SECS" --json >"$DIR/produce.json" 2>/dev/null || die "the producer failed"
  if [[ -n $SCRAPER ]]; then
    kill "$SCRAPER" 2>/dev/null || true
    wait "$SCRAPER" 2>/dev/null || true
    SCRAPER=""
  fi
  python3 -c 'import json, sys; print(sys.argv[2] + "\t" + str(json.load(open(sys.argv[1]))["produce"]["msgs_per_sec"]))' \
    "$DIR/produce.json" "$mode" >>"$RESULTS"
  down
}

for ((i = 1; i <= RUNS; i++)); do
  # Alternating which goes first, so neither gains from the other's phase of the machine.
  if ((i % 2)); then
    metrics_run on "$i"; metrics_run off "$i"
  else
    metrics_run off "$i"; metrics_run on "$i"
  fi
done

up trace
"$SLUICE" --nameservers "$(<"$CLUSTER/nameservers")" bench modes --topic obs-trace --trace \
  --rounds "$RUNS" --count 200000 --json >"$DIR/trace.json" 2>/dev/null || die "bench modes failed"
down

python3 - "$RESULTS" "$DIR/trace.json" <<'PY'
import json, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
on = [float(r[1]) for r in rows if r[0] == "on"]
off = [float(r[1]) for r in rows if r[0] == "off"]
k = lambda v: f"{v / 1000:.0f}k"
print("| setting | pipelined produce msgs/s (runs) | median | ratio to off |")
print("| --- | --- | --- | --- |")
print(f"| metrics off | {', '.join(map(k, off))} | {k(statistics.median(off))} | 100 % |")
print(f"| metrics on, scraped every second | {', '.join(map(k, on))} | {k(statistics.median(on))} | "
      f"{100 * statistics.median(on) / statistics.median(off):.1f} % |")
t = json.load(open(sys.argv[2]))
ratios = ", ".join(f"{100 * r:.1f} %" for r in t["traced_ratios"])
print()
print("| trace | msgs/s per round | ratio per round | median ratio | events written, dropped |")
print("| --- | --- | --- | --- | --- |")
print(f"| off (idempotent) | {', '.join(map(k, t['idempotent_msgs_per_sec']))} | | | |")
print(f"| on | {', '.join(map(k, t['traced_msgs_per_sec']))} | {ratios} | "
      f"{100 * t['traced_ratio_median']:.1f} % | {t['trace_written']}, {t['trace_dropped']} |")
PY
