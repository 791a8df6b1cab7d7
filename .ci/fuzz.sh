#!/usr/bin/env bash
# Fuzzing: builds every target in fuzz/ once, then runs each from its seed corpus for a bounded
# time (FUZZ_SECONDS, 45 by default). A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/; how to replay it is in fuzz/README.md.
# FUZZ_SANITIZER=address builds and runs under AddressSanitizer instead (see below).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-45}"
# Instrumented builds share nothing with the workspace's target dir; one per checkout, outside
# it (cargo takes the sources of two checkouts with the same layout for one another's).
sanitizer="${FUZZ_SANITIZER:-none}"
suffix=""
[ "$sanitizer" = none ] || suffix="-$sanitizer"
target_dir="${FUZZ_TARGET_DIR:-$(cd .. && pwd)/fuzz-target-$(basename "$PWD")$suffix}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# `-s none` by default: no sanitizer (the project has no unsafe code; coverage guidance needs
# none), which builds on the stable toolchain and runs about twice as fast. `address` runs the
# targets under AddressSanitizer, for the `unsafe` code of the crates they call (serde_json,
# base64, the AES-GCM crates); it is a nightly flag, enabled on the pinned toolchain with
# RUSTC_BOOTSTRAP.
fuzz=(nice -n 10 cargo fuzz)
flags=(-s "$sanitizer" --target-dir "$target_dir")
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi

echo "--- fuzz: build, sanitizer $sanitizer (into $target_dir)"
"${fuzz[@]}" build "${flags[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in $(cargo fuzz list); do
    echo "--- fuzz: $target, ${seconds}s, sanitizer $sanitizer"
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
