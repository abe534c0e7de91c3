#!/usr/bin/env bash
# `make bench`: release builds, then each benchmark beside Kafka's own perf tool in one run;
# writes docs/BENCHMARKS.md. Flags go to the bench binary (`make bench ARGS=...` or
# scripts/bench.sh --only sink,controller --topics 100).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$(dirname "$here")"
"$here/install-tools.sh"
# Release builds of both sides: a debug load generator would be the bottleneck it measures.
cargo build -q --locked --release -p pubsubkafka-worker --bin pubsubkafka-worker
cargo build -q --locked --release -p pubsubkafka-controller --bin pubsubkafka-controller
cargo build -q --locked --release -p pubsubkafka-tests --bin bench
exec target/release/bench --worker target/release/pubsubkafka-worker \
  --controller target/release/pubsubkafka-controller --out docs/BENCHMARKS.md "$@"
