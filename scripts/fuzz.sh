#!/usr/bin/env bash
# Run every fuzz target for a bounded time (seconds each, default 30).
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them, since no nightly toolchain can be installed here.
# No sanitizer: Herald forbids unsafe code, so AddressSanitizer would find
# nothing a panic does not show, and it doubles build and run time.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-30}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi

export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list --fuzz-dir fuzz); do
  mkdir -p "fuzz/corpus/$target"
  seeds=()
  [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
  echo "== fuzz $target for ${SECONDS_EACH}s"
  cargo fuzz run --sanitizer none --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$SECONDS_EACH" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 12
done
