#!/usr/bin/env bash
# Installs ulp for real use (README.md, "Installing"):
#
#   PREFIX/bin/ulp                                  the tool
#   LIBDIR/libpulp.so.0                             the runtime to preload
#   PREFIX/share/man/man1/ulp.1                     the manual page
#   PREFIX/share/bash-completion/completions/ulp    bash completion
#
# Usage: scripts/install.sh            (or: make install PREFIX=/usr/local)
# Environment:
#   PREFIX     where to install (default /usr/local)
#   LIBDIR     where the runtime goes: by default PREFIX/lib, and for
#              PREFIX=/usr the multiarch directory PREFIX/lib/<triple>
#              (dpkg-architecture -qDEB_HOST_MULTIARCH, else
#              x86_64-linux-gnu), where ulp also looks for it
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
if [ -z "${LIBDIR:-}" ]; then
  if [ "$PREFIX" = /usr ]; then
    triple=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || true)
    LIBDIR=$PREFIX/lib/${triple:-x86_64-linux-gnu}
  else
    LIBDIR=$PREFIX/lib
  fi
fi
case "$LIBDIR" in
  /*) ;;
  *) echo "install.sh: LIBDIR must be an absolute path, got '$LIBDIR'" >&2; exit 64 ;;
esac

if [ -z "${BUILD_DIR:-}" ]; then
  bash scripts/build-release.sh
  BUILD_DIR=${CARGO_TARGET_DIR:-target}/release
fi
for f in ulp libpulp.so; do
  if [ ! -f "$BUILD_DIR/$f" ]; then
    echo "install.sh: '$BUILD_DIR/$f' is missing: build first (cargo build --release)" >&2
    exit 1
  fi
done

root="$DESTDIR$PREFIX"
lib="$DESTDIR$LIBDIR"
install -d "$root/bin" "$lib" "$root/share/man/man1" \
  "$root/share/bash-completion/completions"
install -m 0755 "$BUILD_DIR/ulp" "$root/bin/ulp"
install -m 0755 "$BUILD_DIR/libpulp.so" "$lib/libpulp.so.0"
install -m 0644 docs/ulp.1 "$root/share/man/man1/ulp.1"
# Generated from the option definitions by the ulp just installed.
"$BUILD_DIR/ulp" --bash-completion >"$root/share/bash-completion/completions/ulp"
chmod 0644 "$root/share/bash-completion/completions/ulp"

echo "installed ulp into $root:"
echo "  $root/bin/ulp"
echo "  $lib/libpulp.so.0"
echo "  $root/share/man/man1/ulp.1"
echo "  $root/share/bash-completion/completions/ulp"
echo "start programs as:  LD_PRELOAD=$LIBDIR/libpulp.so.0 COMMAND"
