# Sourced by the bench scripts: sets and exports SLUICE_BIN_DIR, building the release binaries
# of the nameserver, broker and CLI first when it is not set. Needs REPO_ROOT.
if [[ -z ${SLUICE_BIN_DIR:-} ]]; then
  target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
  cargo build --release --manifest-path "$REPO_ROOT/Cargo.toml" \
    -p sluice-nameserver -p sluice-broker -p sluice-client
  SLUICE_BIN_DIR=$target/release
fi
export SLUICE_BIN_DIR
