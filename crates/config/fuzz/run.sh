#!/usr/bin/env bash
# Fuzz the configuration parser (target `parse`) for a bounded time.
#
#   crates/config/fuzz/run.sh [SECONDS] [LIBFUZZER_ARGS...]
#
# SECONDS defaults to 60. Installs cargo-fuzz if it is missing. cargo-fuzz
# needs nightly flags; RUSTC_BOOTSTRAP=1 allows them on the stable toolchain.
# Exits non-zero if the fuzzer finds a crash (the input is saved under
# crates/config/fuzz/artifacts/parse/); prints the number of executions.
set -euo pipefail

seconds="${1:-60}"
if [[ $# -gt 0 ]]; then
    shift
fi
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS > 0] [LIBFUZZER_ARGS...]" >&2
    exit 2
fi

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
crate_dir="$(dirname "$fuzz_dir")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

cd "$crate_dir"
# The corpus directory holds the tracked seeds; what the fuzzer adds there
# is ignored by git.
status=0
cargo fuzz run --fuzz-dir "$fuzz_dir" parse -- \
    -max_total_time="$seconds" -print_final_stats=1 "$@" 2>&1 | tee "$log" || status=$?

execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
if [[ -z "$execs" ]]; then
    # No final stats (a crash): the last status line has the count.
    execs="$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)"
fi

if [[ $status -ne 0 ]]; then
    echo "run.sh: FUZZING FAILED (exit $status) after ${execs:-?} executions" >&2
    grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|Test unit written to' "$log" >&2 || true
    exit "$status"
fi
echo "run.sh: no crash: ${execs:-?} executions in ${seconds} s"
