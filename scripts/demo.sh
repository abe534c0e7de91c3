#!/usr/bin/env bash
# `make demo`: a local Kubernetes node beside Kafka, the chart installed with the images built
# here, examples/dev applied, worker and gateway pods started by Kubernetes, orders flowing,
# and a summary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"
"$here/install-tools.sh"
echo "==> building the operator, the worker and the demo (first run: several minutes)"
cargo build -q --locked --workspace --bins
"$here/images.sh"
exec "$root/target/debug/demo" up --dir "${STACK_DIR:-.stack}" "$@"
