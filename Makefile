# drun: the two set-up commands of the README are `make demo` and `make test`; everything else is a step of them.
SHELL := /bin/bash
CARGO ?= cargo
DRUN := target/release/drun
export DRUN_TEST_STATE ?= /tmp/drun-test-state
export DRUN_TEST_CACHE ?= /var/cache/drun-test
# What compiling drun needs (Debian packages): a C toolchain and pkg-config for the -sys crates, libseccomp (the
# seccomp binding), libelf and zlib (libbpf-sys builds libbpf, for the cgroup v2 device filter), CA certificates
# (cargo fetches the crates over HTTPS).
BUILD_PACKAGES := build-essential pkg-config libseccomp-dev libelf-dev zlib1g-dev ca-certificates
# What the test fixtures (tests/fixtures/*.py) run on.
FIXTURE_PACKAGES := python3
# What the tests run on the host besides: catatonit (`--init`), util-linux (setpriv, unshare), podman (the CI job
# container of tests/integration/nested.rs, with runc as its runtime: crun refuses hybrid hosts whose cgroup2 has a
# controller). The fixture and
# harness scripts install their own tools when they run: registry.sh the registry, images.sh debootstrap, skopeo
# and umoci, test-users.sh uidmap, hack/vm-test.sh qemu, hack/slurm.sh Slurm, the benchmarks podman and hyperfine.
TEST_PACKAGES := catatonit util-linux squashfs-tools squashfs-tools-ng squashfuse podman runc
# The drun binaries `make bench-run` and `make bench-pull` measure: NEW, and OLD interleaved with it when given
# (`make bench-run OLD=/path/to/old/drun`).
NEW ?= $(DRUN)
OLD ?=
BENCH_BINARIES = --new "$(NEW)" $(if $(OLD),--old "$(OLD)")

.PHONY: all deps fixture-deps test-deps build registry images users demo test test-props test-powercut test-chaos test-soak test-gpu lint unit integration bench-pull bench-run bench-exec bench-srun bench-mpi bench-setup bench-scale test-scale scale-images registry-down clean

all: build

deps:
	@. hack/lib.sh && need_pkgs $(BUILD_PACKAGES)
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }

fixture-deps:
	@. hack/lib.sh && need_pkgs $(FIXTURE_PACKAGES)

test-deps: fixture-deps
	@. hack/lib.sh && need_pkgs $(TEST_PACKAGES)

build: deps
	$(CARGO) build --release --locked

# The test registries on loopback, with the test images (tests/fixtures/; `make registry-down` stops them).
registry: fixture-deps
	bash tests/fixtures/registry.sh up

images: registry
	bash tests/fixtures/images.sh
	bash tests/fixtures/scale-images.sh small

# The large scale images (3.4 GB unpacked, 105,000 files; and 64 layers): built once into the cache (minutes),
# pushed to the test registry.
scale-images: registry
	bash tests/fixtures/scale-images.sh large

registry-down:
	bash tests/fixtures/registry.sh down

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

# The unprivileged users the rootless tests run as (tests/fixtures/test-users.sh down removes them).
users:
	bash tests/fixtures/test-users.sh up

integration: build images users test-deps
	$(CARGO) test --release --locked --test integration -- --test-threads=2

test: lint build images users test-deps
	$(CARGO) test --release --locked -- --test-threads=2

# The property tests (parsers, workflow loader, unpacker, manifests) with many more cases than `make test`'s 64.
PROPTEST_CASES ?= 5000
test-props: deps
	PROPTEST_CASES=$(PROPTEST_CASES) $(CARGO) test --release --locked --lib props

# Power cuts during pulls, in the qemu VM with the store on an ext4 disk (DRUN_POWERCUT_ITERATIONS, default 20)
test-powercut: build images
	$(CARGO) test --release --locked --test integration -- --ignored --nocapture power_cuts_during_pulls

# The crash campaign and the concurrency soak (docs/reliability.md): ignored by `make test`, minutes each.
# DRUN_CHAOS_ITERATIONS / DRUN_CHAOS_SEED and DRUN_SOAK_OPERATIONS / DRUN_SOAK_MINUTES / DRUN_SOAK_SEED tune them.
test-chaos: build images users
	$(CARGO) test --release --locked --test integration -- --ignored chaos:: --test-threads=1 --nocapture
	PROPTEST_CASES=$(PROPTEST_CASES) $(CARGO) test --release --locked --lib props

# The large scale images through drun: pulled into the store and as squashfs files (as root and as a user), run from
# both, the 64-layer one through overlay (tests/integration/scale.rs), and a cold two-node Slurm step from an image
# directory (slurm.rs; needs hack/slurm.sh's cluster). Ignored by `make test`, which runs the small ones.
test-scale: build images scale-images test-deps
	time $(CARGO) test --release --locked --test integration -- --ignored --nocapture --test-threads=1 \
	    large_scale_image

test-soak: build images users
	$(CARGO) test --release --locked --test integration -- --ignored soak:: --test-threads=1 --nocapture

# On a host with an NVIDIA GPU and driver: the real-hardware test (ignored by `make test`). It builds its own image
# (hack/gpu-hardware.sh image: glibc + tests/fixtures/cuda_check.c), so a GPU machine needs no registry.
test-gpu: build test-deps
	$(CARGO) test --release --locked --test integration -- --ignored --test-threads=1 real_gpu_hardware

# Benchmarks (BENCHMARKS.md): `make bench-run OLD=/path/to/old/drun` also times that binary against NEW
# (target/release/drun unless given), interleaved.
bench-pull: build images
	bash hack/bench-pull $(BENCH_BINARIES)

bench-run: build images
	bash hack/bench-run $(BENCH_BINARIES)

bench-exec: build images
	bash hack/bench-exec $(BENCH_BINARIES)

# A workflow's setup built, kept as a layer and reused, against no setup and podman build + run
bench-setup: build images
	bash hack/bench-setup $(BENCH_BINARIES)

# srun launch overhead (hack/slurm.sh's two-node cluster; nothing else may run one meanwhile)
bench-srun: build images
	bash hack/bench-srun

# The large scale image: drun's store pull and squashfs conversion against podman and skopeo+umoci+mksquashfs, the
# floor, peak memory, bytes written, time to first exec, 16 concurrent cold starts on one --image-dir.
bench-scale: build images scale-images
	bash hack/bench-scale

# MPI ping-pong between two ranks of one node, host vs containers (the same cluster)
bench-mpi: build images
	bash hack/bench-mpi

clean:
	$(CARGO) clean
