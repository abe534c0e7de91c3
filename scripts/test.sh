#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it: install what is missing, check formatting,
# lints and generated files, start a fresh local stack, run every test against it, stop it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
. "$here/lib.sh"
cd "$root"

start=$SECONDS
"$here/install-tools.sh"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo machete (unused dependencies)"
"$PSK_CACHE/cargo-machete-$CARGO_MACHETE_VERSION/bin/cargo-machete"
log "promtool check rules / test rules (deploy/prometheus)"
promtool check rules deploy/prometheus/rules.yml
promtool test rules deploy/prometheus/rules.test.yml
log "checking the generated CRDs are current"
cargo run -q --locked -p pubsubkafka-controller --bin crdgen -- --check
log "building the tests"
cargo test --workspace --locked --no-run
cargo build --workspace --locked --bins
# The images the node runs (operator and workers), from the release binaries.
"$here/images.sh"

start_stack

log "running the tests"
"$here/run-tests.sh" "$@"
if [[ $# -eq 0 && -z ${PSK_SKIP_FUZZ:-} ]]; then
  # The fuzz targets, shorter than `make test-faults` runs them. The first run builds them with
  # the nightly toolchain (minutes); PSK_SKIP_FUZZ=1 leaves them out.
  FUZZ_SECONDS="${FUZZ_SECONDS:-30}" "$here/fuzz.sh"
fi
log "all tests passed in $((SECONDS - start))s"
