#!/usr/bin/env bash
# Runs every test binary of the workspace against the stack in PSK_STACK_DIR, PSK_TEST_LANES
# binaries at a time (default 2), then the binaries that need the whole node to themselves one
# after the other. Arguments are passed to every binary (a name filter, --nocapture, ...).
#
# `cargo test` runs its binaries one after the other; most of our time is spent waiting on
# Kafka, PostgreSQL and the node rather than on the CPU, so two binaries side by side finish
# the suite in about two thirds of the time. Tests of different binaries do not disturb each
# other: each works in namespaces, topics, groups and databases of its own, and its in-process
# operators watch only their namespace. The exceptions run alone, after the rest:
#   - node: one test installs the chart cluster-wide, and that operator would reconcile every
#     other test's namespace;
#   - demo: installs the chart cluster-wide and uses the examples' topic names.
#
# Every binary runs even when one fails; each one's output is printed whole when it ends, and
# the script fails at the end, naming the binaries that failed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
. "$here/lib.sh"
cd "$root"

[[ -n ${PSK_STACK_DIR:-} ]] || die "PSK_STACK_DIR is not set: start a stack first (scripts/test.sh does)"
lanes=${PSK_TEST_LANES:-2}
alone=(node demo)
# The longest binaries first, so that the lanes end together (seconds on 2 cores).
longest_first=(lifecycle faults dlq_replay order_gateway tenancy kafka_topic order_consumer chart worker key_order
  observability gateway kafka_permissions)

logs="$(mktemp -d "${TMPDIR:-/tmp}/pubsubkafka-tests.XXXXXX")"
trap 'rm -rf "$logs"' EXIT

# One line per test binary: name, kind (lib, bin, test), package directory, executable.
cargo test --workspace --locked --no-run --message-format=json 2>/dev/null \
  | jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test)
           | [.target.name, .target.kind[0], (.manifest_path | sub("/Cargo.toml$"; "")),
              .executable] | @tsv' > "$logs/binaries"
[[ -s $logs/binaries ]] || die "cargo listed no test binaries"

# Orders the binaries: the long ones first, then the rest, then those that run alone.
ordered="$logs/ordered" solo="$logs/solo"
: > "$ordered"; : > "$solo"
for name in "${longest_first[@]}"; do awk -F'\t' -v n="$name" '$1 == n && $2 == "test"' "$logs/binaries" >> "$ordered"; done
awk -F'\t' 'NR == FNR { skip[$0] = 1; next } $2 != "test" || !($1 in skip)' \
  <(printf '%s\n' "${longest_first[@]}" "${alone[@]}") "$logs/binaries" >> "$ordered"
for name in "${alone[@]}"; do awk -F'\t' -v n="$name" '$1 == n && $2 == "test"' "$logs/binaries" >> "$solo"; done

# run_one NAME KIND DIR EXE [ARGS...]: runs one binary from its package directory, as cargo
# does, and prints its output when it ends.
run_one() {
  local name=$1 kind=$2 dir=$3 exe=$4; shift 4
  local label="$kind $name" out="$logs/$kind-$name.log" started=$SECONDS rc=0
  (cd "$dir" && CARGO_MANIFEST_DIR="$dir" "$exe" "$@") > "$out" 2>&1 || rc=$?
  {
    printf '\n\033[1m--- %s (%s) in %ss\033[0m\n' "$label" "${exe#"$root"/}" "$((SECONDS - started))"
    cat "$out"
  } | flock "$logs/print.lock" cat
  if [[ $rc -ne 0 ]]; then
    echo "$label" >> "$logs/failed"
  fi
  return 0
}
export -f run_one
export logs root

log "running $(wc -l < "$ordered") test binaries, $lanes at a time"
tr '\n' '\0' < "$ordered" | xargs -0 -P "$lanes" -I{} bash -c \
  'IFS=$'"'"'\t'"'"' read -r n k d e <<< "$1"; shift; run_one "$n" "$k" "$d" "$e" "$@"' _ {} "$@"
log "running $(wc -l < "$solo") test binaries that need the node to themselves"
while IFS=$'\t' read -r n k d e; do run_one "$n" "$k" "$d" "$e" "$@"; done < "$solo"
log "doc tests"
cargo test --workspace --locked --doc -q -- "$@" || echo "doc tests" >> "$logs/failed"

if [[ -s $logs/failed ]]; then
  die "failed: $(paste -sd, "$logs/failed")"
fi
