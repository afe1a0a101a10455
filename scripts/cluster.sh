#!/usr/bin/env bash
# A local Sluice cluster on loopback ports, for development, tests and chaos runs.
#
#   scripts/cluster.sh up [--nameservers N] [--groups G] [--replicas R] [--fault-injection]
#                         [--secure]    build (unless SLUICE_BIN_DIR), then start every node
#   scripts/cluster.sh down             stop every node this directory's `up` started
#   scripts/cluster.sh status           node processes + `sluice cluster status`
#   scripts/cluster.sh nodes            one line per node: NAME KIND GROUP REPLICA ADDRESS STATE
#   scripts/cluster.sh nameservers      the nameserver addresses, comma-separated
#   scripts/cluster.sh kill NODE        SIGKILL one node (a crash)
#   scripts/cluster.sh kill-master GROUP   SIGKILL the current master of a broker group
#   scripts/cluster.sh pause NODE | resume NODE      SIGSTOP / SIGCONT one node
#   scripts/cluster.sh partition NODE | heal NODE    cut a replica off from its group's Raft
#                                       traffic (InjectFault RPC; needs --fault-injection)
#   scripts/cluster.sh restart NODE     stop (if running) and start one node
#   scripts/cluster.sh logs NODE [--follow]          print (or follow) a node's log
# Every command takes --dir DIR.
#
# DIR defaults to $SLUICE_CLUSTER_DIR, else ./.cluster. Each node lives in DIR/nodes/NAME (ns-1..,
# broker-a-1, broker-a-2, broker-b-1, ...): its kind, listen address, generated config.toml,
# data/, node.log, node.pid and ready files. Groups are broker-a, broker-b, ...; with
# --replicas R >= 2 each group is a Raft replica group of R brokers whose ports are picked
# before any starts (peers must know each other); with R = 1 (default) each group is one
# standalone broker. A node keeps its address across restarts. DIR/nameservers holds the
# nameserver addresses, comma-separated.
#
# --secure: a fresh cluster gets a random cluster secret and admin secret, a throwaway CA and
# a node certificate in DIR/secure/ and runs with them: every port speaks TLS (gRPC, the
# data port, Raft between replicas, metrics), brokers authenticate and authorize every request
# (the admin is the bootstrap super user), replicas sign their Raft traffic, nameservers
# take only signed registrations and config writes. DIR/secure/env exports
# SLUICE_ACCESS_KEY (admin), SLUICE_SECRET_KEY_FILE, SLUICE_CLUSTER_SECRET_FILE and
# SLUICE_TLS_CA_FILE for `sluice` and `sluice-chaos`; this script uses it itself. See
# docs/security.md.
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
#   SLUICE_HEARTBEAT_MS    broker -> nameserver heartbeat (default: the broker's, 30000)
#   SLUICE_RAFT_TICK_MS, SLUICE_ELECTION_TICKS, SLUICE_MAX_ELECTION_TICKS   Raft timing of
#                          replica groups (default: the broker's, 100 ms and 6..12 ticks)
#   SLUICE_ACK             ack policy of replica groups, quorum|leader (default quorum)
#   SLUICE_DISK_BUDGET_BYTES  brokers count disk use against this budget instead of the file
#                          system (their disk_high/hard ratios apply to it)
#   SLUICE_METRICS         0: brokers serve no Prometheus metrics (default: each on a free port,
#                          printed at start and kept in the node directory's `metrics` file)
#   SLUICE_BROKER_CONFIG   extra TOML lines appended to every broker's config (e.g.
#                          "slave_read_enable = false")
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
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  else
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
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

# sluice-chaos picks ports for replica groups and sends fault-injection requests.
require_chaos_binary() {
  [[ -x $BIN_DIR/sluice-chaos ]] ||
    die "no executable $BIN_DIR/sluice-chaos (needed for replica groups and partitions; it is built with -p sluice-client)"
}

# Sets BIN_DIR from what `up` recorded (restart and status must not rebuild).
recorded_binaries() {
  [[ -f $DIR/bin_dir ]] || die "no cluster in $DIR (run: cluster.sh up --dir $DIR)"
  BIN_DIR=$(<"$DIR/bin_dir")
}

# ---------------------------------------------------------------- nodes

node_dir() { echo "$DIR/nodes/$1"; }

# A node's attribute file (kind, listen, broker_name, replica_id, ...), or $2 when absent.
node_attr() {
  local f
  f=$(node_dir "$1")/$2
  if [[ -f $f ]]; then cat "$f"; else echo "${3:-}"; fi
}

# Node names in start order: nameservers first, so brokers can register at once; then brokers
# by group and replica id.
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

# True if the node runs but is stopped by a signal (SIGSTOP: `pause`).
node_paused() {
  local pid state
  node_running "$1" || return 1
  pid=$(node_pid "$1")
  if [[ -r /proc/$pid/stat ]]; then
    state=$(sed 's/^.*) //' 2>/dev/null <"/proc/$pid/stat" | cut -d' ' -f1) || return 1
  else
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  fi
  [[ $state == T* ]]
}

node_state() {
  if ! node_running "$1"; then
    echo stopped
  elif node_paused "$1"; then
    echo paused
  elif [[ -f $(node_dir "$1")/partitioned ]]; then
    echo partitioned
  else
    echo running
  fi
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
    metrics_line "$d"
  } >"$d/config.toml"
  if [[ -d $DIR/secure ]]; then
    {
      echo "cluster_secret_file = $(toml_str "$DIR/secure/cluster.secret")"
      echo "admin_access_key = \"admin\""
      echo "admin_secret_file = $(toml_str "$DIR/secure/admin.secret")"
      tls_lines
    } >>"$d/config.toml"
  fi
  CMD=("$BIN_DIR/sluice-nameserver" --config "$d/config.toml" --ready-file "$d/ready")
}

# Prometheus metrics on a port of the node's own, kept across restarts in $1/metrics
# (SLUICE_METRICS=0: off). Prints the config line, if any.
metrics_line() {
  local d=$1
  if [[ ${SLUICE_METRICS:-1} == 0 ]]; then
    rm -f "$d/metrics"
  elif [[ ! -s $d/metrics && -x $BIN_DIR/sluice-chaos ]]; then
    echo "127.0.0.1:$("$BIN_DIR/sluice-chaos" free-ports 1)" >"$d/metrics"
  fi
  if [[ -s $d/metrics ]]; then
    echo "metrics_listen = $(toml_str "$(<"$d/metrics")")"
  fi
}

broker_command() {
  local d=$1 ns ns_list="" a addrs item peers_toml=""
  [[ -s $DIR/nameservers ]] || die "no nameserver addresses in $DIR/nameservers"
  ns=$(<"$DIR/nameservers")
  IFS=',' read -r -a addrs <<<"$ns"
  for a in "${addrs[@]}"; do
    ns_list+="${ns_list:+, }$(toml_str "$a")"
  done
  {
    echo "listen = $(toml_str "$(<"$d/listen")")"
    echo "data_dir = $(toml_str "$d/data")"
    echo "nameservers = [$ns_list]"
    echo "broker_name = $(toml_str "$(<"$d/broker_name")")"
    echo "cluster_name = $(toml_str "$(<"$d/cluster")")"
    echo "flush = $(toml_str "$FLUSH")"
    echo "auto_create_topics = true"
    echo "default_queues = $DEFAULT_QUEUES"
    if [[ -n ${SLUICE_HEARTBEAT_MS:-} ]]; then
      echo "heartbeat_interval_ms = $SLUICE_HEARTBEAT_MS"
    fi
    if [[ -n ${SLUICE_DISK_BUDGET_BYTES:-} ]]; then
      echo "disk_budget_bytes = $SLUICE_DISK_BUDGET_BYTES"
    fi
    metrics_line "$d"
    if [[ -n ${SLUICE_BROKER_CONFIG:-} ]]; then
      printf '%s\n' "$SLUICE_BROKER_CONFIG"
    fi
    if [[ -d $DIR/secure ]]; then
      echo "auth_enabled = true"
      echo "auth_admin = \"admin\""
      echo "auth_admin_secret_file = $(toml_str "$DIR/secure/admin.secret")"
      echo "cluster_secret_file = $(toml_str "$DIR/secure/cluster.secret")"
      tls_lines
    fi
    if [[ -f $d/peers ]]; then
      echo "replica_id = $(<"$d/replica_id")"
      echo "ack = $(toml_str "${SLUICE_ACK:-quorum}")"
      [[ -n ${SLUICE_RAFT_TICK_MS:-} ]] && echo "raft_tick_ms = $SLUICE_RAFT_TICK_MS"
      [[ -n ${SLUICE_ELECTION_TICKS:-} ]] && echo "election_ticks = $SLUICE_ELECTION_TICKS"
      [[ -n ${SLUICE_MAX_ELECTION_TICKS:-} ]] && echo "max_election_ticks = $SLUICE_MAX_ELECTION_TICKS"
      echo "enable_fault_injection = $(node_attr "$(basename "$d")" fault_injection false)"
      # peers file: "1=127.0.0.1:4001,2=..." -> peers = { 1 = "127.0.0.1:4001", ... }
      IFS=',' read -r -a addrs <<<"$(<"$d/peers")"
      for item in "${addrs[@]}"; do
        peers_toml+="${peers_toml:+, }${item%%=*} = $(toml_str "${item#*=}")"
      done
      echo "peers = { $peers_toml }"
    fi
  } >"$d/config.toml"
  CMD=("$BIN_DIR/sluice-broker" --config "$d/config.toml" --ready-file "$d/ready")
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
  # A fresh process has no injected faults.
  rm -f "$d/ready" "$d/node.pid" "$d/partitioned"
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
      if [[ ! -f $d/peers ]]; then
        echo "(if its pinned port $(<"$d/listen") is taken, let it pick a new one: echo 127.0.0.1:0 >$d/listen)" >&2
      fi
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
  if [[ -s $d/metrics ]]; then
    echo "$name ($kind) pid $pid listening on $addr, metrics at http://$(<"$d/metrics")/metrics"
  else
    echo "$name ($kind) pid $pid listening on $addr"
  fi
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
  # A paused node handles SIGTERM only once it runs again.
  kill -CONT "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while node_running "$name" && ((SECONDS < deadline)); do
    sleep 0.1
  done
  if node_running "$name"; then
    echo "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while node_running "$name"; do sleep 0.1; done
  fi
  rm -f "$(node_dir "$name")/node.pid" "$(node_dir "$name")/partitioned"
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

# `sluice cluster status --json` as lines "BROKER_NAME REPLICA_ID ROLE REACHABLE TERM ADDRESS",
# one per broker replica.
status_rows() {
  "$BIN_DIR/sluice" --nameservers "$(<"$DIR/nameservers")" cluster status --json 2>/dev/null |
    awk -f "$REPO_ROOT/scripts/lib/status_rows.awk"
}

# Prints the address of group $1's master: among its replicas that answer and report MASTER
# (the broker's own view, newer than any registration), the one with the highest term.
group_master_address() {
  status_rows | awk -v g="$1" '$1 == g && $3 == "MASTER" && $4 == "true"' | sort -k5,5nr |
    awk 'NR == 1 { print $6 }'
}

# Waits (bounded) until broker group $1 has a master.
wait_group_master() {
  local group=$1 deadline
  deadline=$((SECONDS + READY_TIMEOUT))
  until [[ -n $(group_master_address "$group") ]]; do
    if ((SECONDS >= deadline)); then
      echo "cluster.sh: group $group has no master after ${READY_TIMEOUT}s" >&2
      return 1
    fi
    sleep 0.2
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

# ---------------------------------------------------------------- creating a cluster

# Group name of index i (0 -> broker-a).
group_name() {
  local letters=abcdefghijklmnopqrstuvwxyz
  echo "broker-${letters:$1:1}"
}

# Picks R free loopback ports for the replicas of group $1 and writes their listen and peers
# files. Ports are free when picked; a start that finds one taken picks again (see cmd_up).
assign_group_ports() {
  local group=$1 ports=() i peers=""
  require_chaos_binary
  mapfile -t ports < <("$BIN_DIR/sluice-chaos" free-ports "$REPLICAS")
  ((${#ports[@]} == REPLICAS)) || die "could not pick $REPLICAS free ports"
  for ((i = 1; i <= REPLICAS; i++)); do
    peers+="${peers:+,}$i=127.0.0.1:${ports[i - 1]}"
  done
  for ((i = 1; i <= REPLICAS; i++)); do
    echo "127.0.0.1:${ports[i - 1]}" >"$(node_dir "$group-$i")/listen"
    echo "$peers" >"$(node_dir "$group-$i")/peers"
  done
}

# The TLS settings of a --secure cluster's nodes (same keys for nameservers and brokers);
# nothing for a directory secured before certificates were made.
tls_lines() {
  [[ -f $DIR/secure/node.crt ]] || return 0
  echo "tls_cert_file = $(toml_str "$DIR/secure/node.crt")"
  echo "tls_key_file = $(toml_str "$DIR/secure/node.key")"
  echo "tls_ca_file = $(toml_str "$DIR/secure/ca.crt")"
}

# A random secret (hex) in file $1, readable by its owner only.
new_secret() {
  (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$1")
}

# DIR/secure: the secrets of a --secure cluster and the environment that signs with them.
create_secrets() {
  mkdir -p "$DIR/secure"
  chmod 700 "$DIR/secure"
  new_secret "$DIR/secure/cluster.secret"
  new_secret "$DIR/secure/admin.secret"
  # A throwaway CA and one certificate for every node (all on loopback), made in Rust.
  "$BIN_DIR/sluice" certs --dir "$DIR/secure" --host 127.0.0.1 --host localhost >/dev/null
  {
    echo "export SLUICE_ACCESS_KEY=admin"
    echo "export SLUICE_SECRET_KEY_FILE=$DIR/secure/admin.secret"
    echo "export SLUICE_CLUSTER_SECRET_FILE=$DIR/secure/cluster.secret"
    echo "export SLUICE_TLS_CA_FILE=$DIR/secure/ca.crt"
  } >"$DIR/secure/env"
  # shellcheck disable=SC1091 # just written
  source "$DIR/secure/env"
}

create_cluster() {
  local i g r
  if [[ $SECURE == 1 ]]; then
    create_secrets
  fi
  for ((i = 1; i <= NAMESERVERS; i++)); do
    create_node "ns-$i" nameserver
  done
  for ((g = 0; g < GROUPS_N; g++)); do
    local group
    group=$(group_name "$g")
    if ((REPLICAS == 1)); then
      create_node "$group-1" broker broker_name="$group" cluster="$CLUSTER_NAME"
    else
      for ((r = 1; r <= REPLICAS; r++)); do
        create_node "$group-$r" broker broker_name="$group" cluster="$CLUSTER_NAME" \
          replica_id="$r" fault_injection="$FAULT_INJECTION"
      done
      assign_group_ports "$group"
    fi
  done
}

# Starts the brokers of one group; a replica group also needs its master elected.
start_group() {
  local group=$1 n
  for n in $(list_nodes); do
    [[ $(node_kind "$n") == broker && $(node_attr "$n" broker_name) == "$group" ]] || continue
    start_node "$n" || return 1
  done
  for n in $(list_nodes); do
    [[ $(node_kind "$n") == broker && $(node_attr "$n" broker_name) == "$group" ]] || continue
    wait_registered "$n" || return 1
  done
  if [[ -f $(node_dir "$group-1")/peers ]]; then
    wait_group_master "$group" || return 1
    echo "$group: master at $(group_master_address "$group")"
  fi
}

# The broker groups, in order.
list_groups() {
  local n
  for n in $(list_nodes); do
    [[ $(node_kind "$n") == broker ]] && node_attr "$n" broker_name
  done | awk '!seen[$0]++'
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local n any_running=0 all_running=1 nodes fresh=0 group attempt
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
    create_cluster
    fresh=1
    nodes=$(list_nodes)
  else
    if [[ $SHAPE_GIVEN == 1 ]]; then
      echo "note: $DIR already holds a cluster; --nameservers/--groups/--replicas/--fault-injection apply to new clusters only"
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
  for group in $(list_groups); do
    for attempt in 1 2 3; do
      start_group "$group" && continue 2
      # A port picked for a fresh replica group may have been taken by another process
      # before the broker bound it: stop the group and pick new ports (its data is empty).
      if [[ $fresh == 1 && -f $(node_dir "$group-1")/peers && $attempt -lt 3 ]]; then
        echo "cluster.sh: starting group $group failed; retrying with new ports" >&2
        for n in $(list_nodes); do
          if [[ $(node_attr "$n" broker_name) == "$group" ]]; then
            stop_node "$n" >/dev/null
            rm -rf "$(node_dir "$n")/data" && mkdir -p "$(node_dir "$n")/data"
          fi
        done
        assign_group_ports "$group"
      else
        rollback
      fi
    done
    rollback
  done
  echo "nameservers: $(<"$DIR/nameservers")"
  if [[ -d $DIR/secure ]]; then
    echo "secured: source $DIR/secure/env to sign requests as the admin"
  fi
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
  printf '%-12s %-11s %-8s %-11s %s\n' NODE KIND PID STATE ADDRESS
  for n in $(list_nodes); do
    pid=$(node_pid "$n") || pid=-
    state=$(node_state "$n")
    [[ $state == stopped ]] && rc=1
    printf '%-12s %-11s %-8s %-11s %s\n' "$n" "$(node_kind "$n")" "$pid" "$state" \
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

# Machine-readable node list (the control interface sluice-chaos reads).
cmd_nodes() {
  local n
  printf '# NAME\tKIND\tGROUP\tREPLICA\tADDRESS\tSTATE\n'
  for n in $(list_nodes); do
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$(node_kind "$n")" \
      "$(node_attr "$n" broker_name -)" "$(node_attr "$n" replica_id 0)" \
      "$(<"$(node_dir "$n")/listen")" "$(node_state "$n")"
  done
}

cmd_nameservers() {
  [[ -s $DIR/nameservers ]] || die "no nameserver addresses in $DIR (run: cluster.sh up --dir $DIR)"
  cat "$DIR/nameservers"
}

require_node() {
  [[ -n $NODE ]] || die "$COMMAND needs a node name (one of: $(list_nodes | tr '\n' ' '))"
  [[ -f $(node_dir "$NODE")/kind ]] || die "no node $NODE in $DIR (nodes: $(list_nodes | tr '\n' ' '))"
}

require_running() {
  node_running "$NODE" || die "$NODE is not running"
}

kill_node() {
  local name=$1 pid
  pid=$(node_pid "$name")
  kill -KILL "$pid"
  while node_running "$name"; do sleep 0.1; done
  rm -f "$(node_dir "$name")/node.pid" "$(node_dir "$name")/partitioned"
  echo "$name (pid $pid) killed"
}

cmd_kill() {
  require_node
  if ! node_running "$NODE"; then
    echo "$NODE is not running"
    return 0
  fi
  kill_node "$NODE"
}

cmd_kill_master() {
  local group=$NODE addr n
  [[ -n $group ]] || die "kill-master needs a broker group (one of: $(list_groups | tr '\n' ' '))"
  list_groups | grep -qxF "$group" || die "no broker group $group in $DIR (groups: $(list_groups | tr '\n' ' '))"
  recorded_binaries
  addr=$(group_master_address "$group")
  [[ -n $addr ]] || die "group $group has no reachable master right now"
  for n in $(list_nodes); do
    if [[ $(node_attr "$n" broker_name) == "$group" && $(<"$(node_dir "$n")/listen") == "$addr" ]]; then
      node_running "$n" || die "the master $n ($addr) is not a running node of $DIR"
      echo "master of $group is $n ($addr)"
      kill_node "$n"
      return 0
    fi
  done
  die "the master of $group ($addr) is not a node of $DIR"
}

cmd_pause() {
  require_node
  require_running
  if node_paused "$NODE"; then
    echo "$NODE is already paused"
    return 0
  fi
  kill -STOP "$(node_pid "$NODE")"
  echo "$NODE (pid $(node_pid "$NODE")) paused"
}

cmd_resume() {
  require_node
  require_running
  kill -CONT "$(node_pid "$NODE")"
  echo "$NODE (pid $(node_pid "$NODE")) resumed"
}

# partition/heal: the node's Raft traffic to and from the rest of its group is dropped (by the
# node itself: fault injection). Clients and nameservers still reach it.
cmd_partition() {
  require_node
  require_running
  local d others="" n
  d=$(node_dir "$NODE")
  [[ -f $d/peers ]] || die "$NODE is not a member of a replica group"
  [[ $(node_attr "$NODE" fault_injection false) == true ]] ||
    die "$NODE runs without fault injection (create the cluster with: up --fault-injection)"
  recorded_binaries
  require_chaos_binary
  for n in $(list_nodes); do
    if [[ $n != "$NODE" && $(node_attr "$n" broker_name) == $(<"$d/broker_name") ]]; then
      others+=" $(<"$(node_dir "$n")/replica_id")"
    fi
  done
  # shellcheck disable=SC2086 # one argument per replica id
  "$BIN_DIR/sluice-chaos" fault --addr "$(<"$d/listen")" isolate $others
  touch "$d/partitioned"
}

cmd_heal() {
  require_node
  require_running
  local d
  d=$(node_dir "$NODE")
  [[ -f $d/peers ]] || die "$NODE is not a member of a replica group"
  recorded_binaries
  require_chaos_binary
  "$BIN_DIR/sluice-chaos" fault --addr "$(<"$d/listen")" heal
  rm -f "$d/partitioned"
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
GROUPS_N=1
REPLICAS=1
FAULT_INJECTION=false
SECURE=0
SHAPE_GIVEN=0
FOLLOW=0
# Value of option $1 given as "$1 VALUE" (shifts 2) or "$1=VALUE" (shifts 1): sets OPT_VALUE
# and OPT_SHIFT.
opt_value() {
  if [[ $2 == *=* ]]; then
    OPT_VALUE=${2#*=}
    OPT_SHIFT=1
  else
    (($3 >= 2)) || die "$1 needs a value"
    OPT_VALUE=$4
    OPT_SHIFT=2
  fi
}
while (($# > 0)); do
  case $1 in
    --dir | --dir=*)
      opt_value --dir "$1" $# "${2:-}"
      DIR=$OPT_VALUE
      shift "$OPT_SHIFT"
      ;;
    --nameservers | --nameservers=*)
      opt_value --nameservers "$1" $# "${2:-}"
      NAMESERVERS=$OPT_VALUE SHAPE_GIVEN=1
      shift "$OPT_SHIFT"
      ;;
    --groups | --groups=*)
      opt_value --groups "$1" $# "${2:-}"
      GROUPS_N=$OPT_VALUE SHAPE_GIVEN=1
      shift "$OPT_SHIFT"
      ;;
    --replicas | --replicas=*)
      opt_value --replicas "$1" $# "${2:-}"
      REPLICAS=$OPT_VALUE SHAPE_GIVEN=1
      shift "$OPT_SHIFT"
      ;;
    --fault-injection) FAULT_INJECTION=true SHAPE_GIVEN=1; shift ;;
    --secure) SECURE=1 SHAPE_GIVEN=1; shift ;;
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
if ! is_uint "$GROUPS_N" || ((10#$GROUPS_N < 1 || 10#$GROUPS_N > 26)); then
  die "--groups must be within 1..26"
fi
if ! is_uint "$REPLICAS" || ((10#$REPLICAS < 1 || 10#$REPLICAS > 9)); then
  die "--replicas must be within 1..9"
fi
NAMESERVERS=$((10#$NAMESERVERS)) GROUPS_N=$((10#$GROUPS_N)) REPLICAS=$((10#$REPLICAS))
is_uint "$READY_TIMEOUT" || die "SLUICE_READY_TIMEOUT must be whole seconds"
is_uint "$STOP_TIMEOUT" || die "SLUICE_STOP_TIMEOUT must be whole seconds"

[[ -n $COMMAND ]] || usage 2
case $COMMAND in
  up | down | status | nodes | nameservers | kill | kill-master | pause | resume | partition | heal | restart | logs) ;;
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
# A secured cluster: this script's own `sluice` and `sluice-chaos` calls sign as its admin.
if [[ -f $DIR/secure/env ]]; then
  # shellcheck disable=SC1091 # written by create_secrets
  source "$DIR/secure/env"
fi

# One cluster.sh at a time per directory; different directories never collide. Read-only
# commands and signals (pause/resume/partition/heal) do not wait for the lock, so a chaos run
# can act while nobody else changes the node set.
case $COMMAND in
  up | down | kill | kill-master | restart)
    if command -v flock >/dev/null; then
      exec 9>"$DIR/.lock"
      flock -w "$READY_TIMEOUT" 9 || die "another cluster.sh is working on $DIR"
    fi
    ;;
esac

case $COMMAND in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  nodes) cmd_nodes ;;
  nameservers) cmd_nameservers ;;
  kill) cmd_kill ;;
  kill-master) cmd_kill_master ;;
  pause) cmd_pause ;;
  resume) cmd_resume ;;
  partition) cmd_partition ;;
  heal) cmd_heal ;;
  restart) cmd_restart ;;
  logs) cmd_logs ;;
esac
