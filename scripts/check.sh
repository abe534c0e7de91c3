#!/usr/bin/env bash
# `make check`: the fast loop while changing code, with no stack and nothing to install beyond
# the Rust toolchain and cargo-machete (built into the tool cache on the first run): formatting,
# clippy with warnings denied, no unused dependency, the unit tests of every crate (pure logic:
# plans, schedules, decoders), and the generated CRDs compared with the code.
# `make test` runs all of this too, then the integration tests against a real stack.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
. "$here/lib.sh"
cd "$root"

start=$SECONDS
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo machete (unused dependencies)"
"$here/install-machete.sh"
"$PSK_CACHE/cargo-machete-$CARGO_MACHETE_VERSION/bin/cargo-machete"
log "unit tests"
cargo test --workspace --locked --lib --bins -q
log "checking the generated CRDs are current"
cargo run -q --locked -p pubsubkafka-controller --bin crdgen -- --check
log "check passed in $((SECONDS - start))s"
