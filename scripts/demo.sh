#!/usr/bin/env bash
# `make demo`: the operator on a local control plane and Kafka, examples/dev applied, worker
# pods run as their Deployments define them, the gateway, orders flowing, and a summary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"
"$here/install-tools.sh"
echo "==> building the operator, the worker and the demo (first run: several minutes)"
cargo build -q --locked --workspace --bins
exec "$root/target/debug/demo" up --dir "${STACK_DIR:-.stack}" "$@"
