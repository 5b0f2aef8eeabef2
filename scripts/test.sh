#!/usr/bin/env bash
# Run every Herald test, setting up whatever the tests need first.
# This is the command the README names and that CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
# A clean build gains nothing from incremental compilation, only its overhead.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi
# Where pip puts moto_server for a non-root or --user install.
export PATH="$HOME/.local/bin:$PATH"

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component" || { echo "test: cannot install $component" >&2; exit 1; }
  fi
done

echo "== format (at ${SECONDS}s)"
cargo fmt --all --check

# Clippy lints the workspace's crates inside the test build itself: cargo
# runs clippy-driver (a rustc with clippy's lints) in place of rustc for
# them, so they are compiled once, linted and built for the tests, instead
# of a `cargo clippy` pass whose check-only artifacts the test build cannot
# reuse (that pass cost 5 minutes of a 15-minute budget on 2 cores).
# Dependencies are built by plain rustc with their lints capped, so
# `-D warnings` reaches only the workspace's code; it is the same check as
# `cargo clippy --workspace --all-targets -- -D warnings`.
lint_env=(env RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver" RUSTFLAGS="${RUSTFLAGS:-} -D warnings")

echo "== tests, linted by clippy as they build (at ${SECONDS}s)"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
"${lint_env[@]}" cargo test --workspace --all-targets --locked 2>&1 | tee "$results"
# `--all-targets` leaves out doc tests: the Rust client's examples run
# against a gateway (about 15 s; the libraries above are reused).
"${lint_env[@]}" cargo test --workspace --doc --locked 2>&1 | tee -a "$results"

echo "== JavaScript client and inspector (Node and headless Chromium; at ${SECONDS}s)"
# The binary the Rust tests just built (building it again outside `cargo
# test` would recompile half the workspace: dev-dependency features differ).
export HERALD_BIN="$PWD/target/debug/herald"
[ -x "$HERALD_BIN" ] || cargo build -p herald --locked
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm test) 2>&1 | tee -a "$results"

echo "== Python: OpenAPI conformance (schemathesis) and the Python client (at ${SECONDS}s)"
# A virtual environment outside the clone, kept between runs (like cargo's
# registry) and rebuilt when tests/requirements.txt changes; the client
# itself is installed from this checkout every time.
if ! python3 -m venv --help >/dev/null 2>&1; then
  sudo_if() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if apt-get install -y -q python3-venv python3-pip
fi
venv="${XDG_CACHE_HOME:-$HOME/.cache}/herald-test-venv-$(sha256sum tests/requirements.txt | cut -c1-12)"
if [ ! -x "$venv/bin/pytest" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
fi
"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps ./clients/python
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/openapi clients/python/tests 2>&1 | tee -a "$results"

echo "== the build with the system's allocator (no mimalloc), linted (at ${SECONDS}s)"
# After the JavaScript and Python stages, which run target/debug/herald:
# this build replaces it. It reuses the test build's dependencies but for
# the few that the benches' criterion gives extra features (about 90 s here).
"${lint_env[@]}" cargo build -p herald --no-default-features --locked

echo "== fuzz (bounded; at ${SECONDS}s)"
# 6 s a target, 18 s in all: the build is most of this stage (the
# seeds in fuzz/seeds start every run at the interesting inputs); longer
# runs: `scripts/fuzz.sh 300` or HERALD_FUZZ_SECONDS.
scripts/fuzz.sh "${HERALD_FUZZ_SECONDS:-6}"

# One closing line with the totals of every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     /^# pass [0-9]+$/ { p += $3 }
     /^# fail [0-9]+$/ { f += $3 }
     /^[0-9]+ (passed|failed).* in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$results"
echo "== done in ${SECONDS}s"
