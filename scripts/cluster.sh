#!/usr/bin/env bash
# A local Sluice cluster on loopback ports, for development and tests.
#
#   scripts/cluster.sh up       [--dir DIR] [--nameservers N]   build, then start every node
#   scripts/cluster.sh down     [--dir DIR]                     stop every node (SIGTERM, then SIGKILL)
#   scripts/cluster.sh status   [--dir DIR]                     node processes + `sluice cluster status`
#   scripts/cluster.sh kill     NODE [--dir DIR]                SIGKILL one node (a crash)
#   scripts/cluster.sh restart  NODE [--dir DIR]                stop (if running) and start one node
#   scripts/cluster.sh logs     NODE [--dir DIR] [--follow]     print (or follow) a node's log
#
# DIR defaults to $SLUICE_CLUSTER_DIR, else ./.cluster. Each node lives in DIR/nodes/NAME (ns-1..,
# broker-a-1): its kind, listen address, generated config.toml, data/, node.log, node.pid and
# ready files. The first start binds 127.0.0.1:0; the bound address is then kept in the node's
# `listen` file so restarts reuse it. DIR/nameservers holds the nameserver addresses,
# comma-separated.
#
# Environment:
#   SLUICE_BIN_DIR         use the binaries there instead of building (cargo build --release)
#   CARGO_TARGET_DIR       where cargo builds (binaries then come from $CARGO_TARGET_DIR/release)
#   SLUICE_READY_TIMEOUT   seconds to wait for a node to serve / a broker to register (default 60)
#   SLUICE_STOP_TIMEOUT    seconds to wait after SIGTERM before SIGKILL (default 15)
#   SLUICE_CLUSTER_NAME    cluster name of the brokers (default DefaultCluster)
#   SLUICE_FLUSH           broker flush mode, async|sync (default async)
#   SLUICE_DEFAULT_QUEUES  queues of auto-created topics (default 4)
#   SLUICE_BROKER_EXPIRY_MS  nameserver broker expiry (default: the nameserver's, 120000)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
READY_TIMEOUT=${SLUICE_READY_TIMEOUT:-60}
STOP_TIMEOUT=${SLUICE_STOP_TIMEOUT:-15}
CLUSTER_NAME=${SLUICE_CLUSTER_NAME:-DefaultCluster}
FLUSH=${SLUICE_FLUSH:-async}
DEFAULT_QUEUES=${SLUICE_DEFAULT_QUEUES:-4}
# Nodes started by this invocation, stopped again if `up` fails half way.
STARTED=()

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

# Help on stdout when asked for, on stderr after a usage error.
usage() {
  local code=${1:-0}
  if [[ $code == 0 ]]; then
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  else
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  fi
  exit "$code"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# TOML basic string: quote and escape backslashes and quotes.
toml_str() {
  local s=${1//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}

# ---------------------------------------------------------------- binaries

# Sets BIN_DIR: SLUICE_BIN_DIR as given, or a fresh release build.
resolve_binaries() {
  if [[ -n ${SLUICE_BIN_DIR:-} ]]; then
    BIN_DIR=$(cd "$SLUICE_BIN_DIR" && pwd) || die "SLUICE_BIN_DIR $SLUICE_BIN_DIR is not a directory"
  else
    local target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
    # A relative CARGO_TARGET_DIR means relative to where the user is, not to the repository.
    [[ $target == /* ]] || target=$PWD/$target
    echo "building release binaries (target dir $target)"
    CARGO_TARGET_DIR=$target cargo build --release --manifest-path "$REPO_ROOT/Cargo.toml" \
      -p sluice-nameserver -p sluice-broker -p sluice-client
    BIN_DIR=$target/release
  fi
  local b
  for b in sluice-nameserver sluice-broker sluice; do
    [[ -x $BIN_DIR/$b ]] || die "no executable $BIN_DIR/$b"
  done
  echo "$BIN_DIR" >"$DIR/bin_dir"
}

# Sets BIN_DIR from what `up` recorded (restart and status must not rebuild).
recorded_binaries() {
  [[ -f $DIR/bin_dir ]] || die "no cluster in $DIR (run: cluster.sh up --dir $DIR)"
  BIN_DIR=$(<"$DIR/bin_dir")
}

# ---------------------------------------------------------------- nodes

node_dir() { echo "$DIR/nodes/$1"; }

# Node names in start order: nameservers first, so brokers can register at once.
list_nodes() {
  local kind d
  [[ -d $DIR/nodes ]] || return 0
  for kind in nameserver broker; do
    for d in "$DIR"/nodes/*/; do
      [[ -f $d/kind && $(<"$d/kind") == "$kind" ]] && basename "$d"
    done
  done
  return 0
}

node_kind() { cat "$(node_dir "$1")/kind"; }

node_pid() {
  local f
  f=$(node_dir "$1")/node.pid
  [[ -f $f ]] && cat "$f"
}

# True if the node's recorded pid is alive and still runs this node's command (its command
# line names the node's own config file), so a recycled pid is never mistaken for it.
node_running() {
  local d pid cmdline
  d=$(node_dir "$1")
  pid=$(node_pid "$1") || return 1
  is_uint "$pid" || return 1
  if [[ -r /proc/$pid/cmdline ]]; then
    # stderr first: the process may vanish between the test and the read.
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  else
    cmdline=$(ps -ww -o args= -p "$pid" 2>/dev/null) || return 1
  fi
  [[ $cmdline == *"$d/config.toml"* ]]
}

# Creates a node directory. Extra KEY=VALUE arguments become files read by its command builder.
create_node() {
  local name=$1 kind=$2 d kv
  shift 2
  d=$(node_dir "$name")
  mkdir -p "$d/data"
  echo "$kind" >"$d/kind"
  echo "127.0.0.1:0" >"$d/listen"
  for kv in "$@"; do
    echo "${kv#*=}" >"$d/${kv%%=*}"
  done
}

# Writes the node's config.toml and sets CMD to its command line (kind-specific).
nameserver_command() {
  local d=$1
  {
    echo "listen = $(toml_str "$(<"$d/listen")")"
    echo "data_dir = $(toml_str "$d/data")"
    if [[ -n ${SLUICE_BROKER_EXPIRY_MS:-} ]]; then
      echo "broker_expiry_ms = $SLUICE_BROKER_EXPIRY_MS"
    fi
  } >"$d/config.toml"
  CMD=("$BIN_DIR/sluice-nameserver" --config "$d/config.toml" --ready-file "$d/ready")
}

broker_command() {
  local d=$1 ns listen broker_name cluster
  [[ -s $DIR/nameservers ]] || die "no nameserver addresses in $DIR/nameservers"
  ns=$(<"$DIR/nameservers")
  listen=$(<"$d/listen")
  broker_name=$(<"$d/broker_name")
  cluster=$(<"$d/cluster")
  local ns_list="" a
  IFS=',' read -r -a addrs <<<"$ns"
  for a in "${addrs[@]}"; do
    ns_list+="${ns_list:+, }$(toml_str "$a")"
  done
  {
    echo "listen = $(toml_str "$listen")"
    echo "data_dir = $(toml_str "$d/data")"
    echo "nameservers = [$ns_list]"
    echo "broker_name = $(toml_str "$broker_name")"
    echo "cluster_name = $(toml_str "$cluster")"
    echo "flush = $(toml_str "$FLUSH")"
    echo "auto_create_topics = true"
    echo "default_queues = $DEFAULT_QUEUES"
  } >"$d/config.toml"
  CMD=("$BIN_DIR/sluice-broker" --config "$d/config.toml" --listen "$listen" --data-dir "$d/data"
    --nameservers "$ns" --broker-name "$broker_name" --cluster "$cluster" --flush "$FLUSH"
    --ready-file "$d/ready")
}

# The log lines of the node's latest start (after the last "=== ... starting" marker).
last_run_log() {
  awk '/^=== / { n = 0 } { lines[n++] = $0 } END { for (i = 0; i < n; i++) print lines[i] }' "$1"
}

# Starts one node from its directory and waits (bounded) until it serves.
start_node() {
  local name=$1 d kind pid addr deadline
  d=$(node_dir "$name")
  kind=$(<"$d/kind")
  if node_running "$name"; then
    echo "$name is already running (pid $(node_pid "$name"))"
    return 0
  fi
  case $kind in
    nameserver) nameserver_command "$d" ;;
    broker) broker_command "$d" ;;
    *) die "node $name has unknown kind $kind" ;;
  esac
  rm -f "$d/ready" "$d/node.pid"
  echo "=== $(date '+%Y-%m-%d %H:%M:%S') starting: ${CMD[*]}" >>"$d/node.log"
  # setsid: the node outlives this script and ignores Ctrl-C sent to the terminal. The shell
  # records its own pid before exec, so the pid file names the node process itself.
  # fd 9 (the directory lock) is closed so a node never holds it.
  # shellcheck disable=SC2016 # $$ and $@ are for the inner sh, not this shell.
  setsid sh -c 'echo $$ >"$0"; exec "$@"' "$d/node.pid" "${CMD[@]}" >>"$d/node.log" 2>&1 </dev/null 9>&- &
  STARTED+=("$name")
  deadline=$((SECONDS + READY_TIMEOUT))
  until [[ -s $d/ready ]]; do
    if [[ -s $d/node.pid ]] && ! node_running "$name"; then
      echo "cluster.sh: $name exited during startup; its output:" >&2
      last_run_log "$d/node.log" | tail -n 20 >&2
      echo "(if its pinned port $(<"$d/listen") is taken, let it pick a new one: echo 127.0.0.1:0 >$d/listen)" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "cluster.sh: $name did not become ready within ${READY_TIMEOUT}s; see $d/node.log" >&2
      return 1
    fi
    sleep 0.1
  done
  addr=$(<"$d/ready")
  pid=$(node_pid "$name")
  # Keep the port: brokers and clients know nameservers by address.
  echo "$addr" >"$d/listen"
  echo "$name ($kind) pid $pid listening on $addr"
}

# SIGTERM, wait (bounded), then SIGKILL. Only touches the process recorded for this node.
stop_node() {
  local name=$1 pid deadline
  if ! node_running "$name"; then
    rm -f "$(node_dir "$name")/node.pid"
    return 0
  fi
  pid=$(node_pid "$name")
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while node_running "$name" && ((SECONDS < deadline)); do
    sleep 0.1
  done
  if node_running "$name"; then
    echo "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while node_running "$name"; do sleep 0.1; done
  fi
  rm -f "$(node_dir "$name")/node.pid"
  echo "$name stopped"
}

write_nameservers_file() {
  local list="" n
  for n in $(list_nodes); do
    [[ $(node_kind "$n") == nameserver ]] || continue
    list+="${list:+,}$(<"$(node_dir "$n")/listen")"
  done
  echo "$list" >"$DIR/nameservers"
}

# Waits (bounded) until the broker's address shows in the cluster info of each nameserver given
# (comma-separated; default: all of them).
wait_registered() {
  local name=$1 addr ns deadline nss
  addr=$(<"$(node_dir "$name")/listen")
  IFS=',' read -r -a nss <<<"${2:-$(<"$DIR/nameservers")}"
  deadline=$((SECONDS + READY_TIMEOUT))
  for ns in "${nss[@]}"; do
    until "$BIN_DIR/sluice" --nameservers "$ns" cluster status 2>/dev/null | grep -qF "$addr"; do
      if ((SECONDS >= deadline)); then
        echo "cluster.sh: $name ($addr) is not registered with nameserver $ns after ${READY_TIMEOUT}s" >&2
        return 1
      fi
      sleep 0.2
    done
  done
}

# Stops what this invocation started (a failed `up` leaves nothing half running).
rollback() {
  local i
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    stop_node "${STARTED[i]}" || true
  done
  die "up failed; stopped the nodes it had started"
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local n any_running=0 all_running=1 nodes i
  mkdir -p "$DIR"
  nodes=$(list_nodes)
  for n in $nodes; do
    if node_running "$n"; then any_running=1; else all_running=0; fi
  done
  if [[ -n $nodes && $all_running == 1 ]]; then
    echo "cluster in $DIR is already running (nameservers $(<"$DIR/nameservers"))"
    return 0
  fi
  resolve_binaries
  if [[ -z $nodes ]]; then
    for ((i = 1; i <= NAMESERVERS; i++)); do
      create_node "ns-$i" nameserver
    done
    create_node broker-a-1 broker broker_name=broker-a cluster="$CLUSTER_NAME"
    nodes=$(list_nodes)
  else
    local existing
    existing=$(list_nodes | grep -c '^ns-' || true)
    if [[ $NAMESERVERS_GIVEN == 1 && $existing != "$NAMESERVERS" ]]; then
      echo "note: the cluster in $DIR has $existing nameserver(s); --nameservers $NAMESERVERS applies to new clusters only"
    fi
    if [[ $any_running == 1 ]]; then
      echo "cluster in $DIR is partly running; starting its stopped nodes"
    fi
  fi
  for n in $nodes; do
    [[ $(node_kind "$n") == nameserver ]] || continue
    start_node "$n" || rollback
  done
  write_nameservers_file
  for n in $nodes; do
    [[ $(node_kind "$n") == nameserver ]] && continue
    start_node "$n" || rollback
    if [[ $(node_kind "$n") == broker ]]; then
      wait_registered "$n" || rollback
    fi
  done
  echo "nameservers: $(<"$DIR/nameservers")"
}

cmd_down() {
  local nodes n i
  mapfile -t nodes < <(list_nodes)
  if ((${#nodes[@]} == 0)); then
    echo "no cluster in $DIR"
    return 0
  fi
  # Reverse start order: brokers unregister while the nameservers still listen.
  for ((i = ${#nodes[@]} - 1; i >= 0; i--)); do
    n=${nodes[i]}
    stop_node "$n"
  done
  echo "cluster in $DIR is down"
}

cmd_status() {
  local n rc=0 pid state
  if [[ -z $(list_nodes) ]]; then
    echo "no cluster in $DIR"
    return 1
  fi
  printf '%-12s %-11s %-8s %-8s %s\n' NODE KIND PID STATE ADDRESS
  for n in $(list_nodes); do
    pid=$(node_pid "$n") || pid=-
    if node_running "$n"; then state=running; else state=stopped rc=1; fi
    printf '%-12s %-11s %-8s %-8s %s\n' "$n" "$(node_kind "$n")" "$pid" "$state" \
      "$(<"$(node_dir "$n")/listen")"
  done
  recorded_binaries
  echo
  echo "nameservers: $(<"$DIR/nameservers")"
  local ns_up=0
  for n in $(list_nodes); do
    [[ $(node_kind "$n") == nameserver ]] && node_running "$n" && ns_up=1
  done
  if [[ $ns_up == 0 ]]; then
    echo "no nameserver is running"
    return 1
  fi
  "$BIN_DIR/sluice" --nameservers "$(<"$DIR/nameservers")" cluster status || rc=1
  return "$rc"
}

require_node() {
  [[ -n $NODE ]] || die "$COMMAND needs a node name (one of: $(list_nodes | tr '\n' ' '))"
  [[ -f $(node_dir "$NODE")/kind ]] || die "no node $NODE in $DIR (nodes: $(list_nodes | tr '\n' ' '))"
}

cmd_kill() {
  require_node
  if ! node_running "$NODE"; then
    echo "$NODE is not running"
    return 0
  fi
  local pid
  pid=$(node_pid "$NODE")
  kill -KILL "$pid"
  while node_running "$NODE"; do sleep 0.1; done
  rm -f "$(node_dir "$NODE")/node.pid"
  echo "$NODE (pid $pid) killed"
}

cmd_restart() {
  require_node
  recorded_binaries
  stop_node "$NODE"
  start_node "$NODE"
  local n
  case $(node_kind "$NODE") in
    broker) wait_registered "$NODE" ;;
    nameserver)
      # A nameserver starts empty: wait until the running brokers have registered again (they
      # retry with a backoff of up to their heartbeat interval).
      echo "waiting for the brokers to register with $NODE"
      for n in $(list_nodes); do
        if [[ $(node_kind "$n") == broker ]] && node_running "$n"; then
          wait_registered "$n" "$(<"$(node_dir "$NODE")/listen")"
        fi
      done
      ;;
  esac
}

cmd_logs() {
  require_node
  local log
  log=$(node_dir "$NODE")/node.log
  [[ -f $log ]] || die "$NODE has no log yet"
  if [[ $FOLLOW == 1 ]]; then
    exec tail -n 50 -f "$log"
  fi
  cat "$log"
}

# ---------------------------------------------------------------- main

COMMAND=""
NODE=""
DIR=${SLUICE_CLUSTER_DIR:-./.cluster}
NAMESERVERS=1
NAMESERVERS_GIVEN=0
FOLLOW=0
while (($# > 0)); do
  case $1 in
    --dir)
      (($# >= 2)) || die "--dir needs a value"
      DIR=$2
      shift 2
      ;;
    --dir=*) DIR=${1#--dir=}; shift ;;
    --nameservers)
      (($# >= 2)) || die "--nameservers needs a value"
      NAMESERVERS=$2
      NAMESERVERS_GIVEN=1
      shift 2
      ;;
    --nameservers=*) NAMESERVERS=${1#--nameservers=} NAMESERVERS_GIVEN=1; shift ;;
    -f | --follow) FOLLOW=1; shift ;;
    -h | --help) usage 0 ;;
    -*)
      echo "cluster.sh: unknown option $1" >&2
      usage 2
      ;;
    *)
      if [[ -z $COMMAND ]]; then
        COMMAND=$1
      elif [[ -z $NODE ]]; then
        NODE=$1
      else
        echo "cluster.sh: unexpected argument $1" >&2
        usage 2
      fi
      shift
      ;;
  esac
done
if ! is_uint "$NAMESERVERS" || ((10#$NAMESERVERS < 1)); then
  die "--nameservers must be a positive integer"
fi
is_uint "$READY_TIMEOUT" || die "SLUICE_READY_TIMEOUT must be whole seconds"
is_uint "$STOP_TIMEOUT" || die "SLUICE_STOP_TIMEOUT must be whole seconds"

[[ -n $COMMAND ]] || usage 2
case $COMMAND in
  up | down | status | kill | restart | logs) ;;
  *)
    echo "cluster.sh: unknown command $COMMAND" >&2
    usage 2
    ;;
esac
if [[ ! -d $DIR && $COMMAND != up ]]; then
  echo "no cluster in $DIR"
  [[ $COMMAND == down ]] && exit 0
  exit 1
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

# One cluster.sh at a time per directory; different directories never collide.
if [[ $COMMAND != logs && $COMMAND != status ]] && command -v flock >/dev/null; then
  exec 9>"$DIR/.lock"
  flock -n 9 || die "another cluster.sh is working on $DIR"
fi

case $COMMAND in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill) cmd_kill ;;
  restart) cmd_restart ;;
  logs) cmd_logs ;;
esac
