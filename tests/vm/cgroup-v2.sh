#!/bin/sh
# Runs inside the pure cgroup-v2 VM started by hack/vm-test.sh (see tests/integration/vm.rs): drun's limit,
# device-filter, /dev/shm and clean-up checks on the kind of host most production machines are.
pass=0
fail=0
check() {
    name=$1
    shift
    if "$@"; then pass=$((pass + 1)); echo "ok: $name"; else fail=$((fail + 1)); echo "FAIL: $name"; fi
}
export DRUN_ROOT=/tmp/drun-root DRUN_STATE=/run/drun
IMG=oci:/images/busybox:latest
if ! drun pull -q "$IMG"; then
    echo "FAIL: pull"
    echo "0 passed, 1 failed"
    exit 1
fi

out=$(drun run --memory 64m --cpus 0.5 --pids-limit 20 "$IMG" \
    cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory.swap.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/pids.max)
check "memory.max is 64m" [ "$(echo "$out" | sed -n 1p)" = 67108864 ]
check "no extra swap" [ "$(echo "$out" | sed -n 2p)" = 0 ]
check "cpu.max is 0.5 CPU" [ "$(echo "$out" | sed -n 3p)" = "50000 100000" ]
check "pids.max is 20" [ "$(echo "$out" | sed -n 4p)" = 20 ]

# docker-py's cgroup arguments on v2 (docs/docker-py.md): converted by libcgroups, or ignored with Docker's warning.
out=$(drun run --memory 64m --memory-swap 96m --memory-reservation 32m --cpu-shares 512 --cpuset-cpus 0 \
    --memory-swappiness 10 --oom-kill-disable "$IMG" \
    cat /sys/fs/cgroup/memory.swap.max /sys/fs/cgroup/memory.low /sys/fs/cgroup/cpu.weight /sys/fs/cgroup/cpuset.cpus \
    2>/tmp/tuning.err)
check "memory.swap.max is --memory-swap minus --memory" [ "$(echo "$out" | sed -n 1p)" = 33554432 ]
check "memory.low is --memory-reservation" [ "$(echo "$out" | sed -n 2p)" = 33554432 ]
check "cpu.weight is converted from --cpu-shares 512 ($(echo "$out" | sed -n 3p))" [ "$(echo "$out" | sed -n 3p)" -lt 100 ]
check "cpuset.cpus is --cpuset-cpus" [ "$(echo "$out" | sed -n 4p)" = 0 ]
check "--memory-swappiness is ignored with a warning" grep -q "memory-swappiness (mem_swappiness) is ignored" /tmp/tuning.err
check "--oom-kill-disable is ignored with a warning" grep -q "oom-kill-disable (oom_kill_disable) is ignored" /tmp/tuning.err

out=$(drun run --memory 64m "$IMG" sh -c 'echo max > /sys/fs/cgroup/memory.max 2>/dev/null && echo RAISED; cat /sys/fs/cgroup/memory.max')
check "container root cannot raise its limit ($out)" [ "$out" = 67108864 ]
out=$(drun run "$IMG" sh -c 'cat /proc/self/cgroup; ls /sys/fs/cgroup | grep -c drun-')
check "the container sees only its own cgroup" [ "$(echo "$out" | tail -1)" = 0 ]

drun run --memory 32m --shm-size 256m "$IMG" dd if=/dev/zero of=/dev/shm/fill bs=1M count=200 >/dev/null 2>&1
rc=$?
check "exceeding --memory is OOM-killed, exit 137 (got $rc)" [ "$rc" = 137 ]

out=$(drun run --shm-size 1g "$IMG" df -k /dev/shm | tail -1 | awk '{print $2}')
check "/dev/shm is --shm-size ($out)" [ "$out" = 1048576 ]
out=$(drun run --memory 128m "$IMG" df -k /dev/shm | tail -1 | awk '{print $2}')
check "/dev/shm defaults to the memory limit ($out)" [ "$out" = 131072 ]

# Even with CAP_MKNOD, a device outside the allow-list cannot be opened: the eBPF device filter says no.
out=$(drun run --cap-add MKNOD "$IMG" sh -c 'mknod /tmp/mem c 1 1 && if head -c1 /tmp/mem >/dev/null 2>&1; then echo OPENED; else echo DENIED; fi')
check "eBPF device filter denies c 1:1 ($out)" [ "$out" = DENIED ]
out=$(drun run "$IMG" sh -c 'head -c1 /dev/zero | wc -c')
check "standard devices work" [ "$out" = 1 ]
out=$(drun run --privileged "$IMG" sh -c 'mknod /tmp/mem c 1 1 && head -c1 /tmp/mem | wc -c')
check "--privileged lifts the device filter ($out)" [ "$out" = 1 ]

# GPUs on v2: the eBPF filter lets the container open the node of the GPU it was given (no driver here: ENXIO),
# and not the other GPU's (EPERM), even with CAP_MKNOD. A minimal simulated driver, as tests/fixtures/fake-driver.sh makes.
F=/tmp/fake-driver
# Its own tmpfs, mounted `dev`: bind-mounted nodes keep their source's nodev, and the VM's /tmp has it.
mkdir -p "$F" && mount -t tmpfs -o dev,mode=755 fake-driver "$F"
for g in "0000:01:00.0 Tesla-K80 GPU-k80 0" "0000:02:00.0 A100 GPU-a100 1"; do
    set -- $g
    mkdir -p "$F/proc/driver/nvidia/gpus/$1"
    printf 'Model: %s\nGPU UUID: %s\nBus Location: %s\nDevice Minor: %s\n' "$2" "$3" "$1" "$4" \
        >"$F/proc/driver/nvidia/gpus/$1/information"
done
mkdir -p "$F/dev" "$F/sys/module/nvidia"
mknod "$F/dev/nvidia0" c 195 0
mknod "$F/dev/nvidia1" c 195 1
mknod "$F/dev/nvidiactl" c 195 255
echo 550.54.15 >"$F/sys/module/nvidia/version"
out=$(DRUN_DRIVER_ROOT=$F DRUN_CDI_SPEC_DIRS=/tmp/no-cdi drun run --gpus device=1 --cap-add MKNOD "$IMG" sh -c \
    'head -c1 /dev/nvidia1 2>&1; mknod /tmp/other c 195 0 && head -c1 /tmp/other 2>&1; echo "$NVIDIA_VISIBLE_DEVICES"' 2>/dev/null)
check "the given GPU's node passes the eBPF filter ($(echo "$out" | sed -n 1p))" \
    sh -c 'echo "$1" | sed -n 1p | grep -q "No such device"' _ "$out"
check "another GPU's node does not ($(echo "$out" | sed -n 2p))" \
    sh -c 'echo "$1" | sed -n 2p | grep -q "not permitted"' _ "$out"
check "NVIDIA_VISIBLE_DEVICES is the given GPU" [ "$(echo "$out" | sed -n 3p)" = GPU-a100 ]
# A cgroup drun shares with other processes (a CI job container, a batch script's shell in a Slurm task, an ssh
# scope; the GPU machine of hack/gpu-hardware.sh runs everything so): v2 lets a cgroup with processes delegate no
# controller. The container still gets a cgroup of its own (device filter, clean-up), limits are reported as not
# enforced, and --require-limits refuses. (drun once failed every run there: "cannot prepare the cgroup …
# cgroup.subtree_control: Device or resource busy".)
mkdir /sys/fs/cgroup/shared-job
in_shared() { sh -c 'echo $$ >/sys/fs/cgroup/shared-job/cgroup.procs; sleep 60 & s=$!; sleep 0.2; "$@"; rc=$?; kill $s; exit $rc' _ "$@"; }
out=$(in_shared drun run "$IMG" sh -c 'cat /proc/self/cgroup; head -c1 /dev/zero | wc -c' 2>&1)
check "a shared cgroup: the container runs ($(echo $out | head -c 80))" \
    sh -c 'echo "$1" | grep -qx 1' _ "$out"
out=$(in_shared drun run --memory 64m "$IMG" echo ran 2>&1)
check "a shared cgroup: --memory runs with a warning naming the cause" \
    sh -c 'echo "$1" | grep -q "^ran$" && echo "$1" | grep -q "NOT enforced: --memory.*other processes share"' _ "$out"
out=$(in_shared drun run --require-limits --memory 64m "$IMG" echo ran 2>&1)
rc=$?
check "a shared cgroup: --require-limits refuses (exit $rc)" \
    sh -c '[ "$1" = 125 ] && echo "$2" | grep -q "systemd-run --scope"' _ "$rc" "$out"
out=$(in_shared env DRUN_DRIVER_ROOT=$F DRUN_CDI_SPEC_DIRS=/tmp/no-cdi drun run --gpus device=1 --cap-add MKNOD "$IMG" sh -c \
    'mknod /tmp/other c 195 0 && head -c1 /tmp/other 2>&1' 2>/dev/null)
check "a shared cgroup: the eBPF device filter still applies ($out)" sh -c 'echo "$1" | grep -q "not permitted"' _ "$out"
sleep 0.5
rmdir /sys/fs/cgroup/shared-job/drun.supervisor-* 2>/dev/null
check "a shared cgroup: no container cgroup left" [ -z "$(find /sys/fs/cgroup/shared-job -name 'drun-*' -type d)" ]
rmdir /sys/fs/cgroup/shared-job

umount "$F"

drun run "$IMG" sh -c 'exit 5'
check "exit status passes through" [ $? = 5 ]
check "no container cgroups left" [ -z "$(find /sys/fs/cgroup -name 'drun-*' -type d)" ]
check "no run directories left" [ -z "$(ls /run/drun/containers 2>/dev/null)" ]
check "no mounts left" [ -z "$(grep /run/drun /proc/mounts)" ]

# Rootless on cgroup v2 with a delegated subtree: an ordinary user (no subordinate ids: a single-id mapping)
# whose cgroup is chowned to it gets its limits enforced; outside it, one warning, or a refusal with
# --require-limits.
echo 'rl:x:1000:1000::/tmp/rl:/bin/sh' >>/etc/passwd
echo 'rl:x:1000:' >>/etc/group
# The delegated subtree (as systemd's user@.service gets): rl, with controllers for its children, chowned. Each
# delegated run starts in a fresh leaf of it (a cgroup with controllers enabled for children takes no processes).
mkdir -p /tmp/rl /sys/fs/cgroup/rl
echo "+cpu +memory +pids" >/sys/fs/cgroup/rl/cgroup.subtree_control
chown 1000:1000 /tmp/rl /sys/fs/cgroup/rl /sys/fs/cgroup/rl/cgroup.procs /sys/fs/cgroup/rl/cgroup.subtree_control \
    /sys/fs/cgroup/rl/cgroup.threads
# as_rl [--delegated] CMD...: run CMD as uid 1000 with a clean environment, in the delegated cgroup if asked.
as_rl() {
    if [ "$1" = --delegated ]; then
        shift
        leaf=$(($(ls -d /sys/fs/cgroup/rl/s* 2>/dev/null | wc -l) + 1))
        mkdir /sys/fs/cgroup/rl/s$leaf
        chown -R 1000:1000 /sys/fs/cgroup/rl/s$leaf
        sh -c 'echo $$ >/sys/fs/cgroup/rl/s'$leaf'/cgroup.procs && exec "$@"' _ \
            /opt/util-linux/setpriv --reuid=1000 --regid=1000 --clear-groups env -i PATH=/usr/bin:/bin HOME=/tmp/rl "$@"
    else
        /opt/util-linux/setpriv --reuid=1000 --regid=1000 --clear-groups env -i PATH=/usr/bin:/bin HOME=/tmp/rl "$@"
    fi
}
as_rl drun pull -q "$IMG" >/dev/null 2>&1
out=$(as_rl --delegated drun run --memory 64m --cpus 0.5 --pids-limit 20 "$IMG" sh -c \
    'id -u; cat /proc/self/uid_map | wc -l; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/pids.max' 2>/tmp/rl-err)
check "rootless: container root is the caller, one-id mapping ($(echo $out | head -c 40))" \
    [ "$(echo "$out" | sed -n 1,2p | tr '\n' ' ')" = "0 1 " ]
check "rootless delegated: memory.max is 64m" [ "$(echo "$out" | sed -n 3p)" = 67108864 ]
check "rootless delegated: cpu.max is 0.5 CPU" [ "$(echo "$out" | sed -n 4p)" = "50000 100000" ]
check "rootless delegated: pids.max is 20" [ "$(echo "$out" | sed -n 5p)" = 20 ]
check "rootless delegated: no warning ($(cat /tmp/rl-err))" [ ! -s /tmp/rl-err ]
as_rl --delegated drun run --memory 32m --shm-size 256m "$IMG" dd if=/dev/zero of=/dev/shm/fill bs=1M count=200 >/tmp/rl-oom 2>&1
rc=$?
[ "$rc" = 137 ] || sed 's/^/  | /' /tmp/rl-oom
check "rootless delegated: exceeding --memory is OOM-killed, exit 137 (got $rc)" [ "$rc" = 137 ]
out=$(as_rl --delegated drun run --memory 64m "$IMG" sh -c 'echo max > /sys/fs/cgroup/memory.max 2>/dev/null && echo RAISED; cat /sys/fs/cgroup/memory.max')
check "rootless delegated: container root cannot raise its limit ($out)" [ "$out" = 67108864 ]
check "rootless delegated: no container cgroups left" [ -z "$(find /sys/fs/cgroup/rl -name 'drun-*' -type d)" ]
out=$(as_rl drun run --memory 64m "$IMG" echo ran 2>&1)

check "rootless, not delegated: runs with one warning ($(echo "$out" | grep -c 'NOT enforced'))" \
    sh -c 'echo "$1" | grep -q "^ran$" && [ "$(echo "$1" | grep -c "NOT enforced: --memory")" = 1 ]' _ "$out"
out=$(as_rl drun run --require-limits --memory 64m "$IMG" echo ran 2>&1)
rc=$?
check "rootless, not delegated: --require-limits refuses (exit $rc)" \
    sh -c '[ "$1" = 125 ] && echo "$2" | grep -q "require-limits: cannot enforce --memory" && ! echo "$2" | grep -q "^ran$"' _ "$rc" "$out"
check "rootless: runs used /tmp/drun-1000, no run directories left" \
    sh -c '[ -d /tmp/drun-1000/containers ] && [ -z "$(ls /tmp/drun-1000/containers)" ]' 

# An image of 128 layers (tests/integration/vm.rs adds it with the script to run and what it must print): on this
# 6.1 kernel, which has no `lowerdir+`, the lower layers are named by descriptor paths; never a flattened copy.
# (Rootless is not checked here: its store would be on this guest's tmpfs, which has no user xattrs before 6.6.)
drun pull -q oci:/images/many:latest >/dev/null
out=$(drun --log-level drun=debug run oci:/images/many:latest /bin/busybox sh -c "$(cat /images/many-check/script)" 2>/tmp/many-err)
check "128 layers through overlay ($(echo $out))" [ "$out" = "$(cat /images/many-check/view)" ]
check "128 layers named by descriptor paths" grep -q 'layers=128 form=DescriptorPaths' /tmp/many-err

# A rootless state directory on overlayfs (a CI job container's root, issue 17): the writable layer would go on a
# tmpfs, which keeps user xattrs only from Linux 6.6 on; on this 6.1 kernel drun says so and copies the image.
mkdir -p /tmp/ovl-l /tmp/ovl-u /tmp/ovl-w /tmp/ovl
mount -t overlay overlay -o lowerdir=/tmp/ovl-l,upperdir=/tmp/ovl-u,workdir=/tmp/ovl-w /tmp/ovl
mkdir /tmp/ovl/state && chown 1000:1000 /tmp/ovl/state
out=$(as_rl drun --state /tmp/ovl/state run "$IMG" echo ran 2>&1)
case $(uname -r) in
[1-5].* | 6.[0-5].*) want="Linux 6.6" ;;
*) want="kept in memory" ;;
esac
check "rootless, state on overlayfs: runs, and says why ($want)" \
    sh -c 'echo "$1" | grep -q "^ran$" && echo "$1" | grep -q "$2"' _ "$out" "$want"
[ -z "$(ls /tmp/ovl/state/containers)" ] || echo "$out"
check "rootless, state on overlayfs: no run directories left" [ -z "$(ls /tmp/ovl/state/containers)" ]

# --rdma on a real (soft-RoCE) verbs device, in this same boot: tests/vm/rdma.sh (vm.rs adds it).
. /test/rdma.sh

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
