#!/usr/bin/env bash
# The release build: the whole workspace, then the `ulp` binary linked
# again statically (static-pie, glibc's libc.a). Every `ulp trigger` pays
# its own process start, and a dynamic ulp spends most of it in the loader
# (looking up ~150 C library symbols, loading libgcc_s): static, `ulp
# --version` runs 110 k instructions instead of 400 k. ulp uses nothing of
# the C library that needs it dynamic (no NSS: it reads /etc/passwd
# itself; no dlopen, no iconv). The runtime, libpulp.so, stays a shared
# library. Extra arguments go to the first `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace "$@"
# `cargo rustc` gives the flag to the final crate only, the one that links.
cargo rustc --release -p ulp --bin ulp "$@" -- -C target-feature=+crt-static
