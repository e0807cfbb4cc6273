#!/usr/bin/env bash
# Builds the fuzz targets (cargo fuzz, libFuzzer) and runs each for a bounded time over the
# committed seeds (fuzz/seeds/TARGET) and the corpus it grows (fuzz/corpus/TARGET, not committed).
# Exits non-zero on a crash; libFuzzer saves the crashing input under fuzz/artifacts/TARGET/.
# Usage: fuzz/run.sh [--dev] [--seconds N] [--runs N] [--seed N] [TARGET...]
#   (default: every target, 20 seconds each; --runs also stops a target after N executions;
#   --seed fixes libFuzzer's random choices, so a run over the committed seeds alone repeats the
#   same inputs in the same order, however far a faster machine gets; --dev builds without
#   optimizations: 4 minutes instead of 11 on a 2-CPU machine, for 10 to 25 times fewer
#   executions a second, which suits CI's short runs over the seeds, not a long search)
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.1
seconds=20
runs=-1
seed=0
profile=()
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) profile=(--dev); shift ;;
    --seconds) seconds="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    -*) echo "usage: fuzz/run.sh [--dev] [--seconds N] [--runs N] [--seed N] [TARGET...]" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
# cargo fuzz needs nightly-only compiler flags (sanitizer, coverage instrumentation). Without a
# nightly toolchain (a fresh CI machine can fetch none), stable's compiler is let accept them.
if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
# cargo fuzz has no --locked: fail here rather than build with a Cargo.lock other than the committed one.
cargo metadata --locked --format-version 1 >/dev/null
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("${fuzz[@]}" list)
"${fuzz[@]}" build "${profile[@]}"
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "fuzz/run.sh: $target for ${seconds}s"
  "${fuzz[@]}" run "${profile[@]}" "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$seconds" -runs="$runs" -seed="$seed" -print_final_stats=1
done
