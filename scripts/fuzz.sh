#!/usr/bin/env bash
# Run every fuzz target for a bounded time (seconds each, default 30).
#
# The targets are libFuzzer binaries (fuzz/, libfuzzer-sys). They are built
# here with the flags `cargo fuzz run --sanitizer none` uses, rather than
# through cargo-fuzz itself: installing cargo-fuzz from source costs CI
# minutes on a fresh machine, for a wrapper around one `cargo build`.
# (`cargo fuzz run --sanitizer none --fuzz-dir fuzz <target>` still works
# for anyone who has it.) No sanitizer: Herald forbids unsafe code, so
# AddressSanitizer would find nothing a panic does not show, and it doubles
# build and run time.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-30}

triple=$(rustc -vV | sed -n 's/^host: //p')
flags=(
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  -Cllvm-args=-sanitizer-coverage-stack-depth
  --cfg fuzzing
  -Cdebug-assertions
  -Coverflow-checks
)
# Only the fuzz crate gets these flags (--target keeps them off build scripts).
RUSTFLAGS="${flags[*]}" cargo build --manifest-path fuzz/Cargo.toml --profile fuzz --target "$triple" --bins --quiet

for target in $(sed -n '/^\[\[bin\]\]/,/^name/ s/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml); do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  seeds=()
  [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
  echo "== fuzz $target for ${SECONDS_EACH}s"
  "fuzz/target/$triple/fuzz/$target" -artifact_prefix="fuzz/artifacts/$target/" \
    "fuzz/corpus/$target" "${seeds[@]}" \
    -max_total_time="$SECONDS_EACH" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 12
done
