# drun: the two set-up commands of the README are `make demo` and `make test`; everything else is a step of them.
SHELL := /bin/bash
CARGO ?= cargo
DRUN := target/release/drun
export DRUN_TEST_STATE ?= /tmp/drun-test-state
export DRUN_TEST_CACHE ?= /var/cache/drun-test
# Packages drun needs to build (libseccomp for the run path) and the test infrastructure uses.
DEB_PACKAGES := build-essential pkg-config libseccomp-dev libelf-dev zlib1g-dev catatonit qemu-system-x86 cpio kmod docker-registry skopeo umoci busybox-static debootstrap \
	apache2-utils openssl jq zstd python3 ca-certificates curl uidmap util-linux

.PHONY: all deps build registry images users demo test test-gpu lint unit integration bench-pull bench-run registry-down clean

all: build

deps:
	@. hack/lib.sh && need_pkgs $(DEB_PACKAGES)
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }

build: deps
	$(CARGO) build --release --locked

registry: deps
	bash hack/registry.sh up

images: registry
	bash hack/images.sh

registry-down:
	bash hack/registry.sh down

demo: build images
	bash hack/demo.sh

# The documentation check parses every `drun …` command and workflow file the docs show with the built binary.
lint: build
	@. hack/lib.sh && need_pkgs python3
	$(CARGO) fmt --check
	python3 hack/check-docs.py --drun $(DRUN)
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

unit: deps
	$(CARGO) test --release --locked --lib

# The unprivileged users the rootless tests run as (hack/test-users.sh down removes them).
users: deps
	bash hack/test-users.sh up

integration: build images users
	$(CARGO) test --release --locked --test integration -- --test-threads=2

test: lint build images users
	$(CARGO) test --release --locked -- --test-threads=2

# On a host with an NVIDIA GPU and driver: the real-hardware test (ignored by `make test`).
test-gpu: build images
	$(CARGO) test --release --locked --test integration -- --ignored --test-threads=1 real_gpu_hardware

bench-pull: build images
	bash hack/bench-pull

clean:
	$(CARGO) clean

bench-run: build images
	bash hack/bench-run
