#!/usr/bin/env bash
# drun on a real NVIDIA GPU: prepared on a development host, run on a GPU machine that has no network and maybe
# not Debian's libraries (docs/gpus.md, "Checked on real hardware").
#
#   hack/gpu-hardware.sh prepare [BUNDLE]   here: BUNDLE (default .gpu-bundle/) gets a self-contained drun (libseccomp
#                                           linked statically, glibc only), the CUDA check image as an OCI layout
#                                           (Debian's libc6 + busybox + tests/fixtures/cuda_check), and, with
#                                           --with-test, the real-hardware integration test binary
#   hack/gpu-hardware.sh image DIR          only the OCI layout (DIR/layout, tag gpu-check)
#   hack/gpu-hardware.sh check [BUNDLE]     there, as root: every check, each bounded in time; the report goes to
#                                           $OUT (or BUNDLE/out): report.md, the full log, drun's JSON and CDI spec
#
# `check` never stops at a failed step: each step's command, exit code and output go to the report, so one run
# on a machine lent for minutes says everything. Exit code: the number of failed checks (0: all passed).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "gpu-hardware: $*" >&2; exit 1; }

# The CUDA check image: the C library and the dynamic loader of this Debian host (a static busybox cannot dlopen
# libcuda), busybox for a shell, and the check program. The driver's files come from drun's injection.
build_image() {
    local out=$1 rootfs tmp
    tmp=$(mktemp -d)
    rootfs=$tmp/rootfs
    mkdir -p "$rootfs"/{usr/bin,usr/sbin,usr/local/bin,usr/lib/x86_64-linux-gnu,usr/lib64,etc/ld.so.conf.d,tmp,root,proc,sys,dev}
    chmod 1777 "$rootfs/tmp"
    ln -s usr/bin "$rootfs/bin"
    ln -s usr/sbin "$rootfs/sbin"
    ln -s usr/lib "$rootfs/lib"
    ln -s usr/lib64 "$rootfs/lib64"
    # libc6's shared objects and loader (not its locales, gconv modules or documentation).
    dpkg -L libc6 | while read -r f; do
        case "$f" in
            */gconv/*|/usr/share/*|*/audit/*) continue ;;
        esac
        if [ -f "$f" ] || [ -L "$f" ]; then
            local rel=${f#/}
            rel=${rel#usr/}
            mkdir -p "$rootfs/usr/$(dirname "$rel")"
            cp -a "$f" "$rootfs/usr/$rel" 2>/dev/null || true
        fi
    done
    cp -a /bin/busybox "$rootfs/usr/bin/busybox"
    for a in sh ls cat env id echo grep head wc test true false sleep; do ln -sf busybox "$rootfs/usr/bin/$a"; done
    gcc -O2 -Wall -o "$rootfs/usr/local/bin/cuda_check" "$ROOT/tests/fixtures/cuda_check.c" -ldl \
        || die "cannot compile tests/fixtures/cuda_check.c"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    printf 'include /etc/ld.so.conf.d/*.conf\n' >"$rootfs/etc/ld.so.conf"
    python3 "$ROOT/tests/fixtures/mkimage.py" layer dir "$tmp/layer.tar" --dir "$rootfs" >/dev/null \
        || die "cannot make the image layer"
    cat >"$tmp/spec.json" <<EOF
{"layout": "$out", "tag": "gpu-check",
 "images": [{"os": "linux", "architecture": "amd64",
             "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/usr/sbin"], "Cmd": ["cuda_check"], "WorkingDir": "/"},
             "layers": [{"tar": "$tmp/layer.tar", "compression": "gzip", "created_by": "hack/gpu-hardware.sh"}]}]}
EOF
    rm -rf "$out"
    python3 "$ROOT/tests/fixtures/mkimage.py" build "$tmp/spec.json" >/dev/null || die "cannot write the OCI layout"
    rm -rf "$tmp"
}

prepare() {
    local bundle=${1:-$ROOT/.gpu-bundle} with_test=${2:-}
    local target=${CARGO_TARGET_DIR:-$ROOT/target/gpu-hardware}
    mkdir -p "$bundle"
    # libseccomp statically: the GPU machine may not have libseccomp.so.2. drun re-executes itself through
    # /proc/self/exe, so the binary must start without an explicit loader or library path.
    export LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu
    CARGO_TARGET_DIR=$target cargo build --release --locked || die "cannot build drun"
    strip -o "$bundle/drun" "$target/release/drun"
    if ldd "$bundle/drun" | grep -q libseccomp; then die "drun still links libseccomp dynamically"; fi
    if [ "$with_test" = --with-test ]; then
        local exe
        exe=$(CARGO_TARGET_DIR=$target cargo test --release --locked --test integration --no-run \
            --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "integration" and m.get("executable"):
        print(m["executable"])')
        [ -n "$exe" ] || die "cannot build the integration tests"
        strip -o "$bundle/integration" "$exe"
    fi
    build_image "$bundle/layout"
    du -sh "$bundle"/*
}

# ---------------------------------------------------------------------------------------------------- check
FAILED=0
step() { # step NAME EXPECT(pass|fail) TIMEOUT CMD...: run, log, and count a check whose result is not EXPECT
    local name=$1 expect=$2 limit=$3 rc
    shift 3
    {
        echo
        echo "### $name"
        echo '```text'
        echo "\$ $*"
    } >>"$REPORT"
    timeout -k 5 "$limit" "$@" >"$WORK/step.out" 2>&1
    rc=$?
    head -c 20000 "$WORK/step.out" >>"$REPORT"
    echo '```' >>"$REPORT"
    local ok=0
    if [ "$expect" = pass ]; then [ $rc -eq 0 ] && ok=1; else [ $rc -ne 0 ] && [ $rc -ne 124 ] && ok=1; fi
    if [ $ok = 1 ]; then
        echo "exit $rc: as expected ($expect)" >>"$REPORT"
        echo "ok   $name (exit $rc)" >>"$SUMMARY"
    else
        echo "exit $rc: NOT as expected ($expect)" >>"$REPORT"
        echo "FAIL $name (exit $rc)" >>"$SUMMARY"
        FAILED=$((FAILED + 1))
    fi
    return 0
}
fact() { # fact NAME SHELL-TEXT: what the machine is, for the report; never a failed check
    local failed=$FAILED
    step "$1" pass 20 sh -c "$2"
    FAILED=$failed
    sed -i '$ d' "$SUMMARY"
}

check() {
    local bundle=${1:-$ROOT/.gpu-bundle}
    [ "$(id -u)" = 0 ] || die "check runs as root"
    local out=${OUT:-$bundle/out}
    mkdir -p "$out"
    WORK=$(mktemp -d /tmp/drun-gpu-check.XXXXXX)
    chmod 0755 "$WORK"
    REPORT=$out/report.md
    SUMMARY=$WORK/summary
    : >"$REPORT"
    : >"$SUMMARY"
    # A copy every user can execute and read (the rootless checks run as a user the script creates).
    install -m 0755 "$bundle/drun" "$WORK/drun"
    cp -a "$bundle/layout" "$WORK/layout"
    chmod -R a+rX "$WORK/layout"
    local D=$WORK/drun IMG="oci:$WORK/layout:gpu-check"
    export DRUN_ROOT=$WORK/store DRUN_STATE=$WORK/state
    echo "# drun on real GPU hardware, $(date -u +%F)" >>"$REPORT"

    fact "kernel" 'uname -a; cat /proc/version; grep -E "^(NAME|VERSION)=" /etc/os-release; nproc; id'
    fact "driver (proc, sys)" 'cat /proc/driver/nvidia/version; ls -la /proc/driver/nvidia/gpus/ 2>&1; cat /proc/driver/nvidia/gpus/*/information 2>&1; cat /sys/module/nvidia/version 2>&1'
    fact "device nodes" 'ls -la /dev/nvidia* /dev/nvidia-caps 2>&1; ls -la /dev/dri 2>&1 | head'
    fact "driver files" 'echo "PATH=$PATH"; echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"; ls -la /usr/local/nvidia /usr/local/nvidia/* 2>&1 | head -80; ls /lib/firmware/nvidia 2>&1 | head'
    fact "ld cache" 'ls -la /etc/ld.so.conf.d/; cat /etc/ld.so.conf.d/*.conf; ldconfig -p | grep -Ei "cuda|nvidia|nvml" | head -40'
    fact "nvidia-smi on the host" 'command -v nvidia-smi; nvidia-smi -L; nvidia-smi --query-gpu=index,uuid,name,memory.total,pci.bus_id --format=csv,noheader; nvidia-smi -q | grep -iE "minor|bus id|driver version|cuda version" | head'
    fact "namespaces, cgroups, file systems" 'cat /proc/sys/user/max_user_namespaces; cat /proc/sys/kernel/unprivileged_userns_clone 2>&1; unshare -Urm sh -c "id; mount -t tmpfs t /mnt && echo tmpfs-in-userns-ok"; stat -fc %T /sys/fs/cgroup; cat /sys/fs/cgroup/cgroup.controllers 2>&1; cat /proc/self/cgroup; grep -E "overlay|squashfs|fuse|tmpfs" /proc/filesystems; findmnt -no FSTYPE,OPTIONS /; df -h /tmp | tail -1; command -v newuidmap newgidmap runuser setpriv useradd'

    step "drun version" pass 20 "$D" --version
    step "drun gpus" pass 60 "$D" gpus
    step "drun gpus --json" pass 60 sh -c "$D gpus --json | tee $out/gpus.json"
    step "drun cdi generate" pass 60 sh -c "$D cdi generate -o $out/nvidia.yaml && cat $out/nvidia.yaml"
    step "pull the OCI layout" pass 120 "$D" pull "$IMG"
    step "no --gpus: no driver in the container" fail 60 "$D" run "$IMG" cuda_check 16
    step "--gpus all: nvidia-smi -L" pass 120 "$D" run --gpus all "$IMG" nvidia-smi -L
    step "--gpus all: CUDA 1 GiB alloc, memset, copy back" pass 180 "$D" run --gpus all "$IMG" cuda_check 1024
    local uuid
    uuid=$(nvidia-smi --query-gpu=uuid --format=csv,noheader 2>/dev/null | head -1)
    step "--gpus 1: CUDA" pass 120 "$D" run --gpus 1 "$IMG" cuda_check 64
    step "--gpus device=0: CUDA" pass 120 "$D" run --gpus device=0 "$IMG" cuda_check 64
    step "--gpus device=UUID: CUDA" pass 120 "$D" run --gpus "device=${uuid:-none}" "$IMG" cuda_check 64
    step "--device nvidia.com/gpu=all: nvidia-smi" pass 120 "$D" run --device nvidia.com/gpu=all "$IMG" nvidia-smi -L
    step "start time: drun run IMAGE true, 5 times without and with --gpus all" pass 120 bash -c '
        for g in "" "--gpus all"; do for i in 1 2 3 4 5; do
            s=$(date +%s%N); "$0" run $g "$1" true || exit 1; e=$(date +%s%N)
            echo "${g:-no GPU}: $(( (e - s) / 1000000 )) ms"
        done; done' "$D" "$IMG"
    step "--memory in a cgroup shared with other processes: a warning, not a failure" pass 60 "$D" run \
        --memory 256m "$IMG" true
    step "each driver library is mounted once" pass 60 "$D" run --gpus all "$IMG" sh -c \
        'n=$(grep -c "libcuda.so" /proc/self/mountinfo); echo "libcuda mounts: $n"; [ "$n" = 1 ]'
    step "--gpus 2 on a one-GPU machine fails clearly" fail 60 "$D" run --gpus 2 "$IMG" true
    step "--gpus device=7 fails clearly" fail 60 "$D" run --gpus device=7 "$IMG" true
    step "environment and mounts in the container" pass 60 "$D" run --gpus all "$IMG" sh -c \
        'env | grep -E "NVIDIA|CUDA|LD_" ; ls -la /dev/nvidia*; cat /proc/self/mountinfo | grep -iE "nvidia|cuda" | head -30'

    # The main job: a workflow file asking for a GPU by model and memory, its artifacts copied out.
    mkdir -p "$WORK/wf"
    cat >"$WORK/wf/workflow.yaml" <<EOF
workflows:
  - name: gpu
    image: $IMG
    commands:
      - mkdir -p output
      - nvidia-smi -L > output/gpus.txt
      - cuda_check 256 > output/cuda.txt
    resources:
      gpu:
        name: H200
        memory: 100GB
    artifacts:
      - output
EOF
    step "a workflow file with resources.gpu {name, memory} and artifacts" pass 120 sh -c \
        "$D run $WORK/wf/workflow.yaml && cat $WORK/wf/artifacts/gpu/output/gpus.txt $WORK/wf/artifacts/gpu/output/cuda.txt"

    # Rootless: a user of this script's making, with drun's fallback single-id mapping when the machine has no
    # newuidmap (what an ordinary user on a node without subordinate ids gets).
    local user=drungpu$$
    if useradd -M -d "$WORK/home-$user" -s /bin/sh "$user" 2>>"$REPORT"; then
        mkdir -p "$WORK/home-$user"
        chown "$user:" "$WORK/home-$user"
        local as_user=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$WORK/home-$user" setpriv --reuid "$user"
            --regid "$user" --init-groups --)
        local uenv="DRUN_ROOT=$WORK/home-$user/store DRUN_STATE=$WORK/home-$user/state"
        step "rootless: drun gpus" pass 60 "${as_user[@]}" sh -c "$uenv $D gpus"
        step "rootless: pull" pass 120 "${as_user[@]}" sh -c "$uenv $D pull -q $IMG"
        step "rootless: --gpus all nvidia-smi -L" pass 120 "${as_user[@]}" sh -c "$uenv $D run --gpus all $IMG nvidia-smi -L"
        step "rootless: --gpus all CUDA 1 GiB" pass 180 "${as_user[@]}" sh -c "$uenv $D run --gpus all $IMG cuda_check 1024"
        step "rootless: --gpus 2 fails clearly" fail 60 "${as_user[@]}" sh -c "$uenv $D run --gpus 2 $IMG true"
        userdel "$user" 2>/dev/null
    else
        echo "FAIL rootless: cannot create a user" >>"$SUMMARY"
        FAILED=$((FAILED + 1))
    fi

    if [ -x "$bundle/integration" ]; then
        step "make test-gpu (the real-hardware integration test)" pass 300 env DRUN_TEST_BIN="$D" \
            DRUN_GPU_IMAGE="$IMG" "$bundle/integration" --ignored --test-threads=1 --exact gpu::real_gpu_hardware
    fi
    step "nothing left mounted" pass 20 sh -c "! grep -F '$WORK' /proc/self/mountinfo"

    {
        echo
        echo "## Summary ($FAILED failed)"
        echo '```text'
        cat "$SUMMARY"
        echo '```'
    } >>"$REPORT"
    cat "$SUMMARY"
    rm -rf "$WORK" 2>/dev/null
    return "$FAILED"
}

case "${1:-}" in
    prepare) shift; prepare "${1:-}" "${2:-}" ;;
    image) [ $# -eq 2 ] || die "usage: $0 image DIR"; build_image "$2" ;;
    check) shift; check "${1:-}"; exit $? ;;
    *) die "usage: $0 prepare [BUNDLE] [--with-test] | image DIR | check [BUNDLE]" ;;
esac
