#!/usr/bin/env bash
# The cargo fuzz targets of the worker's record decoding (the order decoder and the header
# parser), each run for a bounded time: FUZZ_SECONDS (default 60) per target. A crash leaves its
# input in fuzz/artifacts/<target>/ and fails the run. FUZZ_BUILD_ONLY=1 only builds them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
"$here/install-fuzz.sh"
export PATH="$PSK_CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION/bin:$PATH"
cd "$(dirname "$here")/fuzz"

seconds="${FUZZ_SECONDS:-60}"
# No sanitizer: the targets are safe Rust, and librdkafka's configure (built for the header
# types) fails its library checks under the address sanitizer's flags.
flags=(-O -s none)
log "building the fuzz targets (nightly)"
cargo +nightly fuzz build "${flags[@]}"
[[ -n ${FUZZ_BUILD_ONLY:-} ]] && exit 0
for target in order_decoder headers; do
  log "fuzzing $target for ${seconds}s"
  mkdir -p "corpus/$target"
  out="corpus/$target.log"
  status=0
  cargo +nightly fuzz run "${flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 >"$out" 2>&1 || status=$?
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added)' "$out" || true
  if ((status)); then
    tail -n 40 "$out"
    die "fuzz target $target failed (its input is in fuzz/artifacts/$target)"
  fi
done
log "fuzzing passed: ${seconds}s per target, no crash"
