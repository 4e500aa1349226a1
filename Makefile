# The two quick-start commands (README.md):
#   make demo   build everything and live-patch a running program, end to end
#   make test   the whole test suite (what CI runs)
# Installing for real use (README.md, "Installing"):
#   make install PREFIX=/usr/local   ulp, libpulp.so.0, man page, bash completion
#   make uninstall PREFIX=/usr/local
#   make deb                         the Debian package target/deb/ulp_VERSION_amd64.deb
#                                    (/usr/bin/ulp, /usr/lib/<multiarch>/libpulp.so.0;
#                                    no global preload; scripts/deb.sh)
# Measuring (README.md, "Performance"):
#   make bench                      release build + the benchmark suite (table, bench-results.json)
#   make bench BENCH_ARGS=--quick   a smoke run of the same (under a minute)

PREFIX ?= /usr/local
DESTDIR ?=
# Where the runtime goes; empty: scripts/install.sh's default (PREFIX/lib,
# or PREFIX/lib/<multiarch> for PREFIX=/usr).
LIBDIR ?=

.PHONY: all demo test install uninstall deb bench
all:
	cargo build --release --workspace

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

install:
	PREFIX="$(PREFIX)" LIBDIR="$(LIBDIR)" DESTDIR="$(DESTDIR)" bash scripts/install.sh

uninstall:
	libdir="$(LIBDIR)"; \
	if [ -z "$$libdir" ]; then \
	  if [ "$(PREFIX)" = /usr ]; then \
	    libdir="$(PREFIX)/lib/$$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"; \
	  else libdir="$(PREFIX)/lib"; fi; \
	fi; \
	rm -f "$(DESTDIR)$(PREFIX)/bin/ulp" "$(DESTDIR)$$libdir/libpulp.so.0" \
	  "$(DESTDIR)$(PREFIX)/share/man/man1/ulp.1" \
	  "$(DESTDIR)$(PREFIX)/share/bash-completion/completions/ulp"

deb:
	bash scripts/deb.sh

BENCH_ARGS ?=
bench:
	cargo build --release --workspace
	"$${CARGO_TARGET_DIR:-target}/release/ulp-bench" $(BENCH_ARGS)
