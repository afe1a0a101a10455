#!/usr/bin/env bash
# Attacks a Sluice replica group under load and checks that no acknowledged message is lost.
#
#   scripts/chaos.sh [--cycles N] [--faults kill,pause,partition] [--json] [--report FILE]
#                    [--dir DIR | --inventory FILE] [--secure] [--keep]
#                    [-- more sluice-chaos run options]
#
# Without --dir or --inventory it starts its own cluster with scripts/cluster.sh (one
# nameserver, one group of 3 replicas, fault injection on) in a fresh directory and stops it
# at the end (--keep leaves it running). --dir DIR attacks a running cluster.sh cluster (it
# needs replica groups of >= 3, and --fault-injection for partitions); --inventory FILE one
# deployed with scripts/deploy.sh (partitions are real link-downs in namespace mode).
# --secure starts its own cluster secured (cluster.sh up --secure); a --dir cluster that is
# secured is attacked with its admin's and cluster's secrets either way.
#
# The report (text, or JSON with --json) goes to stdout, progress to stderr. Exit status: 0 when
# every acknowledged message was consumed, in order, and every cycle recovered; 1 when not;
# 2 on a usage or setup error.
#
# Environment: SLUICE_BIN_DIR (prebuilt binaries; else cargo build --release), CARGO_TARGET_DIR.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT

die() {
  echo "chaos.sh: $*" >&2
  exit 2
}

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

# EXIT trap of a run on its own cluster: stop it; keep its logs only when the run failed.
# shellcheck disable=SC2317 # invoked by the trap
stop_own() {
  local rc=$?
  if [[ $KEEP == 1 ]]; then
    echo "chaos.sh: the cluster keeps running: scripts/cluster.sh down --dir $DIR" >&2
  else
    "$REPO_ROOT/scripts/cluster.sh" down --dir "$DIR" >/dev/null 2>&1 || true
    if ((rc == 0)); then
      rm -rf "$DIR"
    else
      echo "chaos.sh: cluster stopped; node logs kept in $DIR/nodes/*/node.log" >&2
    fi
  fi
  exit "$rc"
}

CYCLES=10
FAULTS=kill,pause,partition
DIR=""
INVENTORY=""
KEEP=0
SECURE=()
PASS=()
while (($# > 0)); do
  case $1 in
    --cycles) (($# >= 2)) || die "--cycles needs a value"; CYCLES=$2; shift 2 ;;
    --cycles=*) CYCLES=${1#*=}; shift ;;
    --faults) (($# >= 2)) || die "--faults needs a value"; FAULTS=$2; shift 2 ;;
    --faults=*) FAULTS=${1#*=}; shift ;;
    --dir) (($# >= 2)) || die "--dir needs a value"; DIR=$2; shift 2 ;;
    --dir=*) DIR=${1#*=}; shift ;;
    --inventory) (($# >= 2)) || die "--inventory needs a value"; INVENTORY=$2; shift 2 ;;
    --inventory=*) INVENTORY=${1#*=}; shift ;;
    --json) PASS+=(--json); shift ;;
    --report) (($# >= 2)) || die "--report needs a value"; PASS+=(--report "$2"); shift 2 ;;
    --report=*) PASS+=(--report "${1#*=}"); shift ;;
    --keep) KEEP=1; shift ;;
    --secure) SECURE=(--secure); shift ;;
    -h | --help) usage 0 ;;
    --) shift; PASS+=("$@"); break ;;
    *) echo "chaos.sh: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
done
[[ $CYCLES =~ ^[0-9]+$ ]] || die "--cycles must be a whole number"
[[ -z $DIR || -z $INVENTORY ]] || die "give --dir or --inventory, not both"

if [[ -n $INVENTORY ]]; then
  [[ -f $INVENTORY ]] || die "no inventory file $INVENTORY"
  CONTROL=("$REPO_ROOT/scripts/deploy.sh" --inventory "$(cd "$(dirname "$INVENTORY")" && pwd)/$(basename "$INVENTORY")")
  BIN_DIR=$("${CONTROL[@]}" bin-dir) || die "cannot find the deployment's binaries"
  # Clients run where they reach the nodes (in namespace mode: the client namespace).
  RUNNER=("${CONTROL[@]}" client)
else
  if [[ -z $DIR ]]; then
    DIR=$(mktemp -d "${TMPDIR:-/tmp}/sluice-chaos.XXXXXX")
    trap stop_own EXIT
    trap 'exit 130' INT TERM
    echo "chaos.sh: starting a 3-replica cluster in $DIR" >&2
    "$REPO_ROOT/scripts/cluster.sh" up --dir "$DIR" --groups 1 --replicas 3 --fault-injection \
      "${SECURE[@]}" >&2 ||
      die "could not start the cluster (see $DIR/nodes/*/node.log)"
  fi
  [[ -f $DIR/bin_dir ]] || die "no cluster.sh cluster in $DIR"
  DIR=$(cd "$DIR" && pwd)
  CONTROL=("$REPO_ROOT/scripts/cluster.sh" --dir "$DIR")
  BIN_DIR=$(<"$DIR/bin_dir")
  if [[ -f $DIR/secure/env ]]; then
    # shellcheck disable=SC1091 # written by cluster.sh up --secure
    source "$DIR/secure/env"
  fi
  RUNNER=()
fi
[[ -x $BIN_DIR/sluice-chaos ]] || die "no executable $BIN_DIR/sluice-chaos"

set +e
"${RUNNER[@]}" "$BIN_DIR/sluice-chaos" run --cycles "$CYCLES" --faults "$FAULTS" "${PASS[@]}" -- "${CONTROL[@]}"
rc=$?
set -e
exit "$rc"
