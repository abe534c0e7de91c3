#!/usr/bin/env bash
# `make bench`: release builds, then each benchmark beside Kafka's own perf tool in one run;
# writes docs/BENCHMARKS.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$(dirname "$here")"
"$here/install-tools.sh"
# Release builds of both sides: a debug load generator would be the bottleneck it measures.
cargo build -q --locked --release -p pubsubkafka-worker --bin pubsubkafka-worker
cargo build -q --locked --release -p pubsubkafka-tests --bin bench
exec target/release/bench --worker target/release/pubsubkafka-worker --out docs/BENCHMARKS.md "$@"
