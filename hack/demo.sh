#!/usr/bin/env bash
# `make demo`: the local registry with the demo images is up (make images); show drun's main job on them.
set -euo pipefail
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
. "$ROOT/hack/lib.sh"
. "$DRUN_TEST_STATE/env"
DRUN=$ROOT/target/release/drun
REG=$DRUN_TEST_REGISTRY

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step "$DRUN" pull "$REG/drun-test/busybox:latest"
step "$DRUN" pull "$REG/drun-test/debian:bookworm"
step "$DRUN" pull "$REG/drun-test/debian:bookworm-zstd"
step "$DRUN" pull "oci:$DRUN_TEST_CACHE/layouts/busybox:latest"
step "$DRUN" images
step "$DRUN" run --memory 256m --cpus 1 "$REG/drun-test/debian:bookworm" \
    sh -c 'echo "hello from $(. /etc/os-release; echo "$PRETTY_NAME") in drun container $(hostname)"; \
           echo "memory limit: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null)"; \
           df -h /dev/shm | tail -1'

# The main job: a workflow file (examples/pipeline: prepare -> train -> report, with artifacts and limits).
OUT=$(mktemp -d /tmp/drun-demo-artifacts.XXXXXX)
step "$DRUN" run --dry-run --artifacts "$OUT" "$ROOT/examples/pipeline/workflow.yaml" report
step "$DRUN" run --artifacts "$OUT" "$ROOT/examples/pipeline/workflow.yaml"
step find "$OUT" -type f

# runflow's "hello world" (examples/runflow): a variable from the command line, one workflow's stdout used by the next.
HELLO=$(mktemp /tmp/drun-demo-out.XXXXXX)
step "$DRUN" run --artifacts "$OUT/runflow" "$ROOT/examples/runflow/workflow.yaml" --var "out=$HELLO"
step cat "$HELLO"
rm -f "$HELLO"
printf '\nArtifacts and logs are in %s; the store is %s (override with --root or DRUN_ROOT).\n' \
    "$OUT" "${DRUN_ROOT:-/var/lib/drun}"
