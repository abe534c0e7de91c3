#!/usr/bin/env bash
# What the fuzz targets need: a nightly Rust toolchain (libFuzzer's instrumentation) and
# cargo-fuzz, built from crates.io into the tool cache once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "installing the nightly Rust toolchain (for cargo fuzz)"
  rustup toolchain install nightly --profile minimal
fi
root="$PSK_CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION"
if [[ ! -x $root/bin/cargo-fuzz ]]; then
  log "building cargo-fuzz $CARGO_FUZZ_VERSION into $root"
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$root"
fi
