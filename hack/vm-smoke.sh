#!/bin/sh
# Guest-side smoke test for hack/vm-test.sh: proves the VM is the environment
# drun's tests expect (pure cgroup v2, overlayfs, nested cgroups with limits,
# mount namespaces + pivot_root).  Runs under busybox sh.
#   bash hack/vm-test.sh hack/vm-smoke.sh
set -u

PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
check() { # check DESCRIPTION COMMAND...
    d=$1; shift
    if "$@"; then ok "$d"; else bad "$d"; fi
}

W=$(mktemp -d /tmp/smoke.XXXXXX)
CG=/sys/fs/cgroup

echo "# kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"

# --- pure cgroup v2
check "cgroup2 mounted on $CG" grep -q "^cgroup2 $CG cgroup2 " /proc/mounts
check "no cgroup v1 hierarchy mounted" sh -c '! grep -q " cgroup " /proc/mounts'
# shellcheck disable=SC2016 # expanded by the inner sh
check "/proc/self/cgroup is the single v2 line" sh -c '[ "$(cat /proc/self/cgroup)" = "0::/" ]'
for c in cpu memory pids; do
    check "controller $c available" grep -qw $c $CG/cgroup.controllers
    check "controller $c enabled for children" grep -qw $c $CG/cgroup.subtree_control
done
# the kernel logs the refusal; keep it off the console
quiet_kernel() { lvl=$(cut -f1 /proc/sys/kernel/printk); echo 1 >/proc/sys/kernel/printk; }
loud_kernel() { echo "$lvl" >/proc/sys/kernel/printk; }
mkdir -p "$W/v1"
quiet_kernel
check "v1 memory controller cannot be mounted (cgroup_no_v1=all)" \
    sh -c "! mount -t cgroup -o memory cgroup '$W/v1' 2>/dev/null"
loud_kernel

# --- overlayfs
O=$W/ov
mkdir -p "$O/lower" "$O/upper" "$O/work" "$O/merged"
echo lower >"$O/lower/a"
echo keep >"$O/lower/k"
if mount -t overlay overlay -o "lowerdir=$O/lower,upperdir=$O/upper,workdir=$O/work" "$O/merged"; then
    ok "overlay mount"
    echo upper >"$O/merged/b"
    echo changed >"$O/merged/a"
    rm "$O/merged/k"
    check "overlay: new file lands in upper" grep -qx upper "$O/upper/b"
    check "overlay: copy-up leaves lower intact" grep -qx lower "$O/lower/a"
    check "overlay: merged view shows the change" grep -qx changed "$O/merged/a"
    check "overlay: delete makes a whiteout" sh -c "[ -c '$O/upper/k' ] && [ ! -e '$O/merged/k' ]"
    check "overlay: umount" umount "$O/merged"
else
    bad "overlay mount"
fi

# --- nested cgroup with limits
N=$CG/smoke-$$
if mkdir "$N"; then
    ok "nested cgroup created"
    check "nested cgroup has memory.max" [ -f "$N/memory.max" ]
    check "nested cgroup has pids.max and cpu.max" [ -f "$N/pids.max" -a -f "$N/cpu.max" ]
    check "memory.max set to 32M" sh -c "echo 32M >'$N/memory.max' && [ \"\$(cat '$N/memory.max')\" = 33554432 ]"
    check "pids.max set to 64" sh -c "echo 64 >'$N/pids.max' && [ \"\$(cat '$N/pids.max')\" = 64 ]"
    check "cpu.max set" sh -c "echo '50000 100000' >'$N/cpu.max' && [ \"\$(cat '$N/cpu.max')\" = '50000 100000' ]"
    check "process moves into it" sh -c "echo \$\$ >'$N/cgroup.procs' && grep -qx '0::/smoke-$$' /proc/self/cgroup"
    # dd fills a 64M buffer: over the 32M limit, so the OOM killer must act
    quiet_kernel
    sh -c "echo \$\$ >'$N/cgroup.procs'; exec dd if=/dev/zero of=/dev/null bs=64M count=1" 2>/dev/null
    loud_kernel
    check "memory.max enforced (oom_kill in memory.events)" \
        sh -c "[ \"\$(awk '/^oom_kill / {print \$2}' '$N/memory.events')\" -ge 1 ]"
    sleep 0.2
    check "nested cgroup removed" rmdir "$N"
else
    bad "nested cgroup created"
fi

# --- mount namespace + pivot_root into a bind mount
R=$W/newroot
mkdir -p "$R/bin" "$R/old" "$R/proc"
cp /bin/busybox "$R/bin/busybox"
echo "inside the new root" >"$R/marker"
if command -v unshare >/dev/null && command -v pivot_root >/dev/null; then
    out=$(unshare -m sh -c "
        set -e
        mount --make-rprivate /
        mount --bind '$R' '$R'
        cd '$R'
        pivot_root . old
        exec /bin/busybox sh -c '
            /bin/busybox umount -l /old
            /bin/busybox cat /marker
            /bin/busybox ls /old | /bin/busybox wc -l'
    " 2>&1)
    check "unshare -m + pivot_root into a bind mount" [ "$out" = "inside the new root
0" ]
    [ "$out" = "inside the new root
0" ] || echo "#   got: $out"
    check "host mount table untouched by the namespace" sh -c "! grep -q ' $R ' /proc/mounts"
else
    bad "busybox lacks unshare or pivot_root"
fi

# --- odds and ends the tests rely on
check "loopback is up" sh -c 'ip link show lo | grep -q "UP"'
check "/tmp is a writable tmpfs" sh -c 'grep -q "^tmp /tmp tmpfs" /proc/mounts && touch /tmp/.w && rm /tmp/.w'
check "root is a tmpfs (not rootfs)" sh -c 'grep -q "^root / tmpfs" /proc/mounts'
check "/dev/pts and /dev/shm mounted" sh -c 'grep -q " /dev/pts devpts" /proc/mounts && grep -q " /dev/shm tmpfs" /proc/mounts'

umount "$W/v1" 2>/dev/null || true
rm -rf "$W"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
