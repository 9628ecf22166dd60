# Two commands for a newcomer: `make demo` runs the whole pipeline on an example app,
# `make test` runs every check CI runs. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit bench vsock-image vsock-test clean agent-pyz config-reference

# The C entry check is built by this install (editable: next to its source), so a
# change to it reinstalls too.
$(STAMP): pyproject.toml fluent_forward/_entrycheck.c
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "nitro-enclave-logs needs Python 3.11 or newer: run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

# `make test` includes the vsock tier (tests/test_vsock_tier.py boots a QEMU guest and runs
# tests/vsock in it over real AF_VSOCK); without a guest image it is skipped, saying how to
# enable it, and under CI=true that is a failure.
test: lint
	PYTHONASYNCIODEBUG=1 $(BIN)/python -m pytest

# Every hop measured, 1M lines of 150 bytes per run, 3 runs (a few minutes): prints a
# table and writes bench/results/latest.json. BENCH_ARGS="--lines 200000 --runs 1" for
# a quick look; see `python -m bench --help`. With a Fluent Bit (FLUENT_BIT, by default
# the one beside the project in ../shared/tools when it is there, else fluent-bit on
# PATH) it also runs ours and Fluent Bit's own two hops side by side.
FLUENT_BIT ?= $(wildcard ../shared/tools/fluent-bit-4.2.8/fluent-bit)
bench: $(STAMP)
	FLUENT_BIT=$(FLUENT_BIT) $(BIN)/python -m bench $(BENCH_ARGS)

# The agent as one file (Python 3.11+ and msgpack only), for minimal enclave images.
agent-pyz: $(STAMP)
	$(BIN)/python tools/build_pyz.py --output dist/enclave-log-agent.pyz

# The option tables in README.md, from the declared options (a test keeps them in step).
config-reference: $(STAMP)
	$(BIN)/python tools/gen_config_reference.py

# The vsock tier's guest image: installs the host packages it needs with apt if missing
# (qemu-system-x86 busybox-static debootstrap cpio socat) and builds the image, or reuses
# it (0.3 s when current). Needs root: apt-get and debootstrap.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
vsock-image: $(STAMP)
	$(SUDO) $(PYTHON) tools/vsock_vm.py build --project $(CURDIR)

# Only the vsock tier, with the guest console shown as it runs.
vsock-test: $(STAMP)
	$(BIN)/python -m pytest tests/test_vsock_tier.py -s -rs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
