#!/usr/bin/env bash
# cargo-machete, which `make check` and `make test` run to find dependencies a manifest declares
# and no source file uses: built from crates.io into the tool cache once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
root="$PSK_CACHE/cargo-machete-$CARGO_MACHETE_VERSION"
if [[ ! -x $root/bin/cargo-machete ]]; then
  log "building cargo-machete $CARGO_MACHETE_VERSION into $root"
  cargo install --quiet --locked cargo-machete --version "$CARGO_MACHETE_VERSION" --root "$root"
fi
