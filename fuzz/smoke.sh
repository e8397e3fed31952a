#!/usr/bin/env bash
# CI smoke run of the fuzz targets: builds every target, then runs each for $FUZZ_SECS
# seconds (default 20) over its committed corpus, one job at a time. FUZZ_SECS=0 replays the
# committed corpora only (every input once, no new ones): deterministic, what CI runs. New inputs go to a
# scratch directory, so the committed corpora stay as they are. A crash fails the run and
# leaves its input in fuzz/artifacts/<target>/.
#
# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets a stable toolchain pass them.
# FUZZ_SANITIZER=none skips AddressSanitizer where it is not available.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECS:-20}
san=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build -O --sanitizer "$san"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target" "$scratch/$target"
    echo "== fuzz smoke: $target (${secs}s)"
    if [ "$secs" = 0 ]; then limit=(-runs=0); else limit=(-max_total_time="$secs"); fi
    if ! cargo fuzz run -O --sanitizer "$san" "$target" "$scratch/$target" "corpus/$target" -- \
        "${limit[@]}" -jobs=1 -workers=1 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1; then
        tail -n 60 "$scratch/$target.log"
        echo "fuzz smoke: $target FAILED (input in fuzz/artifacts/$target/)"
        exit 1
    fi
    grep -E '^stat::number_of_executed_units' "$scratch/$target.log" || true
done
