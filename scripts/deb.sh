#!/usr/bin/env bash
# Builds the Debian package (README.md, "Debian package"):
#
#   OUT_DIR/ulp_VERSION_ARCH.deb     (default OUT_DIR: target/deb)
#
# staged by scripts/install.sh with PREFIX=/usr, so it holds what
# `make install` installs, at the Debian places:
#
#   /usr/bin/ulp                                     the tool (stripped)
#   /usr/lib/<multiarch>/libpulp.so.0                the runtime (stripped of
#                                                    its local symbols only)
#   /usr/share/man/man1/ulp.1.gz                     the manual page
#   /usr/share/bash-completion/completions/ulp       bash completion
#   /usr/share/doc/ulp/{README.md,COMPAT.md,copyright,changelog.Debian.gz}
#   /lib/systemd/system/ulp-watch.service            `ulp watch` as a service
#                                                    (Debian 12's place for
#                                                    units), not enabled
#
# No maintainer scripts: installing it preloads nothing (/etc/ld.so.preload
# is not touched), and enables or starts no service (systemctl enable --now
# ulp-watch does); programs opt in with LD_PRELOAD.
#
# Usage: scripts/deb.sh            (or: make deb)
# Environment:
#   BUILD_DIR   take ulp and libpulp.so from this directory instead of
#               building them (cargo build --release) first
#   OUT_DIR     where the package (and its staging tree) goes
#   MAINTAINER  the Maintainer field (default: the project's maintainers)
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

die() {
  echo "deb.sh: $*" >&2
  exit 1
}
for tool in dpkg-deb strip readelf gzip md5sum; do
  command -v "$tool" >/dev/null || die "'$tool' is needed (apt-get install dpkg binutils gzip coreutils)"
done

# The version of the crate `ulp`: its own, or the workspace's.
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' crates/ulp/Cargo.toml | head -n1)
if [ -z "$version" ]; then
  version=$(awk '/^\[/{ws = ($0 == "[workspace.package]")} ws && /^version *=/{
    gsub(/.*= *"|".*/, ""); print; exit }' Cargo.toml)
fi
[ -n "$version" ] || die "no version in crates/ulp/Cargo.toml or Cargo.toml"
# A package of upstream's own, not of a distribution: the Debian revision
# is 1, so the version is VERSION-1 (and the changelog changelog.Debian).
debversion=$version-1
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
maintainer=${MAINTAINER:-ulp maintainers <maintainers@users.noreply.r-seed-48f1d337.example>}

if [ -z "${BUILD_DIR:-}" ]; then
  bash scripts/build-release.sh
  BUILD_DIR=${CARGO_TARGET_DIR:-target}/release
fi
OUT_DIR=${OUT_DIR:-${CARGO_TARGET_DIR:-target}/deb}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
stage=$OUT_DIR/ulp_${debversion}_$arch
deb=$OUT_DIR/ulp_${debversion}_$arch.deb
rm -rf "$stage" "$deb"

# Dates in the package: the last commit's (reproducible), else now.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH=$epoch

# The files, as `make install PREFIX=/usr` puts them.
DESTDIR=$stage PREFIX=/usr LIBDIR=/usr/lib/$multiarch BUILD_DIR=$BUILD_DIR \
  bash scripts/install.sh >/dev/null
bin=$stage/usr/bin/ulp
lib=$stage/usr/lib/$multiarch/libpulp.so.0
[ -f "$bin" ] && [ -f "$lib" ] || die "scripts/install.sh did not stage ulp and libpulp.so.0"

# What both binaries link against; the Depends below covers exactly these.
# (dpkg-shlibdeps needs a debian/ directory: the result it gives, checked
# by hand, is written here.)
for f in "$bin" "$lib"; do
  readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | while read -r needed; do
    case "$needed" in
      libc.so.6 | ld-linux-x86-64.so.2 | libgcc_s.so.1) ;;
      *) die "$(basename "$f") needs $needed: add its package to Depends in scripts/deb.sh" ;;
    esac
  done
done
depends="libc6 (>= 2.34), libgcc-s1 (>= 4.2)"

# Debian strips: the tool wholly; the runtime keeps its dynamic symbols
# (the interface ulp looks up in .dynsym), only local symbols go.
strip --remove-section=.comment --remove-section=.note "$bin"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$lib"
# A shared library is not executable (Debian policy 8.1).
chmod 0644 "$lib"
readelf --dyn-syms "$lib" | grep -q ' __ulp_' || die "the stripped runtime lost its dynamic symbols"

gzip -9n "$stage/usr/share/man/man1/ulp.1"

# The service, shipped and not enabled (no maintainer script).
install -d "$stage/lib/systemd/system"
install -m 0644 scripts/ulp-watch.service "$stage/lib/systemd/system/ulp-watch.service"

doc=$stage/usr/share/doc/ulp
install -d "$doc"
install -m 0644 README.md "$doc/README.md"
install -m 0644 docs/COMPAT.md "$doc/COMPAT.md"
year=$(date -u -d "@$epoch" +%Y)
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ulp
Upstream-Contact: $maintainer
Comment: /usr/bin/ulp also contains, compiled in, these Rust crates, each
 used under the MIT license (every one of them offers it): anstyle,
 bitflags, clap, clap_builder, clap_lex, itoa, libc, linux-raw-sys, memchr,
 object, rustix, serde_core, serde_json, terminal_size, zmij; and the Rust
 standard library (MIT). Their copyright notices are those of their
 authors, as published with each crate on crates.io.

Files: *
Copyright: $year The ulp authors
License: GPL-2+

License: GPL-2+
 This program is free software; you can redistribute it and/or modify
 it under the terms of the GNU General Public License as published by
 the Free Software Foundation; either version 2 of the License, or
 (at your option) any later version.
 .
 This program is distributed in the hope that it will be useful,
 but WITHOUT ANY WARRANTY; without even the implied warranty of
 MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
 GNU General Public License for more details.
 .
 You should have received a copy of the GNU General Public License
 along with this program.  If not, see <https://www.gnu.org/licenses/>.
 .
 On Debian systems, the full text of the GNU General Public License
 version 2 can be found in the file '/usr/share/common-licenses/GPL-2'.
EOF
chmod 0644 "$doc/copyright"
cat >"$doc/changelog.Debian" <<EOF
ulp ($debversion) unstable; urgency=medium

  * Package ulp $version: the ulp tool and the live-patching runtime
    libpulp.so.0, built with \`make deb\` (scripts/deb.sh).

 -- $maintainer  $(LC_ALL=C date -u -R -d "@$epoch")
EOF
gzip -9n "$doc/changelog.Debian"

install -d "$stage/usr/share/lintian/overrides"
cat >"$stage/usr/share/lintian/overrides/ulp" <<'EOF'
# libpulp.so.0 is the runtime preloaded (LD_PRELOAD) or dlopen()ed by ulp,
# not a library programs link against; it must match the ulp beside it, so
# it ships in the tool's package rather than a libpulp0 of its own.
ulp: package-name-doesnt-match-sonames libpulp0
# Built by upstream with `make deb`, not uploaded to Debian: there is no
# ITP bug to close.
ulp: initial-upload-closes-no-bugs [usr/share/doc/ulp/changelog.Debian.gz:1]
# /usr/bin/ulp is a static PIE (scripts/build-release.sh: its start is
# most of a trigger's time otherwise): lintian takes such a file for a
# shared library without its DT_NEEDED.
ulp: shared-library-lacks-prerequisites [usr/bin/ulp]
# libpulp.so.0 is linked without RELRO on purpose: every process that
# preloads it would pay one more mmap and an mprotect at start, 5 us in all
# on the machine measured (ARCHITECTURE.md, "The runtime: no_std"). Its
# writable relocated data is two pages of its own pointers.
EOF
printf 'ulp: hardening-no-relro [usr/lib/%s/libpulp.so.0]\n' "$multiarch" \
  >>"$stage/usr/share/lintian/overrides/ulp"
chmod 0644 "$stage/usr/share/lintian/overrides/ulp"

install -d "$stage/DEBIAN"
installed_size=$(du -sk --apparent-size --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<EOF
Package: ulp
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Section: admin
Priority: optional
Description: userspace live patching of running programs
 ulp applies live patches to shared libraries of running processes without
 restarting them: a fixed function is redirected to its new version in
 every process that loaded the library, all or nothing, and can be
 reverted. It is a drop-in replacement for SUSE's libpulp: the same ulp
 command, the same preloaded runtime libpulp.so.0, the same .dsc
 description files and packed live-patch containers.
 .
 Programs become patchable when started with
 LD_PRELOAD=/usr/lib/$multiarch/libpulp.so.0, or later with
 ulp trigger --load-runtime. Installing this package preloads nothing by
 itself.
EOF
(cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\n' | LC_ALL=C sort |
  xargs -d '\n' md5sum) >"$stage/DEBIAN/md5sums"
# The runtime is a shared library in a public directory: ld.so's cache
# is refreshed (a trigger, not a maintainer script), and a program linked
# against it would depend on this package.
echo "activate-noawait ldconfig" >"$stage/DEBIAN/triggers"
echo "libpulp 0 ulp (>= $debversion)" >"$stage/DEBIAN/shlibs"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums" "$stage/DEBIAN/triggers" \
  "$stage/DEBIAN/shlibs"
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -exec touch -h -d "@$epoch" {} +

dpkg-deb --build --root-owner-group "$stage" "$deb" >/dev/null
echo "built $deb"
