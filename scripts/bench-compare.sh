#!/usr/bin/env bash
# Sluice against NATS JetStream on this machine, same workloads, same run, one table.
#
#   scripts/bench-compare.sh [--replicas 1|3|both] [--repeat N] [--trials N] [--dir DIR] [--keep]
#                            [--reuse] [--skip-nats] [--markdown FILE]
#
# Workloads, 1 KiB messages on loopback (data dirs under DIR):
#   sync      one send in flight, each waits for its ack: msgs/s, p50, p99
#   async     256 sends in flight: msgs/s
#   pipelined (Sluice only) two producers sending explicit 128-message batches (128 KiB): the ceiling
#   failover  (3 replicas) publish one at a time for 20 s, SIGKILL the master / stream leader
#             after 5 s: longest gap between acknowledged sends, median over --trials
# With --repeat N every row is measured N times, alternating Sluice and NATS, and the median
# is reported. Every round starts both systems afresh and deletes their data when it ends
# (--keep moves it to DIR/rR-roundN), so each starts on the same machine state; --reuse keeps
# one cluster of each for all rounds of a section instead. Sluice runs with async flush (NATS
# JetStream 2.9 does not fsync each message either); 3-replica Sluice groups ack after a
# quorum stored it.
#
# Environment:
#   SLUICE_BIN_DIR      Sluice binaries (default: cargo build --release into CARGO_TARGET_DIR)
#   NATS_PEER_DIR       the NATS JetStream peer client (default /work/shared/peers/nats)
#   NATSBENCH           a built natsbench binary (skips building the peer)
#   SYNC_COUNT, ASYNC_COUNT, PIPELINED_COUNT      messages per run (20000, 200000, 1000000;
#                       3 replicas: 5000, 100000, 500000, as the peer's own script)
#   PIPELINED_ARGS      extra `sluice bench produce` options of the pipelined row
#                       (default: --producers 2 --in-flight 8 --send-batch 128: explicit batches)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
NATS_PEER_DIR=${NATS_PEER_DIR:-/work/shared/peers/nats}
PIPELINED_ARGS=${PIPELINED_ARGS:---producers 2 --in-flight 8 --send-batch 128}
SIZE=1024
WINDOW=256

REPLICAS=both
REPEAT=1
TRIALS=3
DIR=""
KEEP=0
REUSE=0
SKIP_NATS=0
MARKDOWN=""

die() {
  echo "bench-compare.sh: $*" >&2
  exit 1
}

usage() {
  sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

while (($#)); do
  case $1 in
    --replicas) REPLICAS=${2:-}; shift 2 ;;
    --repeat) REPEAT=${2:-}; shift 2 ;;
    --trials) TRIALS=${2:-}; shift 2 ;;
    --dir) DIR=${2:-}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --reuse) REUSE=1; shift ;;
    --skip-nats) SKIP_NATS=1; shift ;;
    --markdown) MARKDOWN=${2:-}; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "bench-compare.sh: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
done
[[ $REPLICAS == 1 || $REPLICAS == 3 || $REPLICAS == both ]] || die "--replicas must be 1, 3 or both"
if ! is_uint "$REPEAT" || ((REPEAT < 1)); then die "--repeat must be a whole number >= 1"; fi
if ! is_uint "$TRIALS" || ((TRIALS < 1)); then die "--trials must be a whole number >= 1"; fi
command -v python3 >/dev/null || die "python3 is needed (JSON and the table)"

if [[ -z $DIR ]]; then
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/sluice-compare.XXXXXX")
else
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
fi
RESULTS=$DIR/results.tsv
: >"$RESULTS"
# Above the broker's disk high-water mark (75 % by default) retention deletes segments while the
# benchmark writes, and the rows measure that too.
used=$(df --output=pcent "$DIR" 2>/dev/null | tail -1 | tr -dc '0-9')
if [[ -n $used ]] && ((used >= 70)); then
  echo "warning: the file system of $DIR is ${used}% full; a broker deletes old segments above 75%," >&2
  echo "         and the pipelined rows write about 1 GB per round" >&2
fi
NATS_PIDS=()
NATS_PID=""
CLUSTERS=()
BIN_DIR=""

cleanup() {
  local c p
  for c in "${CLUSTERS[@]:-}"; do
    if [[ -n $c ]]; then
      SLUICE_BIN_DIR=$BIN_DIR "$REPO_ROOT/scripts/cluster.sh" down --dir "$c" >/dev/null 2>&1 || true
    fi
  done
  for p in "${NATS_PIDS[@]:-}"; do
    if [[ -n $p ]]; then kill "$p" 2>/dev/null || true; fi
  done
  if [[ $KEEP == 0 ]]; then
    rm -rf "$DIR"
  else
    echo "kept $DIR"
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- tools

if [[ -n ${SLUICE_BIN_DIR:-} ]]; then
  BIN_DIR=$(cd "$SLUICE_BIN_DIR" && pwd)
else
  target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
  [[ $target == /* ]] || target=$PWD/$target
  echo "building Sluice release binaries (target dir $target)"
  CARGO_TARGET_DIR=$target cargo build --release --manifest-path "$REPO_ROOT/Cargo.toml" \
    -p sluice-nameserver -p sluice-broker -p sluice-client
  BIN_DIR=$target/release
fi
SLUICE=$BIN_DIR/sluice
export SLUICE_BIN_DIR=$BIN_DIR

if [[ $SKIP_NATS == 0 ]]; then
  if ! command -v nats-server >/dev/null; then
    echo "installing nats-server (Debian package)"
    command -v apt-get >/dev/null || die "nats-server is missing and apt-get is not available"
    apt-get install -y nats-server >/dev/null || die "apt-get install nats-server failed"
  fi
  if [[ -z ${NATSBENCH:-} ]]; then
    [[ -f $NATS_PEER_DIR/Cargo.toml ]] || die "no NATS peer client in $NATS_PEER_DIR (set NATS_PEER_DIR or NATSBENCH)"
    peer_target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/natspeer
    [[ $peer_target == /* ]] || peer_target=$PWD/$peer_target
    echo "building the NATS peer client (target dir $peer_target)"
    (cd "$NATS_PEER_DIR" && cargo build --release -q --target-dir "$peer_target")
    NATSBENCH=$peer_target/release/natsbench
  fi
  [[ -x $NATSBENCH ]] || die "no executable natsbench at $NATSBENCH"
fi

free_ports() { "$BIN_DIR/sluice-chaos" free-ports "$1"; }

# Waits (bounded) until something accepts TCP connections on 127.0.0.1:$1.
wait_port() {
  local port=$1 deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    ((SECONDS < deadline)) || die "nothing listens on port $port after 30 s"
    sleep 0.1
  done
}

# ---------------------------------------------------------------- results

# record SYSTEM ROW VALUE
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }

# A field of a `sluice bench --json` report: json_field FILE produce.msgs_per_sec
json_field() {
  python3 - "$1" "$2" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    doc = doc.get(key) if isinstance(doc, dict) else None
print("" if doc is None else doc)
PY
}

# ---------------------------------------------------------------- Sluice

SLUICE_NS=""
SLUICE_DIR=""

sluice_up() {
  local replicas=$1
  SLUICE_DIR=$DIR/sluice-r$replicas
  CLUSTERS+=("$SLUICE_DIR")
  echo "== starting Sluice (replicas: $replicas) in $SLUICE_DIR"
  if ((replicas > 1)); then
    "$REPO_ROOT/scripts/cluster.sh" up --dir "$SLUICE_DIR" --replicas "$replicas" >"$DIR/sluice-r$replicas.up.log" 2>&1 ||
      { cat "$DIR/sluice-r$replicas.up.log" >&2; die "cluster.sh up --replicas $replicas failed"; }
  else
    "$REPO_ROOT/scripts/cluster.sh" up --dir "$SLUICE_DIR" >"$DIR/sluice-r1.up.log" 2>&1 ||
      { cat "$DIR/sluice-r1.up.log" >&2; die "cluster.sh up failed"; }
  fi
  SLUICE_NS=$(<"$SLUICE_DIR/nameservers")
}

sluice_down() {
  "$REPO_ROOT/scripts/cluster.sh" down --dir "$SLUICE_DIR" >/dev/null 2>&1 || true
}

# Every workload starts with no dirty pages left by the one before: otherwise the page cache's
# writeback of an earlier row (either system's) is charged to whatever runs next.
settle() { sync; }

# sluice_bench NAME ARGS... : runs `sluice bench produce --json`, keeps the report in DIR/NAME.json
sluice_bench() {
  local name=$1
  shift
  settle
  "$SLUICE" --nameservers "$SLUICE_NS" bench produce --size "$SIZE" --json "$@" \
    >"$DIR/$name.json" 2>"$DIR/$name.err" ||
    { tail -5 "$DIR/$name.err" >&2; die "sluice bench $name failed"; }
}

sluice_workloads() {
  local r=$1 sync_n=$2 async_n=$3 pipe_n=$4 i=$5 f
  f=sluice-r$r-sync-$i
  sluice_bench "$f" --topic "cmp-sync-$i" --in-flight 1 --count "$sync_n"
  record sluice "r$r sync msgs/s" "$(json_field "$DIR/$f.json" produce.msgs_per_sec)"
  record sluice "r$r sync p50 us" "$(json_field "$DIR/$f.json" produce.latency_us.p50)"
  record sluice "r$r sync p99 us" "$(json_field "$DIR/$f.json" produce.latency_us.p99)"
  f=sluice-r$r-async-$i
  sluice_bench "$f" --topic "cmp-async-$i" --in-flight "$WINDOW" --count "$async_n"
  record sluice "r$r async msgs/s" "$(json_field "$DIR/$f.json" produce.msgs_per_sec)"
  f=sluice-r$r-pipelined-$i
  # shellcheck disable=SC2086 # PIPELINED_ARGS is a list of options
  sluice_bench "$f" --topic "cmp-pipe-$i" --count "$pipe_n" $PIPELINED_ARGS
  record sluice "r$r pipelined msgs/s" "$(json_field "$DIR/$f.json" produce.msgs_per_sec)"
}

# The node name of the group's current master.
sluice_master_node() {
  local addr n
  addr=$("$SLUICE" --nameservers "$SLUICE_NS" cluster status --json | python3 -c '
import json, sys
rows = [r for r in json.load(sys.stdin)["brokers"] if r.get("role") == "MASTER" and r.get("reachable")]
print(rows[0]["address"] if rows else "")')
  [[ -n $addr ]] || return 1
  for n in "$SLUICE_DIR"/nodes/broker-*; do
    if [[ $(<"$n/listen") == "$addr" ]]; then
      basename "$n"
      return 0
    fi
  done
  return 1
}

# Waits (bounded) until every broker of the group is reachable again and one is master.
sluice_wait_healthy() {
  local deadline=$((SECONDS + 60)) want
  want=$(find "$SLUICE_DIR/nodes" -maxdepth 1 -name 'broker-*' | wc -l)
  until "$SLUICE" --nameservers "$SLUICE_NS" cluster status --json 2>/dev/null | python3 -c '
import json, sys
rows = json.load(sys.stdin)["brokers"]
up = [r for r in rows if r.get("reachable")]
masters = [r for r in up if r.get("role") == "MASTER"]
sys.exit(0 if len(up) >= int(sys.argv[1]) and len(masters) == 1 else 1)' "$want"; do
    ((SECONDS < deadline)) || die "the Sluice group is not healthy 60 s after a failover trial"
    sleep 0.5
  done
}

sluice_failover() {
  local t=$1 f=sluice-failover-$1 pid node
  echo "-- Sluice failover trial $t"
  "$SLUICE" --nameservers "$SLUICE_NS" bench produce --size "$SIZE" --json --topic cmp-failover \
    --in-flight 1 --duration 20 --retries 3 >"$DIR/$f.json" 2>"$DIR/$f.err" &
  pid=$!
  # The publisher runs 5 s before the crash, as the peer's trial does.
  sleep 5
  node=$(sluice_master_node) || die "no master to kill"
  echo "SIGKILL master $node"
  "$REPO_ROOT/scripts/cluster.sh" kill "$node" --dir "$SLUICE_DIR" >/dev/null
  wait "$pid" || { tail -5 "$DIR/$f.err" >&2; die "the failover publisher failed"; }
  record sluice "failover gap ms" "$(json_field "$DIR/$f.json" produce.max_gap_ms)"
  "$REPO_ROOT/scripts/cluster.sh" restart "$node" --dir "$SLUICE_DIR" >/dev/null
  sluice_wait_healthy
}

# ---------------------------------------------------------------- NATS

NATS_URLS=""

# Starts nats-server with the given arguments; sets NATS_PID. Disowned, so that killing it on
# purpose (failover trials) does not make the shell report it.
nats_start() {
  local log=$1
  shift
  nats-server "$@" >>"$log" 2>&1 &
  NATS_PID=$!
  disown "$NATS_PID"
  NATS_PIDS+=("$NATS_PID")
}

nats_single_up() {
  local port
  port=$(free_ports 1)
  echo "== starting NATS JetStream (1 node) on $port"
  nats_start "$DIR/nats1.log" -js -sd "$DIR/nats1" -a 127.0.0.1 -p "$port"
  wait_port "$port"
  NATS_URLS=nats://127.0.0.1:$port
}

NATS_HTTP=()
NATS_CONF=()
NATS_NODE_PID=()

nats_cluster_up() {
  local ports i
  mapfile -t ports < <(free_ports 9)
  echo "== starting NATS JetStream (3 nodes, R3 stream)"
  local routes="nats-route://127.0.0.1:${ports[6]}, nats-route://127.0.0.1:${ports[7]}, nats-route://127.0.0.1:${ports[8]}"
  NATS_URLS=""
  for i in 0 1 2; do
    NATS_CONF[i]=$DIR/nats-n$i.conf
    NATS_HTTP[i]=${ports[3 + i]}
    cat >"${NATS_CONF[i]}" <<CONF
server_name: n$i
listen: 127.0.0.1:${ports[i]}
http: 127.0.0.1:${ports[3 + i]}
jetstream { store_dir: $DIR/nats-c$i }
cluster { name: C3, listen: 127.0.0.1:${ports[6 + i]}, routes: [ $routes ] }
CONF
    nats_start "$DIR/nats-n$i.log" -c "${NATS_CONF[i]}"
    NATS_NODE_PID[i]=$NATS_PID
    NATS_URLS+="${NATS_URLS:+,}nats://127.0.0.1:${ports[i]}"
  done
  for i in 0 1 2; do wait_port "${ports[i]}"; done
  # JetStream needs its meta leader before a stream can be created; the peer client retries
  # the connection but not the stream creation, so wait for it.
  local deadline=$((SECONDS + 60))
  until curl -s "127.0.0.1:${NATS_HTTP[0]}/jsz" 2>/dev/null | python3 -c '
import json, sys
try:
    leader = json.load(sys.stdin).get("meta_cluster", {}).get("leader")
except Exception:
    leader = None
sys.exit(0 if leader else 1)'; do
    ((SECONDS < deadline)) || die "NATS JetStream has no meta leader after 60 s"
    sleep 0.2
  done
}

nats_down() {
  local p deadline
  for p in "${NATS_PIDS[@]:-}"; do
    if [[ -n $p ]]; then kill "$p" 2>/dev/null || true; fi
  done
  deadline=$((SECONDS + 15))
  for p in "${NATS_PIDS[@]:-}"; do
    while [[ -n $p ]] && kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  done
  NATS_PIDS=()
}

nats_workloads() {
  local r=$1 sync_n=$2 async_n=$3 i=$4 stream out
  stream=$([[ $r == 1 ]] && echo BENCH || echo R3)
  settle
  out=$("$NATSBENCH" sync "$NATS_URLS" "$stream" "$r" "$sync_n" "$SIZE" 2>&1) || die "natsbench sync: $out"
  echo "$out" >"$DIR/nats-r$r-sync-$i.txt"
  record nats "r$r sync msgs/s" "$(sed -n 's/.*: \([0-9.]*\) msg\/s.*/\1/p' <<<"$out")"
  record nats "r$r sync p50 us" "$(sed -n 's/.*p50=\([0-9.]*\)us.*/\1/p' <<<"$out")"
  record nats "r$r sync p99 us" "$(sed -n 's/.*p99=\([0-9.]*\)us.*/\1/p' <<<"$out")"
  settle
  out=$("$NATSBENCH" async "$NATS_URLS" "$stream" "$r" "$async_n" "$SIZE" "$WINDOW" 2>&1) || die "natsbench async: $out"
  echo "$out" >"$DIR/nats-r$r-async-$i.txt"
  record nats "r$r async msgs/s" "$(sed -n 's/.*: \([0-9.]*\) msg\/s.*/\1/p' <<<"$out")"
}

nats_failover() {
  local t=$1 pid leader i out
  echo "-- NATS failover trial $t"
  timeout 40 "$NATSBENCH" failover "$NATS_URLS" R3 0 20 "$SIZE" >"$DIR/nats-failover-$t.txt" 2>&1 &
  pid=$!
  sleep 5
  leader=""
  for i in 0 1 2; do
    leader=$(curl -s "127.0.0.1:${NATS_HTTP[i]}/jsz?streams=true" 2>/dev/null | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except Exception:
    sys.exit()
for a in d.get("account_details", []):
    for s in a.get("stream_detail", []):
        if s["name"] == "R3" and s.get("cluster", {}).get("leader"):
            print(s["cluster"]["leader"])
            sys.exit()') || true
    [[ -n $leader ]] && break
  done
  [[ $leader =~ ^n[0-2]$ ]] || die "cannot find the NATS stream leader"
  i=${leader#n}
  echo "SIGKILL stream leader $leader"
  kill -9 "${NATS_NODE_PID[i]}"
  wait "$pid" || true
  out=$(<"$DIR/nats-failover-$t.txt")
  record nats "failover gap ms" "$(sed -n 's/.*max_gap_between_successes=\([0-9.]*\)ms.*/\1/p' <<<"$out")"
  nats_start "$DIR/nats-n$i.log" -c "${NATS_CONF[i]}"
  NATS_NODE_PID[i]=$NATS_PID
  # Let the restarted node catch up before the next trial (the peer waits 5 s too).
  sleep 5
}

# ---------------------------------------------------------------- runs

machine() {
  echo "machine: $(nproc) CPU(s), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)," \
    "$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

echo "results in $DIR"
machine | tee "$DIR/machine.txt"

# Starts both systems for a section (1 or 3 replicas).
systems_up() {
  sluice_up "$1"
  if [[ $SKIP_NATS == 0 ]]; then
    if [[ $1 == 1 ]]; then nats_single_up; else nats_cluster_up; fi
  fi
}

# systems_down [NAME]: stops both systems and deletes their data (see drop_data).
systems_down() {
  sluice_down
  [[ $SKIP_NATS == 1 ]] || nats_down
  drop_data "${1:-}"
}

run_replicas() {
  local r=$1 sync_n async_n pipe_n i
  if [[ $r == 1 ]]; then
    sync_n=${SYNC_COUNT:-20000} async_n=${ASYNC_COUNT:-200000} pipe_n=${PIPELINED_COUNT:-1000000}
  else
    sync_n=${SYNC_COUNT:-5000} async_n=${ASYNC_COUNT:-100000} pipe_n=${PIPELINED_COUNT:-500000}
  fi
  systems_up "$r"
  # Alternate the systems so that a change in machine load hits both.
  for ((i = 1; i <= REPEAT; i++)); do
    echo "-- round $i/$REPEAT ($r replica(s))"
    if ((i > 1 && REUSE == 0)); then
      systems_down "r$r-round$((i - 1))"
      systems_up "$r"
    fi
    sluice_workloads "$r" "$sync_n" "$async_n" "$pipe_n" "$i"
    [[ $SKIP_NATS == 1 ]] || nats_workloads "$r" "$sync_n" "$async_n" "$i"
  done
  if ((r > 1)); then
    for ((i = 1; i <= TRIALS; i++)); do
      sluice_failover "$i"
      [[ $SKIP_NATS == 1 ]] || nats_failover "$i"
    done
  fi
  systems_down
}

# drop_data [NAME]: deletes both systems' data, so that every round starts from the same
# machine state; with --keep it stays, moved to DIR/NAME when a NAME is given (the next round
# then starts with empty directories, but the kept files' pages stay cached). On this VM a
# guest's growing page cache makes each new page it writes slower (the host backs it lazily):
# in one cluster, five 1 GB pipelined runs in a row measured 314k, 304k, 321k, 261k and 144k
# msgs/s; with the previous runs' pages dropped before each, seven runs measured 341k-388k. A
# round that inherits the rounds before it measures how much the VM has handed out so far.
drop_data() {
  local p
  if ((KEEP == 0)); then
    rm -rf "$SLUICE_DIR" "$DIR"/nats1 "$DIR"/nats-c*
    sync
  elif [[ -n $1 ]]; then
    mkdir -p "$DIR/$1"
    for p in "$SLUICE_DIR" "$DIR"/nats1 "$DIR"/nats-c*; do
      if [[ -e $p ]]; then mv "$p" "$DIR/$1/"; fi
    done
  fi
}

case $REPLICAS in
  1) run_replicas 1 ;;
  3) run_replicas 3 ;;
  both) run_replicas 1; run_replicas 3 ;;
esac
machine | sed 's/^machine:/after the run:/' | tee -a "$DIR/machine.txt"

# ---------------------------------------------------------------- table

python3 - "$RESULTS" "$REPLICAS" "$MARKDOWN" <<'PY'
import statistics, sys

results, replicas, markdown = sys.argv[1], sys.argv[2], sys.argv[3]
values = {}
for line in open(results):
    system, row, value = line.rstrip("\n").split("\t")
    if value:
        values.setdefault((system, row), []).append(float(value))

def med(system, row):
    v = values.get((system, row))
    return statistics.median(v) if v else None

rows = []
def add(label, key, unit, against=None):
    """A row; `against` names the NATS row the ratio is taken to when NATS has none of its own."""
    s, n = med("sluice", key), med("nats", key)
    base = med("nats", against) if against else n
    ratio = f"{s / base:.2f}" if s is not None and base else "-"
    if against and ratio != "-":
        ratio += " x NATS async"
    rows.append((label, s, n, ratio, unit))

for r, name in (("1", "1 replica"), ("3", "3 replicas (quorum)")):
    if replicas not in (r, "both"):
        continue
    add(f"{name}: sync publish (1 in flight)", f"r{r} sync msgs/s", "msgs/s")
    add(f"{name}: sync p50", f"r{r} sync p50 us", "us")
    add(f"{name}: sync p99", f"r{r} sync p99 us", "us")
    add(f"{name}: async publish (256 in flight)", f"r{r} async msgs/s", "msgs/s")
    add(f"{name}: pipelined, batched (Sluice only)", f"r{r} pipelined msgs/s", "msgs/s",
        against=f"r{r} async msgs/s")
    if r == "3":
        add(f"{name}: failover gap, median", "failover gap ms", "ms")

def fmt(v, unit):
    return "-" if v is None else f"{v:,.0f}"

header = ("workload", "Sluice", "NATS", "Sluice/NATS")
table = [header] + [
    (label + f" ({unit})", fmt(s, unit), fmt(n, unit), ratio)
    for label, s, n, ratio, unit in rows
]
widths = [max(len(r[i]) for r in table) for i in range(4)]
print()
for r in table:
    print("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
for (system, row), v in sorted(values.items()):
    if len(v) > 1:
        print(f"  {system} {row}: runs {', '.join(f'{x:,.0f}' for x in v)}")
if markdown:
    with open(markdown, "w") as f:
        f.write("| workload | Sluice | NATS | Sluice/NATS |\n|---|---:|---:|---:|\n")
        for r in table[1:]:
            f.write("| " + " | ".join(r) + " |\n")
    print(f"\nMarkdown table written to {markdown}")
PY
