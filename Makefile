# The two quick-start commands (README.md):
#   make demo   build everything and live-patch a running program, end to end
#   make test   the whole test suite (what CI runs)
# Installing for real use (README.md, "Installing"):
#   make install PREFIX=/usr/local   ulp, libpulp.so.0, man page, bash completion
#   make uninstall PREFIX=/usr/local
#   make deb                         the Debian package target/deb/ulp_VERSION-1_amd64.deb
#                                    (/usr/bin/ulp, /usr/lib/<multiarch>/libpulp.so.0;
#                                    no global preload; scripts/deb.sh)
# Measuring (README.md, "Performance"):
#   make bench                      release build + the benchmark suite (table, bench-results.json)
#   make bench BENCH_ARGS=--quick   a smoke run of the same (under a minute)
# The Ansible collection (ansible/collections/ansible_collections/ulp/livepatch):
#   make ansible-sanity             ansible-test sanity (ansible-core from PyPI, in target/ansible-venv)

PREFIX ?= /usr/local
DESTDIR ?=
# Where the runtime goes; empty: scripts/install.sh's default (PREFIX/lib,
# or PREFIX/lib/<multiarch> for PREFIX=/usr).
LIBDIR ?=

.PHONY: all demo test install uninstall deb bench ansible-sanity
all:
	bash scripts/build-release.sh

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
	bash scripts/build-release.sh
	"$${CARGO_TARGET_DIR:-target}/release/ulp-bench" $(BENCH_ARGS)

ANSIBLE_VENV ?= $(CURDIR)/target/ansible-venv
# ansible-test keeps its own environments under $HOME/.ansible/test: a home
# of its own under target/, never the user's; its pip bootstrap (normally
# downloaded from ci-files.testing.ansible.com) is scripts/ansible-test-get-pip.py.
ANSIBLE_TEST_HOME ?= $(CURDIR)/target/ansible-test-home
ANSIBLE_SANITY_TESTS ?= compile validate-modules yamllint pep8 shebang line-endings \
  empty-init ansible-doc runtime-metadata no-assert no-smart-quotes use-argspec-type-path ignores \
  import pylint
ansible-sanity:
	[ -x "$(ANSIBLE_VENV)/bin/ansible-test" ] || { python3 -m venv "$(ANSIBLE_VENV)" && \
	  "$(ANSIBLE_VENV)/bin/pip" install -q 'ansible-core==2.19.*'; }
	mkdir -p "$(ANSIBLE_TEST_HOME)/.ansible/test/cache"
	cp scripts/ansible-test-get-pip.py "$(ANSIBLE_TEST_HOME)/.ansible/test/cache/get_pip_24_2.py"
	cd ansible/collections/ansible_collections/ulp/livepatch && \
	  HOME="$(ANSIBLE_TEST_HOME)" "$(ANSIBLE_VENV)/bin/ansible-test" sanity --python 3.11 --requirements \
	  $(addprefix --test ,$(ANSIBLE_SANITY_TESTS))
