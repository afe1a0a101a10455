#!/usr/bin/env bash
# Deploys a Sluice cluster to the hosts of an inventory file and manages it there.
#
#   scripts/deploy.sh --inventory FILE COMMAND [NODE]
#
#   up                  install, then start every node (nameservers first) and check them
#   install             generate each node's config.toml and systemd unit, copy the release
#                       binaries and the node files to its host
#   start|stop [NODE]   start / stop one node or all; down = stop all
#   status              each node's state + `sluice cluster status`
#   nodes               one line per node: NAME KIND GROUP REPLICA ADDRESS STATE
#   nameservers         the nameserver addresses, comma-separated
#   kill NODE | restart NODE | pause NODE | resume NODE | logs NODE
#   partition NODE | heal NODE   cut a node's host off the network (netns: its link goes down)
#                       or, over ssh, its Raft traffic (InjectFault RPC; needs fault_injection)
#   netns-create | netns-destroy   (netns transport) create / delete the namespaces, the bridge
#                       and the veth links the inventory describes
#   client CMD...       run CMD where clients reach the cluster (netns: in the client namespace)
#   bin-dir             print the local directory of the binaries that get deployed
#
# Transports (`transport` in the inventory): `ssh` runs `ssh HOST cmd`, copies with scp and
# runs each node as the systemd unit sluice-NAME; `netns` treats each HOST as a network
# namespace on this machine: `ip netns exec HOST cmd`, cp instead of scp (namespaces share the
# file system) and a plain background start instead of systemd (the unit is still generated
# and checked with `systemd-analyze verify` when available). Everything else, config, unit,
# copy, start checks, is the same code for both.
#
# Inventory (whitespace-separated; `#` starts a comment):
#   transport ssh|netns         remote_dir DIR          (default /opt/sluice; netns: next to
#   ssh_user USER               ssh_options OPTS...      the inventory, .deploy/NAME/root)
#   service_user USER (ssh: the units' User=; default root)
#   sudo CMD (default sudo; "-" for none)               cluster_name NAME
#   flush async|sync   ack quorum|leader   fault_injection true|false
#   raft_tick_ms N   election_ticks N   max_election_ticks N   heartbeat_interval_ms N
#   default_queues N   disk_budget_bytes N   data_port N (brokers' data port; default any free port)
#   broker_expiry_ms N (nameservers)
#   netns_prefix P  (netns: link names; default the inventory's name)
#   netns_bridge NS (netns: namespace holding the bridge)   netns_client NS IP/PREFIX
#   node NAME nameserver HOST HOST_IP:PORT [cert=FILE key=FILE]
#   node NAME broker HOST HOST_IP:PORT group=GROUP replica=ID [cert=FILE key=FILE]
# Security (docs/security.md; FILEs are local paths, copied to the nodes, keys and secrets
# readable by the service only):
#   tls_ca FILE                 TLS on every node: each node needs cert= and key= (PEM, for
#                               its HOST_IP); clients then need SLUICE_TLS_CA_FILE
#   cluster_secret_file FILE    signed registrations and Raft traffic
#   auth_admin KEY   auth_admin_secret_file FILE   authentication on, with this bootstrap admin
# In netns mode HOST is the namespace and HOST_IP its address on the bridge (netns_cidr, default
# 24 bits). See docs/operations.md.
#
# Environment: SLUICE_BIN_DIR (binaries to deploy; else cargo build --release), CARGO_TARGET_DIR,
# SLUICE_READY_TIMEOUT (default 60 s), SLUICE_STOP_TIMEOUT (default 15 s),
# SLUICE_DEPLOY_DRY_RUN=1 (print the remote commands and copies instead of running them).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
READY_TIMEOUT=${SLUICE_READY_TIMEOUT:-60}
DRY_RUN=${SLUICE_DEPLOY_DRY_RUN:-0}
STOP_TIMEOUT=${SLUICE_STOP_TIMEOUT:-15}
BINARIES=(sluice-nameserver sluice-broker sluice sluice-chaos)

die() {
  echo "deploy.sh: $*" >&2
  exit 1
}

usage() {
  sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

toml_str() {
  local s=${1//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}

# Quotes each argument for a POSIX shell on the other side of ssh / sh -c.
shell_quote() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }'${a//\'/\'\\\'\'}'"
  done
  printf '%s' "$out"
}

# ---------------------------------------------------------------- inventory

declare -A SET=()
NODES=()
declare -A ROLE=() HOST=() ADDR=() GROUP=() REPLICA=() CERT=() KEY=()

load_inventory() {
  local file=$1 lineno=0 line f kv
  [[ -f $file ]] || die "no inventory file $file"
  while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    line=${line%%#*}
    read -r -a f <<<"$line" || true
    ((${#f[@]} == 0)) && continue
    if [[ ${f[0]} == node ]]; then
      ((${#f[@]} >= 5)) || die "$file:$lineno: expected: node NAME ROLE HOST ADDRESS [group=G replica=N]"
      local name=${f[1]}
      [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "$file:$lineno: bad node name $name"
      [[ -z ${ROLE[$name]:-} ]] || die "$file:$lineno: node $name is listed twice"
      case ${f[2]} in nameserver | broker) ;; *) die "$file:$lineno: role must be nameserver or broker, not ${f[2]}" ;; esac
      [[ ${f[4]} =~ ^[^:]+:[0-9]+$ ]] || die "$file:$lineno: address ${f[4]} is not HOST:PORT"
      NODES+=("$name")
      ROLE[$name]=${f[2]}
      HOST[$name]=${f[3]}
      ADDR[$name]=${f[4]}
      GROUP[$name]=""
      REPLICA[$name]=0
      for kv in "${f[@]:5}"; do
        case $kv in
          group=?*) GROUP[$name]=${kv#group=} ;;
          cert=?*) CERT[$name]=${kv#cert=} ;;
          key=?*) KEY[$name]=${kv#key=} ;;
          replica=*)
            if ! is_uint "${kv#replica=}" || ((${kv#replica=} < 1)); then
              die "$file:$lineno: replica must be >= 1"
            fi
            REPLICA[$name]=${kv#replica=}
            ;;
          *) die "$file:$lineno: unknown node attribute $kv" ;;
        esac
      done
      if [[ ${ROLE[$name]} == broker ]]; then
        [[ -n ${GROUP[$name]} ]] || die "$file:$lineno: broker $name needs group=NAME"
      fi
    else
      SET[${f[0]}]="${f[*]:1}"
    fi
  done <"$file"
  ((${#NODES[@]} > 0)) || die "$file lists no node"
  local n has_ns=0 g
  for n in "${NODES[@]}"; do [[ ${ROLE[$n]} == nameserver ]] && has_ns=1; done
  ((has_ns)) || die "$file lists no nameserver"
  # Replica groups: ids unique, every member with an id.
  for g in $(list_groups); do
    local members ids
    members=$(group_members "$g" | wc -l)
    ids=$(for n in $(group_members "$g"); do echo "${REPLICA[$n]}"; done | sort -u | wc -l)
    if ((members > 1)); then
      for n in $(group_members "$g"); do
        ((REPLICA[$n] >= 1)) || die "group $g has $members brokers: $n needs replica=ID"
      done
      ((ids == members)) || die "group $g: replica ids must be unique"
    fi
  done
  check_security_files
  TRANSPORT=$(setting transport ssh)
  case $TRANSPORT in ssh | netns) ;; *) die "transport must be ssh or netns, not $TRANSPORT" ;; esac
  INV_NAME=$(basename "$file")
  INV_NAME=${INV_NAME%.*}
  STAGE=$(cd "$(dirname "$file")" && pwd)/.deploy/$INV_NAME
  if [[ $TRANSPORT == netns ]]; then
    REMOTE_DIR=$(setting remote_dir "$STAGE/root")
  else
    REMOTE_DIR=$(setting remote_dir /opt/sluice)
  fi
  [[ $REMOTE_DIR == /* && $REMOTE_DIR != *[[:space:]]* ]] ||
    die "remote_dir must be an absolute path without blanks"
  SUDO=$(setting sudo sudo)
  [[ $SUDO == - ]] && SUDO=""
  return 0
}

setting() { echo "${SET[$1]:-${2:-}}"; }

list_groups() {
  local n
  for n in "${NODES[@]}"; do
    [[ ${ROLE[$n]} == broker ]] && echo "${GROUP[$n]}"
  done | awk '!seen[$0]++'
}

group_members() {
  local n
  for n in "${NODES[@]}"; do
    [[ ${ROLE[$n]} == broker && ${GROUP[$n]} == "$1" ]] && echo "$n"
  done
}

list_hosts() { for n in "${NODES[@]}"; do echo "${HOST[$n]}"; done | awk '!seen[$0]++'; }

nameserver_list() {
  local n out=""
  for n in "${NODES[@]}"; do
    [[ ${ROLE[$n]} == nameserver ]] && out+="${out:+,}${ADDR[$n]}"
  done
  echo "$out"
}

require_node() {
  [[ -n $NODE ]] || die "$COMMAND needs a node name (one of: ${NODES[*]})"
  [[ -n ${ROLE[$NODE]:-} ]] || die "no node $NODE in the inventory (nodes: ${NODES[*]})"
}

# ---------------------------------------------------------------- transport

# Runs ARGV, or with SLUICE_DEPLOY_DRY_RUN=1 prints it (shell-quoted) and succeeds silently.
t_exec() {
  if [[ $DRY_RUN == 1 ]]; then
    echo "+ $(shell_quote "$@")"
  else
    "$@"
  fi
}

# ssh options and login of the ssh transport: sets SSH_OPTS and SSH_TARGET for HOST.
ssh_target() {
  SSH_TARGET=$1
  [[ -n $(setting ssh_user) ]] && SSH_TARGET="$(setting ssh_user)@$1"
  read -r -a SSH_OPTS <<<"$(setting ssh_options "-o BatchMode=yes -o ConnectTimeout=10")"
}

# Runs a shell command line on HOST: over ssh, or in the namespace HOST.
t_run() {
  local host=$1 cmd=$2
  if [[ $TRANSPORT == netns ]]; then
    t_exec ip netns exec "$host" sh -c "$cmd"
  else
    ssh_target "$host"
    t_exec ssh "${SSH_OPTS[@]}" "$SSH_TARGET" "$cmd"
  fi
}

# Copies a local file to PATH on HOST (namespaces share this machine's file system). The file
# lands under a temporary name first, so a running node never sees half a file.
t_copy() {
  local host=$1 src=$2 dst=$3
  if [[ $TRANSPORT == netns ]]; then
    t_exec cp "$src" "$dst.tmp"
  else
    ssh_target "$host"
    t_exec scp -q "${SSH_OPTS[@]}" "$src" "$SSH_TARGET:$dst.tmp"
  fi
  t_run "$host" "mv -f $(shell_quote "$dst.tmp" "$dst")"
}

# Every security file the inventory names exists here; with tls_ca, every node has its pair.
check_security_files() {
  local n f
  for f in "$(setting tls_ca)" "$(setting cluster_secret_file)" "$(setting auth_admin_secret_file)"; do
    [[ -z $f || -f $f ]] || die "no file $f (named in the inventory)"
  done
  if [[ -n $(setting auth_admin) && -z $(setting auth_admin_secret_file) ]]; then
    die "auth_admin needs auth_admin_secret_file"
  fi
  for n in "${NODES[@]}"; do
    if [[ -n $(setting tls_ca) ]]; then
      [[ -n ${CERT[$n]:-} && -n ${KEY[$n]:-} ]] || die "tls_ca is set: node $n needs cert=FILE key=FILE"
    fi
    for f in "${CERT[$n]:-}" "${KEY[$n]:-}"; do
      [[ -z $f || -f $f ]] || die "node $n: no file $f"
    done
  done
}

# The security lines of node $1's config (the files as installed by install_security).
security_config() {
  local n=$1 d
  d=$(node_dir "$n")
  if [[ -n $(setting tls_ca) ]]; then
    echo "tls_cert_file = $(toml_str "$d/tls/node.crt")"
    echo "tls_key_file = $(toml_str "$d/tls/node.key")"
    echo "tls_ca_file = $(toml_str "$d/tls/ca.crt")"
  fi
  if [[ -n $(setting cluster_secret_file) ]]; then
    echo "cluster_secret_file = $(toml_str "$d/secrets/cluster.secret")"
  fi
  if [[ -n $(setting auth_admin) ]]; then
    if [[ ${ROLE[$n]} == nameserver ]]; then
      echo "admin_access_key = $(toml_str "$(setting auth_admin)")"
      echo "admin_secret_file = $(toml_str "$d/secrets/admin.secret")"
    else
      echo "auth_enabled = true"
      echo "auth_admin = $(toml_str "$(setting auth_admin)")"
      echo "auth_admin_secret_file = $(toml_str "$d/secrets/admin.secret")"
    fi
  fi
}

# Copies node $1's certificate, key, CA and secrets to its host.
install_security() {
  local n=$1 h d
  h=${HOST[$n]}
  d=$(node_dir "$n")
  t_run "$h" "mkdir -p $(shell_quote "$d/tls" "$d/secrets") && chmod 700 $(shell_quote "$d/tls" "$d/secrets")"
  if [[ -n $(setting tls_ca) ]]; then
    t_copy "$h" "$(setting tls_ca)" "$d/tls/ca.crt"
    t_copy "$h" "${CERT[$n]}" "$d/tls/node.crt"
    t_copy "$h" "${KEY[$n]}" "$d/tls/node.key"
  fi
  [[ -n $(setting cluster_secret_file) ]] && t_copy "$h" "$(setting cluster_secret_file)" "$d/secrets/cluster.secret"
  [[ -n $(setting auth_admin_secret_file) ]] && t_copy "$h" "$(setting auth_admin_secret_file)" "$d/secrets/admin.secret"
  t_run "$h" "find $(shell_quote "$d/tls" "$d/secrets") -type f -exec chmod 600 {} +"
}

# ---------------------------------------------------------------- node files

node_dir() { echo "$REMOTE_DIR/nodes/$1"; }
unit_name() { echo "sluice-$1.service"; }

# The node's command line (shared by the systemd unit and the namespace start).
node_cmdline() {
  local n=$1 d
  d=$(node_dir "$n")
  printf '%s' "$REMOTE_DIR/bin/sluice-${ROLE[$n]} --config $d/config.toml --ready-file $d/ready"
}

write_config() {
  local n=$1 out=$2 ns_toml="" a peers="" m
  if [[ ${ROLE[$n]} == nameserver ]]; then
    {
      echo "listen = $(toml_str "${ADDR[$n]}")"
      echo "data_dir = $(toml_str "$(node_dir "$n")/data")"
      [[ -n $(setting broker_expiry_ms) ]] && echo "broker_expiry_ms = $(setting broker_expiry_ms)"
      security_config "$n"
    } >"$out"
    return 0
  fi
  IFS=',' read -r -a addrs <<<"$(nameserver_list)"
  for a in "${addrs[@]}"; do ns_toml+="${ns_toml:+, }$(toml_str "$a")"; done
  {
    echo "listen = $(toml_str "${ADDR[$n]}")"
    echo "data_dir = $(toml_str "$(node_dir "$n")/data")"
    echo "nameservers = [$ns_toml]"
    echo "broker_name = $(toml_str "${GROUP[$n]}")"
    echo "cluster_name = $(toml_str "$(setting cluster_name DefaultCluster)")"
    echo "flush = $(toml_str "$(setting flush async)")"
    echo "auto_create_topics = $(setting auto_create_topics true)"
    local k
    for k in heartbeat_interval_ms default_queues disk_budget_bytes data_port; do
      [[ -n $(setting $k) ]] && echo "$k = $(setting $k)"
    done
    if (($(group_members "${GROUP[$n]}" | wc -l) > 1)); then
      echo "replica_id = ${REPLICA[$n]}"
      echo "ack = $(toml_str "$(setting ack quorum)")"
      echo "enable_fault_injection = $(setting fault_injection false)"
      for k in raft_tick_ms election_ticks max_election_ticks; do
        [[ -n $(setting $k) ]] && echo "$k = $(setting $k)"
      done
      for m in $(group_members "${GROUP[$n]}"); do
        peers+="${peers:+, }${REPLICA[$m]} = $(toml_str "${ADDR[$m]}")"
      done
      echo "peers = { $peers }"
    fi
    security_config "$n"
  } >"$out"
}

write_unit() {
  local n=$1 out=$2 d user
  d=$(node_dir "$n")
  user=$(setting service_user)
  cat >"$out" <<EOF
# Generated by scripts/deploy.sh from $INV_NAME; regenerate instead of editing.
[Unit]
Description=Sluice ${ROLE[$n]} $n
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
WorkingDirectory=$d
ExecStartPre=/bin/rm -f $d/ready
ExecStart=$(node_cmdline "$n")
Restart=on-failure
RestartSec=2
# SIGTERM: brokers unregister and flush; SIGKILL after the timeout.
KillSignal=SIGTERM
TimeoutStopSec=${STOP_TIMEOUT}
LimitNOFILE=65536
# The allocator's regions stay on 4 KiB pages even where the host's THP mode is "always"
# (fresh 2 MiB faults cost a broker more than huge pages save; docs/operations.md).
Environment=MIMALLOC_ALLOW_THP=0
StandardOutput=append:$d/node.log
StandardError=append:$d/node.log

[Install]
WantedBy=multi-user.target
EOF
  if [[ -n $user ]]; then
    sed -i "s/^\[Service\]\$/[Service]\nUser=$user/" "$out"
  fi
}

# Builds (or finds) the binaries to deploy; sets BIN_DIR.
resolve_binaries() {
  if [[ -n ${SLUICE_BIN_DIR:-} ]]; then
    BIN_DIR=$(cd "$SLUICE_BIN_DIR" && pwd) || die "SLUICE_BIN_DIR $SLUICE_BIN_DIR is not a directory"
  else
    local target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
    [[ $target == /* ]] || target=$PWD/$target
    echo "building release binaries (target dir $target)" >&2
    CARGO_TARGET_DIR=$target cargo build --release --manifest-path "$REPO_ROOT/Cargo.toml" \
      -p sluice-nameserver -p sluice-broker -p sluice-client >&2
    BIN_DIR=$target/release
  fi
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x $BIN_DIR/$b ]] || die "no executable $BIN_DIR/$b"
  done
}

cmd_install() {
  resolve_binaries
  mkdir -p "$STAGE"
  echo "$BIN_DIR" >"$STAGE/bin_dir"
  local n h b
  for n in "${NODES[@]}"; do
    mkdir -p "$STAGE/$n"
    write_config "$n" "$STAGE/$n/config.toml"
    write_unit "$n" "$STAGE/$n/$(unit_name "$n")"
  done
  for h in $(list_hosts); do
    echo "installing binaries on $h:$REMOTE_DIR/bin"
    t_run "$h" "mkdir -p $(shell_quote "$REMOTE_DIR/bin")"
    for b in "${BINARIES[@]}"; do
      t_copy "$h" "$BIN_DIR/$b" "$REMOTE_DIR/bin/$b"
    done
    t_run "$h" "chmod 755 $(shell_quote "$REMOTE_DIR/bin")/*"
  done
  for n in "${NODES[@]}"; do
    h=${HOST[$n]}
    local d unit
    d=$(node_dir "$n")
    unit=$(unit_name "$n")
    t_run "$h" "mkdir -p $(shell_quote "$d/data")"
    t_copy "$h" "$STAGE/$n/config.toml" "$d/config.toml"
    t_copy "$h" "$STAGE/$n/$unit" "$d/$unit"
    install_security "$n"
    if [[ $TRANSPORT == ssh ]]; then
      t_run "$h" "$SUDO install -m 644 $(shell_quote "$d/$unit" "/etc/systemd/system/$unit")"
      if [[ -n $(setting service_user) ]]; then
        # The service writes its data, log and ready file there.
        t_run "$h" "$SUDO chown -R $(shell_quote "$(setting service_user)" "$d")"
      fi
    fi
    verify_unit "$n"
    echo "installed $n on $h ($d)"
  done
  if [[ $TRANSPORT == ssh ]]; then
    for h in $(list_hosts); do t_run "$h" "$SUDO systemctl daemon-reload"; done
  fi
}

# Checks a generated unit with systemd-analyze (on the host over ssh, here in netns mode);
# skipped with a note where systemd-analyze is missing.
verify_unit() {
  local n=$1 d unit out
  [[ $DRY_RUN == 1 && $TRANSPORT == netns ]] && return 0
  d=$(node_dir "$n")
  unit=$(unit_name "$n")
  if [[ $TRANSPORT == netns ]]; then
    command -v systemd-analyze >/dev/null || {
      echo "note: no systemd-analyze here; $unit not verified"
      return 0
    }
    # The unit's log file directives need the directory; verify reads the unit as a file.
    if ! out=$(systemd-analyze verify "$d/$unit" 2>&1); then
      die "systemd-analyze verify $unit failed: $out"
    fi
    # Warnings about the host's own units are not ours; our unit's lines are.
    if grep -F "$unit" <<<"$out" >&2; then
      die "systemd-analyze verify reports problems in $unit"
    fi
  else
    t_run "${HOST[$n]}" "if command -v systemd-analyze >/dev/null; then systemd-analyze verify /etc/systemd/system/$unit; fi"
  fi
}

# ---------------------------------------------------------------- services

# The node's process state on its host: running, paused or stopped (one remote call).
node_state() {
  local n=$1 d
  d=$(node_dir "$n")
  if [[ $DRY_RUN == 1 ]]; then
    echo stopped
  elif [[ $TRANSPORT == ssh ]]; then
    # shellcheck disable=SC2016 # expanded on the host
    t_run "${HOST[$n]}" 'pid=$(systemctl show -p MainPID --value '"$(unit_name "$n")"'); if [ "${pid:-0}" = 0 ]; then echo stopped; elif grep -q "^[^)]*) T" /proc/$pid/stat 2>/dev/null; then echo paused; else echo running; fi'
  else
    # The pid file names the process; its command line must name this node's config.
    # shellcheck disable=SC2016 # expanded by the inner shell
    t_run "${HOST[$n]}" 'pid=$(cat '"$(shell_quote "$d/node.pid")"' 2>/dev/null) || { echo stopped; exit 0; }; if ! tr "\0" " " </proc/$pid/cmdline 2>/dev/null | grep -qF '"$(shell_quote "$d/config.toml")"'; then echo stopped; elif sed "s/^.*) //" /proc/$pid/stat | grep -q "^T"; then echo paused; else echo running; fi'
  fi
}

node_pid() {
  local n=$1
  if [[ $TRANSPORT == ssh ]]; then
    t_run "${HOST[$n]}" "systemctl show -p MainPID --value $(unit_name "$n")"
  else
    cat "$(node_dir "$n")/node.pid" 2>/dev/null || echo 0
  fi
}

# Waits (bounded, on the host) until the node wrote its ready file.
wait_ready() {
  local n=$1 ready
  [[ $DRY_RUN == 1 ]] && return 0
  ready=$(shell_quote "$(node_dir "$n")/ready")
  if ! t_run "${HOST[$n]}" "i=0; while [ ! -s $ready ]; do i=\$((i + 1)); [ \$i -gt $((READY_TIMEOUT * 10)) ] && exit 1; sleep 0.1; done"; then
    echo "deploy.sh: $n is not ready after ${READY_TIMEOUT}s; its log:" >&2
    t_run "${HOST[$n]}" "tail -n 20 $(shell_quote "$(node_dir "$n")/node.log")" >&2 || true
    return 1
  fi
}

start_node() {
  local n=$1 d
  d=$(node_dir "$n")
  if [[ $(node_state "$n") != stopped ]]; then
    echo "$n is already running"
    return 0
  fi
  rm -f "$STAGE/$n/partitioned"
  if [[ $TRANSPORT == ssh ]]; then
    t_run "${HOST[$n]}" "$SUDO systemctl enable --now $(unit_name "$n")"
  else
    # setsid: the node outlives `ip netns exec`; the inner shell records its pid, then execs.
    # shellcheck disable=SC2016 # $$ and $@ are for the inner sh
    t_run "${HOST[$n]}" "rm -f $(shell_quote "$d/ready"); echo \"=== \$(date '+%F %T') starting\" >>$(shell_quote "$d/node.log"); setsid sh -c 'echo \$\$ >\"\$0\"; exec \"\$@\"' $(shell_quote "$d/node.pid") $(node_cmdline "$n") >>$(shell_quote "$d/node.log") 2>&1 </dev/null &"
  fi
  wait_ready "$n" || return 1
  echo "$n (${ROLE[$n]}) started on ${HOST[$n]} at ${ADDR[$n]}"
}

stop_node() {
  local n=$1 pid
  if [[ $TRANSPORT == ssh ]]; then
    t_run "${HOST[$n]}" "$SUDO systemctl kill -s CONT $(unit_name "$n") 2>/dev/null; $SUDO systemctl stop $(unit_name "$n")"
    echo "$n stopped"
    return 0
  fi
  [[ $(node_state "$n") == stopped ]] && return 0
  pid=$(node_pid "$n")
  kill -TERM "$pid" 2>/dev/null || true
  kill -CONT "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while [[ $(node_state "$n") != stopped ]] && ((SECONDS < deadline)); do sleep 0.1; done
  if [[ $(node_state "$n") != stopped ]]; then
    kill -KILL "$pid" 2>/dev/null || true
    while [[ $(node_state "$n") != stopped ]]; do sleep 0.1; done
  fi
  rm -f "$(node_dir "$n")/node.pid"
  echo "$n stopped"
}

signal_node() {
  local n=$1 sig=$2 pid
  if [[ $TRANSPORT == ssh ]]; then
    t_run "${HOST[$n]}" "$SUDO systemctl kill --kill-whom=main -s $sig $(unit_name "$n")"
  else
    pid=$(node_pid "$n")
    kill "-$sig" "$pid"
  fi
}

cmd_kill() {
  if [[ $(node_state "$NODE") == stopped ]]; then
    echo "$NODE is not running"
    return 0
  fi
  signal_node "$NODE" KILL
  if [[ $TRANSPORT == netns ]]; then
    while [[ $(node_state "$NODE") != stopped ]]; do sleep 0.05; done
    rm -f "$(node_dir "$NODE")/node.pid"
  fi
  echo "$NODE killed"
}

# `env VAR=... ` for the tools run on host $1 of a secured cluster: the CA, the admin and the
# cluster secret as installed with a node on that host (nothing for a plain cluster).
remote_env() {
  local n d vars=()
  for n in "${NODES[@]}"; do
    [[ ${HOST[$n]} == "$1" ]] || continue
    d=$(node_dir "$n")
    [[ -n $(setting tls_ca) ]] && vars+=("SLUICE_TLS_CA_FILE=$d/tls/ca.crt")
    if [[ -n $(setting auth_admin) ]]; then
      vars+=("SLUICE_ACCESS_KEY=$(setting auth_admin)" "SLUICE_SECRET_KEY_FILE=$d/secrets/admin.secret")
    fi
    [[ -n $(setting cluster_secret_file) ]] && vars+=("SLUICE_CLUSTER_SECRET_FILE=$d/secrets/cluster.secret")
    break
  done
  ((${#vars[@]} > 0)) && printf 'env %s ' "$(shell_quote "${vars[@]}")"
  return 0
}

# Runs the `sluice` CLI on a broker's or nameserver's host against the cluster.
cluster_status_on() {
  t_run "$1" "$(remote_env "$1")$(shell_quote "$REMOTE_DIR/bin/sluice") --nameservers $(nameserver_list) cluster status ${2:-}"
}

# `sluice cluster status --json` on stdin as "BROKER_NAME REPLICA_ID ROLE REACHABLE TERM ADDRESS"
# lines, one per broker replica.
status_rows() {
  awk -f "$REPO_ROOT/scripts/lib/status_rows.awk"
}

# Waits until the brokers are registered and every replica group has a master.
check_cluster() {
  local n g deadline=$((SECONDS + READY_TIMEOUT)) host rows missing
  [[ $DRY_RUN == 1 ]] && return 0
  host=${HOST[${NODES[0]}]}
  while :; do
    rows=$(cluster_status_on "$host" --json 2>/dev/null | status_rows || true)
    missing=""
    for n in "${NODES[@]}"; do
      [[ ${ROLE[$n]} == broker ]] || continue
      awk -v a="${ADDR[$n]}" '$6 == a { found = 1 } END { exit !found }' <<<"$rows" || missing+=" $n"
    done
    for g in $(list_groups); do
      awk -v g="$g" '$1 == g && $3 == "MASTER" && $4 == "true" { found = 1 } END { exit !found }' <<<"$rows" ||
        missing+=" master-of-$g"
    done
    [[ -z $missing ]] && break
    if ((SECONDS >= deadline)); then
      echo "$rows" >&2
      die "cluster not complete after ${READY_TIMEOUT}s: missing$missing"
    fi
    sleep 0.3
  done
  echo "every broker is registered and every group has a master"
}

# ---------------------------------------------------------------- network namespaces

NETNS_LINK=eth0

netns_prefix() { setting netns_prefix "${INV_NAME:0:6}"; }
netns_bridge() { setting netns_bridge "$(netns_prefix)-sw"; }
netns_client() { local c; c=$(setting netns_client); echo "${c%% *}"; }

host_ip() {
  local n
  for n in "${NODES[@]}"; do
    if [[ ${HOST[$n]} == "$1" ]]; then
      echo "${ADDR[$n]%:*}"
      return 0
    fi
  done
}

# Adds namespace NS with address IP/PREFIX on a veth whose other end joins the bridge.
netns_attach() {
  local ns=$1 cidr=$2 i=$3 br peer
  br=$(netns_bridge)
  peer="v$i-$(netns_prefix)"
  peer=${peer:0:15}
  ip netns add "$ns"
  ip -n "$br" link add "$peer" type veth peer name "$NETNS_LINK" netns "$ns"
  ip -n "$br" link set "$peer" master br0 up
  ip -n "$ns" addr add "$cidr" dev "$NETNS_LINK"
  ip -n "$ns" link set "$NETNS_LINK" up
  ip -n "$ns" link set lo up
}

require_netns() {
  [[ $TRANSPORT == netns ]] || die "$COMMAND needs transport netns"
}

cmd_netns_create() {
  require_netns
  local br h i=0 prefix_len existing
  br=$(netns_bridge)
  prefix_len=$(setting netns_cidr 24)
  existing=$(ip netns list | awk '{ print $1 }')
  if grep -qxF "$br" <<<"$existing"; then
    die "namespace $br exists already (run netns-destroy first)"
  fi
  ip netns add "$br"
  ip -n "$br" link add br0 type bridge
  ip -n "$br" link set br0 up
  ip -n "$br" link set lo up
  for h in $(list_hosts); do
    i=$((i + 1))
    grep -qxF "$h" <<<"$existing" && die "namespace $h exists already"
    netns_attach "$h" "$(host_ip "$h")/$prefix_len" "$i"
    echo "namespace $h: $(host_ip "$h")/$prefix_len"
  done
  if [[ -n $(netns_client) ]]; then
    local c
    c=$(setting netns_client)
    [[ $c == *" "* ]] || die "netns_client needs NAME IP/PREFIX"
    netns_attach "${c%% *}" "${c#* }" 0
    echo "namespace ${c%% *} (clients): ${c#* }"
  fi
}

cmd_netns_destroy() {
  require_netns
  local ns pid
  for ns in $(list_hosts) $(netns_client) "$(netns_bridge)"; do
    ip netns list | awk '{ print $1 }' | grep -qxF "$ns" || continue
    # Only processes inside a namespace this inventory created.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns delete "$ns"
    echo "deleted namespace $ns"
  done
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local n kind
  if [[ -n $NODE ]]; then
    require_node
    start_node "$NODE"
    return
  fi
  for kind in nameserver broker; do
    for n in "${NODES[@]}"; do
      [[ ${ROLE[$n]} == "$kind" ]] && start_node "$n"
    done
  done
  check_cluster
}

cmd_stop() {
  local i n
  if [[ -n $NODE ]]; then
    require_node
    stop_node "$NODE"
    return
  fi
  # Brokers first, so they unregister while the nameservers listen.
  for ((i = ${#NODES[@]} - 1; i >= 0; i--)); do
    n=${NODES[i]}
    [[ ${ROLE[$n]} == broker ]] && stop_node "$n"
  done
  for n in "${NODES[@]}"; do
    [[ ${ROLE[$n]} == nameserver ]] && stop_node "$n"
  done
  return 0
}

cmd_status() {
  local n
  printf '%-14s %-11s %-14s %-22s %s\n' NODE KIND HOST ADDRESS STATE
  for n in "${NODES[@]}"; do
    printf '%-14s %-11s %-14s %-22s %s\n' "$n" "${ROLE[$n]}" "${HOST[$n]}" "${ADDR[$n]}" "$(state_of "$n")"
  done
  echo
  cluster_status_on "${HOST[${NODES[0]}]}"
}

state_of() {
  local s
  s=$(node_state "$1")
  [[ $s == running && -f $STAGE/$1/partitioned ]] && s=partitioned
  echo "$s"
}

cmd_nodes() {
  local n
  printf '# NAME\tKIND\tGROUP\tREPLICA\tADDRESS\tSTATE\n'
  for n in "${NODES[@]}"; do
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "${ROLE[$n]}" "${GROUP[$n]:--}" "${REPLICA[$n]}" \
      "${ADDR[$n]}" "$(state_of "$n")"
  done
}

cmd_partition() {
  require_node
  if [[ $TRANSPORT == netns ]]; then
    ip -n "${HOST[$NODE]}" link set "$NETNS_LINK" down
    echo "${HOST[$NODE]} is cut off (link $NETNS_LINK down): every node on it is partitioned"
  else
    [[ ${ROLE[$NODE]} == broker ]] || die "over ssh only brokers can be partitioned (fault injection)"
    local m others=()
    for m in $(group_members "${GROUP[$NODE]}"); do
      [[ $m != "$NODE" ]] && others+=("${REPLICA[$m]}")
    done
    t_run "${HOST[$NODE]}" "$(remote_env "${HOST[$NODE]}")$(shell_quote "$REMOTE_DIR/bin/sluice-chaos" fault --addr "${ADDR[$NODE]}" isolate "${others[@]}")"
  fi
  if [[ $DRY_RUN != 1 ]]; then
    mkdir -p "$STAGE/$NODE"
    touch "$STAGE/$NODE/partitioned"
  fi
}

cmd_heal() {
  require_node
  if [[ $TRANSPORT == netns ]]; then
    ip -n "${HOST[$NODE]}" link set "$NETNS_LINK" up
    echo "${HOST[$NODE]} is reconnected"
  else
    t_run "${HOST[$NODE]}" "$(remote_env "${HOST[$NODE]}")$(shell_quote "$REMOTE_DIR/bin/sluice-chaos" fault --addr "${ADDR[$NODE]}" heal)"
  fi
  rm -f "$STAGE/$NODE/partitioned"
}

cmd_client() {
  ((${#REST[@]} > 0)) || die "client needs a command"
  if [[ $TRANSPORT == netns && -n $(netns_client) ]]; then
    exec ip netns exec "$(netns_client)" "${REST[@]}"
  fi
  exec "${REST[@]}"
}

# ---------------------------------------------------------------- main

INVENTORY=${SLUICE_INVENTORY:-}
COMMAND=""
NODE=""
REST=()
while (($# > 0)); do
  case $1 in
    --inventory) (($# >= 2)) || die "--inventory needs a value"; INVENTORY=$2; shift 2 ;;
    --inventory=*) INVENTORY=${1#*=}; shift ;;
    -h | --help) usage 0 ;;
    *)
      if [[ -z $COMMAND ]]; then
        COMMAND=$1
        shift
        if [[ $COMMAND == client ]]; then
          REST=("$@")
          break
        fi
      elif [[ -z $NODE ]]; then
        NODE=$1
        shift
      else
        die "unexpected argument $1"
      fi
      ;;
  esac
done
[[ -n $COMMAND ]] || usage 2 >&2
[[ -n $INVENTORY ]] || die "--inventory FILE is required"
is_uint "$READY_TIMEOUT" || die "SLUICE_READY_TIMEOUT must be whole seconds"
is_uint "$STOP_TIMEOUT" || die "SLUICE_STOP_TIMEOUT must be whole seconds"
load_inventory "$INVENTORY"

case $COMMAND in
  up) cmd_install && cmd_start ;;
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  down) NODE="" cmd_stop ;;
  status) cmd_status ;;
  nodes) cmd_nodes ;;
  nameservers) nameserver_list ;;
  kill) require_node; cmd_kill ;;
  restart) require_node; stop_node "$NODE"; start_node "$NODE" ;;
  pause) require_node; signal_node "$NODE" STOP; echo "$NODE paused" ;;
  resume) require_node; signal_node "$NODE" CONT; echo "$NODE resumed" ;;
  partition) cmd_partition ;;
  heal) cmd_heal ;;
  logs) require_node; t_run "${HOST[$NODE]}" "cat $(shell_quote "$(node_dir "$NODE")/node.log")" ;;
  netns-create) cmd_netns_create ;;
  netns-destroy) cmd_netns_destroy ;;
  client) cmd_client ;;
  bin-dir)
    if [[ -f $STAGE/bin_dir ]]; then cat "$STAGE/bin_dir"; else resolve_binaries; echo "$BIN_DIR"; fi
    ;;
  *) die "unknown command $COMMAND (see --help)" ;;
esac
