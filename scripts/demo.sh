#!/usr/bin/env bash
# `make demo`: brings up the local stack and shows how to reach it. Grows with the operator.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"
cargo build -q --locked --workspace --bins
cargo run -q --locked -p pubsubkafka-tests --bin stack -- up --dir "${STACK_DIR:-.stack}"
