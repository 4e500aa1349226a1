#!/usr/bin/env bash
# Installs ulp for real use (README.md, "Installing"):
#
#   PREFIX/bin/ulp                                  the tool
#   PREFIX/lib/libpulp.so.0                         the runtime to preload
#   PREFIX/share/man/man1/ulp.1                     the manual page
#   PREFIX/share/bash-completion/completions/ulp    bash completion
#
# Usage: scripts/install.sh            (or: make install PREFIX=/usr/local)
# Environment:
#   PREFIX     where to install (default /usr/local)
#   DESTDIR    staging root prepended to every path (for packagers)
#   BUILD_DIR  take ulp and libpulp.so from this directory instead of
#              building them (cargo build --release) first
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
case "$PREFIX" in
  /*) ;;
  *) echo "install.sh: PREFIX must be an absolute path, got '$PREFIX'" >&2; exit 64 ;;
esac

if [ -z "${BUILD_DIR:-}" ]; then
  cargo build --release -p ulp -p ulp-runtime
  BUILD_DIR=${CARGO_TARGET_DIR:-target}/release
fi
for f in ulp libpulp.so; do
  if [ ! -f "$BUILD_DIR/$f" ]; then
    echo "install.sh: '$BUILD_DIR/$f' is missing: build first (cargo build --release)" >&2
    exit 1
  fi
done

root="$DESTDIR$PREFIX"
install -d "$root/bin" "$root/lib" "$root/share/man/man1" \
  "$root/share/bash-completion/completions"
install -m 0755 "$BUILD_DIR/ulp" "$root/bin/ulp"
install -m 0755 "$BUILD_DIR/libpulp.so" "$root/lib/libpulp.so.0"
install -m 0644 docs/ulp.1 "$root/share/man/man1/ulp.1"
# Generated from the option definitions by the ulp just installed.
"$BUILD_DIR/ulp" --bash-completion >"$root/share/bash-completion/completions/ulp"
chmod 0644 "$root/share/bash-completion/completions/ulp"

echo "installed ulp into $root:"
echo "  $root/bin/ulp"
echo "  $root/lib/libpulp.so.0"
echo "  $root/share/man/man1/ulp.1"
echo "  $root/share/bash-completion/completions/ulp"
echo "start programs as:  LD_PRELOAD=$PREFIX/lib/libpulp.so.0 COMMAND"
