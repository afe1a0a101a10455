#!/usr/bin/env bash
# Read hints under load: a 3-replica group on loopback (scripts/cluster.sh); a backlog is written
# first, then one producer writes at full speed while one consumer group catches up on the
# backlog. Runs alternate slave_read_enable = true / false; one table at the end.
#
#   scripts/bench-read-hints.sh [--runs N] [--backlog MSGS] [--seconds S] [--ratio R] [--dir DIR]
#
#   --runs      runs per setting (default 2)
#   --backlog   messages written before the measured phase (default 400000, 1 KiB each)
#   --seconds   length of the measured phase (default 15)
#   --ratio     read_hint_behind_memory_ratio (default 0.01: about 1 % of RAM counts as "far
#               behind", so the backlog qualifies)
# Environment: SLUICE_BIN_DIR (default: cargo build --release), PRODUCER_ARGS (extra options of
# the producer, default --in-flight 256).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
RUNS=2
BACKLOG=400000
SECS=15
RATIO=0.01
DIR=""

die() {
  echo "bench-read-hints.sh: $*" >&2
  exit 1
}

while (($#)); do
  case $1 in
    --runs) RUNS=${2:-}; shift 2 ;;
    --backlog) BACKLOG=${2:-}; shift 2 ;;
    --seconds) SECS=${2:-}; shift 2 ;;
    --ratio) RATIO=${2:-}; shift 2 ;;
    --dir) DIR=${2:-}; shift 2 ;;
    -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a whole number >= 1"
[[ $BACKLOG =~ ^[1-9][0-9]*$ ]] || die "--backlog must be a whole number >= 1"
[[ $SECS =~ ^[1-9][0-9]*$ ]] || die "--seconds must be a whole number >= 1"
command -v python3 >/dev/null || die "python3 is needed (JSON and the table)"

# shellcheck source=lib/release-bins.sh
source "$REPO_ROOT/scripts/lib/release-bins.sh"
SLUICE=$SLUICE_BIN_DIR/sluice
if [[ -z $DIR ]]; then
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/sluice-read-hints.XXXXXX")
fi
mkdir -p "$DIR"
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

field() {
  python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    d = d.get(k) if isinstance(d, dict) else None
print("" if d is None else d)' "$1" "$2"
}

# Share of the messages pulled from slaves, from the brokers' read counters.
slave_share() {
  "$SLUICE" --nameservers "$1" cluster status --json | python3 -c 'import json, sys
total = slaves = 0
for b in json.load(sys.stdin)["brokers"]:
    n = ((b.get("reads") or {}).get("messages")) or 0
    total += n
    if b.get("role") != "MASTER":
        slaves += n
print(f"{100.0 * slaves / total:.0f}" if total else "0")'
}

one_run() {
  local mode=$1 run=$2 enable ns
  enable=$([[ $mode == on ]] && echo true || echo false)
  CLUSTER=$DIR/cluster-$mode-$run
  SLUICE_BROKER_CONFIG="slave_read_enable = $enable
read_hint_behind_memory_ratio = $RATIO" \
    "$REPO_ROOT/scripts/cluster.sh" up --dir "$CLUSTER" --replicas 3 >"$CLUSTER.up.log" 2>&1 ||
    { cat "$CLUSTER.up.log" >&2; die "cluster.sh up failed"; }
  ns=$(<"$CLUSTER/nameservers")
  echo "-- hints $mode, run $run: writing a backlog of $BACKLOG messages"
  "$SLUICE" --nameservers "$ns" bench produce --topic rh --queues 4 --size 1024 --count "$BACKLOG" \
    --json >"$DIR/backlog.json" 2>/dev/null || die "writing the backlog failed"
  # shellcheck disable=SC2086 # PRODUCER_ARGS is a list of options
  "$SLUICE" --nameservers "$ns" bench produce --topic rh --size 1024 --duration "$SECS" \
    ${PRODUCER_ARGS:---in-flight 256} --json >"$DIR/produce.json" 2>/dev/null &
  local pp=$!
  "$SLUICE" --nameservers "$ns" bench consume --topic rh --group catchup --count "$BACKLOG" \
    --json >"$DIR/consume.json" 2>/dev/null || die "the consumer failed"
  wait "$pp" || die "the producer failed"
  printf '%s\t%s\t%s\t%s\n' "$mode" "$(field "$DIR/produce.json" produce.msgs_per_sec)" \
    "$(field "$DIR/consume.json" consume.msgs_per_sec)" "$(slave_share "$ns")" >>"$RESULTS"
  "$REPO_ROOT/scripts/cluster.sh" down --dir "$CLUSTER" >/dev/null 2>&1 || true
  rm -rf "$CLUSTER"
  CLUSTER=""
}

for ((i = 1; i <= RUNS; i++)); do
  one_run on "$i"
  one_run off "$i"
done

python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| hints | producer msgs/s (runs) | median | consumer catch-up msgs/s (runs) | median | read by slaves |")
print("| --- | --- | --- | --- | --- | --- |")
for mode in ("on", "off"):
    r = [x for x in rows if x[0] == mode]
    p = [float(x[1]) for x in r]
    c = [float(x[2]) for x in r]
    s = [x[3] + " %" for x in r]
    k = lambda v: f"{v / 1000:.1f}k"
    print(f"| {mode} | {', '.join(map(k, p))} | {k(statistics.median(p))} | "
          f"{', '.join(map(k, c))} | {k(statistics.median(c))} | {', '.join(s)} |")
PY
