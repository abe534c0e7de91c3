#!/usr/bin/env bash
# `make test-faults`: the fault-injection suite on a fresh local stack, then the fuzz targets
# for a bounded time. The suite is every test, in any file of tests/tests, whose name starts with
# `fault_` (a broker, database or API server outage, a worker killed, bad input); each asserts
# that nothing acknowledged is lost and prints its counts (shown here with --nocapture). Tests
# that break a component start their own instance of it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
. "$here/lib.sh"
cd "$root"

start=$SECONDS
"$here/install-tools.sh"
log "building the tests"
binaries="$(mktemp)"
cargo test -p pubsubkafka-tests --locked --no-run --message-format=json \
  | jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test
           and .target.kind[0] == "test") | [.target.name, .executable] | @tsv' > "$binaries"
cargo build --workspace --locked --bins

# The `fault_` tests of each binary, by exact name (a filter would also match `default_...`).
declare -A selected
total=0
while IFS=$'\t' read -r name exe; do
  mapfile -t tests < <("$exe" --list --format terse | sed -n 's/^\(fault_[a-z0-9_]*\): test$/\1/p')
  if [[ ${#tests[@]} -gt 0 ]]; then
    selected[$exe]="${tests[*]}"
    total=$((total + ${#tests[@]}))
    log "$name: ${tests[*]}"
  fi
done < "$binaries"
rm -f "$binaries"
[[ $total -gt 0 ]] || die "no test is named fault_*"

start_stack

log "running $total fault-injection tests"
for exe in "${!selected[@]}"; do
  # shellcheck disable=SC2086 # the names are words
  (cd tests && "$exe" --exact --nocapture ${selected[$exe]})
done
"$here/fuzz.sh"
log "fault-injection suite passed in $((SECONDS - start))s"
