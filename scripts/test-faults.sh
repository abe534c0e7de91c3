#!/usr/bin/env bash
# `make test-faults`: the fault-injection suite on a fresh local stack, then the fuzz targets
# for a bounded time. Each test asserts that nothing acknowledged is lost and prints its counts
# (shown here with --nocapture). Tests that break a component start their own instance of it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
. "$here/lib.sh"
cd "$root"

start=$SECONDS
"$here/install-tools.sh"
log "building the tests"
cargo test -p pubsubkafka-tests --locked --no-run
cargo build --workspace --locked --bins

start_stack

# The fault tests of the other suites, by name, beside tests/tests/faults.rs.
log "running the fault-injection tests"
cargo test -p pubsubkafka-tests --locked --test faults -- --nocapture
cargo test -p pubsubkafka-tests --locked --test worker -- --nocapture \
  sigkill_three_times_mid_stream a_database_outage_pauses_consumption
cargo test -p pubsubkafka-tests --locked --test gateway -- --nocapture \
  a_broker_outage_answers_503 the_outbox_relay_delivers_every_order_despite_being_killed_twice
cargo test -p pubsubkafka-tests --locked --test kafka_topic -- --nocapture \
  a_kafka_outage_is_reported_and_recovered the_api_server_refuses_bad_manifests
cargo test -p pubsubkafka-tests --locked --test order_consumer -- --nocapture \
  the_api_server_refuses_bad_consumers_and_policies missing_dependencies_are_reported
"$here/fuzz.sh"
log "fault-injection suite passed in $((SECONDS - start))s"
