# The two quick-start commands (README.md):
#   make demo   build everything and live-patch a running program, end to end
#   make test   the whole test suite (what CI runs)

.PHONY: all demo test
all:
	cargo build --release --workspace

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh
