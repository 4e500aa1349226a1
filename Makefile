# The two quick-start commands (README.md):
#   make demo   build everything and live-patch a running program, end to end
#   make test   the whole test suite (what CI runs)
# Installing for real use (README.md, "Installing"):
#   make install PREFIX=/usr/local   ulp, libpulp.so.0, man page, bash completion
#   make uninstall PREFIX=/usr/local
# Measuring (README.md, "Performance"):
#   make bench                      release build + the benchmark suite (table, bench-results.json)
#   make bench BENCH_ARGS=--quick   a smoke run of the same (under a minute)
# The Ansible collection (ansible/collections/ansible_collections/ulp/livepatch):
#   make ansible-sanity             ansible-test sanity (ansible-core from PyPI, in target/ansible-venv)

PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all demo test install uninstall bench ansible-sanity
all:
	cargo build --release --workspace

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

install:
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" bash scripts/install.sh

uninstall:
	rm -f "$(DESTDIR)$(PREFIX)/bin/ulp" "$(DESTDIR)$(PREFIX)/lib/libpulp.so.0" \
	  "$(DESTDIR)$(PREFIX)/share/man/man1/ulp.1" \
	  "$(DESTDIR)$(PREFIX)/share/bash-completion/completions/ulp"

BENCH_ARGS ?=
bench:
	cargo build --release --workspace
	"$${CARGO_TARGET_DIR:-target}/release/ulp-bench" $(BENCH_ARGS)

ANSIBLE_VENV ?= $${CARGO_TARGET_DIR:-$(CURDIR)/target}/ansible-venv
ANSIBLE_SANITY_TESTS ?= compile validate-modules yamllint pep8 shebang line-endings \
  empty-init ansible-doc runtime-metadata no-assert no-smart-quotes use-argspec-type-path
ansible-sanity:
	[ -x "$(ANSIBLE_VENV)/bin/ansible-test" ] || { python3 -m venv "$(ANSIBLE_VENV)" && \
	  "$(ANSIBLE_VENV)/bin/pip" install -q 'ansible-core==2.19.*'; }
	cd ansible/collections/ansible_collections/ulp/livepatch && \
	  HOME="$$(mktemp -d)" "$(ANSIBLE_VENV)/bin/ansible-test" sanity --python 3.11 --requirements \
	  $(addprefix --test ,$(ANSIBLE_SANITY_TESTS))
