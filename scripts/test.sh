#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, build, tests.
# Tests need the runtime cdylib (libpulp.so) built next to the ulp binary,
# hence the explicit workspace build before `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }
step "cargo fmt --check"
cargo fmt --all --check
step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo test --workspace"
cargo test --workspace
echo
echo "all tests passed"
