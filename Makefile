# Switchyard. `make demo` and `make test` do every set-up step themselves on a fresh Debian 12.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build release demo test unit lint fmt bench fuzz clean

all: build

## Debian packages (DPDK, clang for bindgen, iproute2, tshark, ...); idempotent.
deps:
	bash scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace

release: deps
	$(CARGO) build --release -p switchyard

## The network-namespace lab with real traffic through the router, and what happened.
demo: release
	SWITCHYARD=$${CARGO_TARGET_DIR:-target}/release/switchyard bash lab/demo.sh

## Everything CI runs: formatting, lints, unit/property tests, driver and namespace tests.
test: deps lint
	$(CARGO) test --workspace --no-fail-fast

## Only the fast, pure tests (no root, no namespaces).
unit:
	$(CARGO) test --workspace --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: deps
	$(CARGO) bench -p switchyard-benches
	bash benches/dpdk_vs_testpmd.sh
	bash benches/kernel_vs_userspace.sh
	bash benches/callgrind.sh

## Each fuzz target for FUZZ_SECONDS (default 600). cargo-fuzz needs nightly features;
## RUSTC_BOOTSTRAP lets the stable toolchain provide them.
FUZZ_SECONDS ?= 600
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $$(RUSTC_BOOTSTRAP=1 cargo fuzz list); do \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

clean:
	$(CARGO) clean
