#!/usr/bin/env bash
# Fuzzing: builds every target in fuzz/ once, then runs each from its seed corpus for a bounded
# time (FUZZ_SECONDS, 45 by default). A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/; how to replay it is in fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-45}"
# Instrumented builds share nothing with the workspace's target dir; one per checkout, outside
# it (cargo takes the sources of two checkouts with the same layout for one another's).
target_dir="${FUZZ_TARGET_DIR:-$(cd .. && pwd)/fuzz-target-$(basename "$PWD")}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# `-s none`: no sanitizer (the project has no unsafe code; coverage guidance needs none), which
# builds on the stable toolchain and runs about twice as fast as AddressSanitizer.
fuzz=(nice -n 10 cargo fuzz)
flags=(-s none --target-dir "$target_dir")

echo "--- fuzz: build (into $target_dir)"
"${fuzz[@]}" build "${flags[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in $(cargo fuzz list); do
    echo "--- fuzz: $target, ${seconds}s"
    # New inputs go to a scratch directory; the seeds in fuzz/corpus stay as committed.
    mkdir -p "$work/$target"
    if ! "${fuzz[@]}" run "${flags[@]}" "$target" "$work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$work/$target.log" 2>&1; then
        tail -n 60 "$work/$target.log" >&2
        echo "fuzz target $target failed: its input is in fuzz/artifacts/$target/ (fuzz/README.md)" >&2
        exit 1
    fi
    grep -E '^Done|^stat::(number_of_executed_units|new_units_added)' "$work/$target.log" || true
done
