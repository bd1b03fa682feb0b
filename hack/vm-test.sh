#!/usr/bin/env bash
# Run a shell script inside a throw-away VM booted from Debian's own kernel
# with a pure cgroup v2 hierarchy (this host is v1-hybrid, production is v2).
# qemu runs under TCG only (KVM hangs on the dev VM), with no network device.
#
#   hack/vm-test.sh [--timeout SECONDS] [--mem MiB] [--smp N] [--disk FILE] [--console]
#                   [--add HOSTPATH[:GUESTPATH]]... [--bin HOSTBIN[:GUESTPATH]]...
#                   SCRIPT
#
#   --timeout S   kill qemu after S seconds (default 600); exit status 124
#   --mem MiB     guest RAM (default 2048)
#   --smp N       guest CPUs (default 1).  More than one lets a guest CPU spin
#                 in the kernel waiting for an IPI that a starved TCG vCPU
#                 thread never services (seen on a loaded 2-core CI host:
#                 "soft lockup - CPU#0 stuck" until the timeout)
#   --add H:G     copy file or directory tree H to G in the guest (regular
#                 files, symlinks, modes; no xattrs: cpio cannot carry them)
#   --bin H:G     copy ELF binary H to G plus every library `ldd` lists (at the
#                 same paths, dynamic loader included); G defaults to H
#   --disk FILE   attach FILE as a raw virtio disk, /dev/vda in the guest (its file system's module, e.g.
#                 ext4, and virtio_blk must be in DRUN_VM_MODULES); it outlives the VM, as a disk would
#   --console     stream the whole serial console, not only the script output
#
# SCRIPT becomes /test/run.sh in the guest and runs as root with cwd /test;
# its shebang is honoured when the interpreter exists in the guest, otherwise
# it runs under busybox sh.  Its output is printed, and vm-test.sh exits with
# its exit status.  Other exit codes: 124 timeout, 125 the guest died without
# reporting a status (kernel panic, /init failure), 2 usage error.
#
# Guest: busybox-static only (+ whatever --bin/--add bring); root is a tmpfs
# (75% of RAM); /tmp, /run, /dev/shm tmpfs; cgroup2 on /sys/fs/cgroup with
# cpu memory pids io cpuset enabled in the root's subtree_control; overlay
# module loaded; lo up; DRUN_VM=1 in the environment.
#
# Cache: $DRUN_TEST_CACHE/vm/<kernel-abi>_<package-version>/ holds the kernel
# .deb, vmlinuz and base.cpio (busybox + modules + /init), rebuilt when the
# `linux-image-amd64` dependency, the module list or /init change.
# Env: DRUN_VM_MODULES (default "overlay"; dependencies are added),
#      DRUN_VM_KEEP=1 keeps the per-run temp dir (initrd, console log).
set -euo pipefail

ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
# shellcheck source=hack/lib.sh
. "$ROOT/hack/lib.sh"

umask 022  # modes in the cpio archives become the guest's modes

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit "${1:-0}"; }

TIMEOUT=600 MEM=2048 SMP=1 DISK= CONSOLE=0 SCRIPT=
ADDS=() BINS=()
while [ $# -gt 0 ]; do
    case $1 in
        --timeout) [ $# -ge 2 ] || usage 2; TIMEOUT=$2; shift 2 ;;
        --mem) [ $# -ge 2 ] || usage 2; MEM=$2; shift 2 ;;
        --smp) [ $# -ge 2 ] || usage 2; SMP=$2; shift 2 ;;
        --disk) [ $# -ge 2 ] || usage 2; DISK=$2; shift 2 ;;
        --add) [ $# -ge 2 ] || usage 2; ADDS+=("$2"); shift 2 ;;
        --bin) [ $# -ge 2 ] || usage 2; BINS+=("$2"); shift 2 ;;
        --console) CONSOLE=1; shift ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        -*) log "unknown option $1"; usage 2 >&2 ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || { log "exactly one SCRIPT expected"; usage 2 >&2; }
SCRIPT=$1
[ -f "$SCRIPT" ] || die "no such script: $SCRIPT"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout wants whole seconds"
[[ "$MEM" =~ ^[1-9][0-9]*$ ]] || die "--mem wants MiB"
[[ "$SMP" =~ ^[1-9][0-9]*$ ]] || die "--smp wants a CPU count"
[ -z "$DISK" ] || [ -f "$DISK" ] || die "no such disk image: $DISK"
DISK_ARGS=()
[ -z "$DISK" ] || DISK_ARGS=(-drive "file=$DISK,format=raw,if=virtio")

MODULES=${DRUN_VM_MODULES:-overlay}
VMCACHE=$DRUN_TEST_CACHE/vm
MARK=DRUN-VM  # marker prefix; each run adds a random nonce

need_pkgs qemu-system-x86 cpio busybox-static kmod xz-utils zstd

# split_map ARG : "HOST:GUEST" (split at the last colon, GUEST absolute) or
# just "HOST" meaning the same path in the guest.  Sets MAP_HOST/MAP_GUEST.
split_map() {
    local a=$1
    if [[ "$a" == *:/* ]]; then
        MAP_HOST=${a%:*} MAP_GUEST=${a##*:}
    else
        MAP_HOST=$a MAP_GUEST=$a
    fi
    MAP_HOST=$(realpath -e -- "$MAP_HOST" 2>/dev/null) || die "no such host path: $1"
    [[ "$MAP_GUEST" == /* ]] || die "guest path must be absolute: $1"
    MAP_GUEST=$(realpath -m -s -- "$MAP_GUEST")  # a guest path: no host symlinks
    [ "$MAP_GUEST" != / ] || die "cannot replace the guest root: $1"
}

# ---------------------------------------------------------------- /init ----
# One script for both stages, told apart by DRUN_VM_STAGE.  Stage 1 runs on
# the kernel's rootfs, where pivot_root(2) is refused, so it copies everything
# into a real tmpfs and switch_roots there; stage 2 sets the system up and
# runs the test.
init_script() {
    cat <<'EOF'
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
msg() { echo "drun-vm-init: $*" >/dev/console; }
fail() { msg "FATAL: $*"; sync; poweroff -f; sleep 5; exit 1; }

if [ "${DRUN_VM_STAGE:-1}" = 1 ]; then
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    exec </dev/console >/dev/console 2>&1
    mkdir -p /newroot
    mount -t tmpfs -o size=75%,mode=0755 root /newroot || fail "tmpfs root"
    for e in /* /.[!.]*; do
        [ -e "$e" ] || [ -L "$e" ] || continue
        case $e in /proc|/sys|/dev|/newroot) continue ;; esac
        cp -a "$e" /newroot/ || fail "copying $e to the tmpfs root"
    done
    mkdir -p /newroot/proc /newroot/sys /newroot/dev
    # busybox switch_root does not carry these over itself
    for m in /proc /sys /dev; do mount --move "$m" "/newroot$m"; done
    export DRUN_VM_STAGE=2
    exec switch_root /newroot /init
    fail "switch_root"
fi

# ---- stage 2: in the tmpfs root
exec </dev/console >/dev/console 2>&1
# stage 1 moved these here; mount them only if that failed
[ -e /proc/self ] || mount -t proc proc /proc
mounted() { grep -q "^[^ ]* $1 " /proc/mounts; }
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o mode=1777,nosuid,nodev,size=75% tmp /tmp
mount -t tmpfs -o mode=0755,nosuid,nodev run /run
# the same mount options systemd uses on production hosts
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup ||
    mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "cgroup2 mount"
for c in cpu memory pids io cpuset; do
    if grep -qw "$c" /sys/fs/cgroup/cgroup.controllers; then
        echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || msg "cannot enable $c controller"
    fi
done
KVER=$(cat /etc/drun-vm/kver)
while read -r mod; do
    [ -n "$mod" ] || continue
    name=${mod##*/}; name=${name%.ko}
    grep -q "^$(echo "$name" | tr - _) " /proc/modules ||
        insmod "/lib/modules/$KVER/$mod" || msg "insmod $mod failed"
done </etc/drun-vm/modules
ip link set lo up || msg "lo up failed"
hostname drun-vm

export HOME=/root USER=root LOGNAME=root TERM=dumb DRUN_VM=1
unset DRUN_VM_STAGE
NONCE=$(cat /etc/drun-vm/nonce)
chmod 0755 /test/run.sh
# honour the shebang only when its interpreter exists here
warn=
first=
read -r first </test/run.sh || true
case $first in
    '#!'*)
        set -- ${first#\#!}
        prog=${1:-}; [ "${prog##*/}" = env ] && [ $# -ge 2 ] && prog=$(command -v "$2" || true)
        [ -n "$prog" ] && [ -x "$prog" ] || warn="interpreter of '$first' is missing, using busybox sh" ;;
esac
if [ -z "$warn" ] && [ "${first#\#!}" != "$first" ]; then set -- /test/run.sh; else set -- sh /test/run.sh; fi
echo "$NONCE BEGIN"
[ -z "$warn" ] || msg "$warn"
(cd /test && exec "$@") </dev/null
rc=$?
echo "$NONCE END rc=$rc"
sync
poweroff -f
sleep 5
echo o >/proc/sysrq-trigger
EOF
}

# ------------------------------------------------------------ the cache ----
# kernel_pkg : the versioned package the meta package depends on
kernel_pkg() {
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
    if [ -z "$pkg" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        pkg=$(apt-cache depends linux-image-amd64 |
            sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
    fi
    [ -n "$pkg" ] || die "cannot find the package linux-image-amd64 depends on"
    echo "$pkg"
}

# resolve_modules TREE KVER NAME... : module files (relative to
# lib/modules/KVER, dependencies first), skipping built-in ones
resolve_modules() {
    local tree=$1 kver=$2; shift 2
    local mdir=$tree/lib/modules/$kver
    declare -A path=() seen=()
    local f n
    while IFS= read -r f; do
        n=${f##*/}; n=${n%%.ko*}; n=${n//-/_}
        path[$n]=${f#"$mdir"/}
    done < <(find "$mdir/kernel" -name '*.ko*')
    visit() {
        local m=${1//-/_} deps d
        [ -z "${seen[$m]:-}" ] || return 0
        seen[$m]=1
        if [ -z "${path[$m]:-}" ]; then
            grep -q "/${m}.ko\$\|/${1}.ko\$" "$mdir/modules.builtin" 2>/dev/null && return 0
            die "kernel module not found: $1"
        fi
        deps=$(modinfo -F depends "$mdir/${path[$m]}")
        for d in ${deps//,/ }; do visit "$d"; done
        echo "${path[$m]}"
    }
    for n in "$@"; do visit "$n"; done
}

# build_base DIR PKG : base.cpio = busybox + applet links + modules + /init
build_base() {
    local dir=$1 pkg=$2 kver=${2#linux-image-} t st mods m
    t=$(mktemp -d "$dir/.build.XXXXXX")
    log "extracting $pkg"
    dpkg-deb -x "$dir/$pkg.deb" "$t/x"
    st=$t/root
    mkdir -p "$st"/{bin,sbin,usr/bin,usr/sbin,etc/drun-vm,dev,proc,sys,tmp,run,root,mnt,test,var/tmp,var/lib,lib/modules/"$kver"}
    cp -L /bin/busybox "$st/bin/busybox"
    local a
    while IFS= read -r a; do
        [ "$a" = bin/busybox ] && continue
        mkdir -p "$st/$(dirname "$a")"
        ln -sfn /bin/busybox "$st/$a"
    done < <(/bin/busybox --list-full)
    # read -a splits the module list on whitespace
    read -r -a mods <<<"$MODULES"
    resolve_modules "$t/x" "$kver" "${mods[@]}" >"$t/order"
    while IFS= read -r m; do
        mkdir -p "$st/lib/modules/$kver/$(dirname "$m")"
        # busybox insmod cannot read compressed modules
        case $m in
            *.ko.xz) xz -dc "$t/x/lib/modules/$kver/$m" >"$st/lib/modules/$kver/${m%.xz}"; m=${m%.xz} ;;
            *.ko.zst) zstd -qdc "$t/x/lib/modules/$kver/$m" >"$st/lib/modules/$kver/${m%.zst}"; m=${m%.zst} ;;
            *) cp "$t/x/lib/modules/$kver/$m" "$st/lib/modules/$kver/$m" ;;
        esac
        echo "$m" >>"$st/etc/drun-vm/modules"
    done <"$t/order"
    touch "$st/etc/drun-vm/modules"
    cp "$st/etc/drun-vm/modules" "$st/lib/modules/$kver/modules.order"
    for m in modules.builtin modules.builtin.modinfo; do
        cp "$t/x/lib/modules/$kver/$m" "$st/lib/modules/$kver/" 2>/dev/null || true
    done
    depmod -b "$st" "$kver"  # so `modprobe` works in the guest too
    echo "$kver" >"$st/etc/drun-vm/kver"
    init_script >"$st/init"
    chmod 0755 "$st/init"
    # minimal identity files for tools that look users and hosts up
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$st/etc/passwd"
    printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$st/etc/group"
    printf '127.0.0.1 localhost drun-vm\n::1 localhost ip6-localhost\n' >"$st/etc/hosts"
    echo drun-vm >"$st/etc/hostname"
    ln -s /proc/self/mounts "$st/etc/mtab"
    chmod 1777 "$st/tmp" "$st/var/tmp"
    chmod 0700 "$st/root"
    # the kernel opens /dev/console for init before anything is mounted
    mknod -m 600 "$st/dev/console" c 5 1
    mknod -m 666 "$st/dev/null" c 1 3
    (cd "$st" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
        cpio --quiet -o -H newc -R 0:0 --null) >"$t/base.cpio"
    cp "$t/x/boot/vmlinuz-$kver" "$t/vmlinuz"
    mv "$t/base.cpio" "$dir/base.cpio"
    mv "$t/vmlinuz" "$dir/vmlinuz"
    rm -rf "$t"
}

# prepare_cache : sets KDIR (vmlinuz + base.cpio), building what is missing
prepare_cache() {
    local pkg ver key t
    mkdir -p "$VMCACHE"
    exec 9>"$VMCACHE/.lock"
    flock 9  # concurrent runs share one cache build
    pkg=$(kernel_pkg)
    ver=$(apt-cache show --no-all-versions "$pkg" | sed -n 's/^Version: //p' | head -n1)
    [ -n "$ver" ] || die "no version for $pkg"
    KDIR=$VMCACHE/${pkg#linux-image-}_$ver
    mkdir -p "$KDIR"
    if [ ! -s "$KDIR/$pkg.deb" ]; then
        log "downloading $pkg $ver"
        t=$(mktemp -d "$KDIR/.dl.XXXXXX")
        (cd "$t" && apt-get -q -o APT::Sandbox::User=root download "$pkg=$ver" >&2)
        mv "$t"/"$pkg"_*.deb "$KDIR/$pkg.deb"
        rm -rf "$t"
    fi
    key=$( { echo "base v1"; echo "$MODULES"; dpkg-query -W -f='${Version}\n' busybox-static;
             init_script; } | sha256sum | cut -d' ' -f1)
    if [ ! -s "$KDIR/base.cpio" ] || [ ! -s "$KDIR/vmlinuz" ] ||
        [ "$(cat "$KDIR/base.key" 2>/dev/null)" != "$key" ]; then
        rm -f "$KDIR/base.key"
        build_base "$KDIR" "$pkg"
        echo "$key" >"$KDIR/base.key"
    fi
    flock -u 9
    exec 9>&-
}

# --------------------------------------------------------- per-run data ----
# add_bin HOSTBIN GUESTPATH : binary plus its libraries at their host paths
add_bin() {
    local host=$1 guest=$2 out lib
    head -c4 "$host" | grep -q "ELF" || die "--bin: not an ELF file: $host"
    mkdir -p "$ST$(dirname "$guest")"
    cp -L "$host" "$ST$guest"
    chmod a+rx "$ST$guest"
    if ! out=$(ldd "$host" 2>&1); then
        # static binaries need nothing else
        grep -q 'not a dynamic executable\|statically linked' <<<"$out" && return 0
        die "ldd $host failed: $out"
    fi
    grep -q '=> not found' <<<"$out" && die "ldd $host: missing libraries:"$'\n'"$out"
    while IFS= read -r lib; do
        [ -n "$lib" ] || continue
        [ -e "$ST$lib" ] && continue
        mkdir -p "$ST$(dirname "$lib")"
        cp -L "$lib" "$ST$lib"  # the real file at the path the loader asks for
        dirname "$lib" >>"$T/libdirs"
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' <<<"$out")
}

T=$(mktemp -d "${TMPDIR:-/tmp}/drun-vm.XXXXXX")
QPID='' FPID=''
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
        kill "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
    fi
    # the follower ends by itself once qemu is gone; let it flush
    [ -z "$FPID" ] || wait "$FPID" 2>/dev/null || true
    if [ "$rc" -eq 0 ] && [ -z "${DRUN_VM_KEEP:-}" ]; then
        rm -rf "$T"
    elif [ -n "${DRUN_VM_KEEP:-}" ]; then
        log "run files kept in $T"
    elif [ -s "$T/console.log" ]; then
        # keep the console log for a post-mortem, drop the bulky rest
        rm -rf "$T/stage" "$T/initrd" "$T/run.cpio"
        log "console log kept in $T/console.log"
    else
        rm -rf "$T"  # failed before qemu started: nothing worth keeping
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

T0=$(date +%s.%N)
prepare_cache

ST=$T/stage
mkdir -p "$ST/test" "$ST/etc/drun-vm"
NONCE="$MARK-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
echo "$NONCE" >"$ST/etc/drun-vm/nonce"
cp "$SCRIPT" "$ST/test/run.sh"
chmod 0755 "$ST/test/run.sh"
for a in ${ADDS[@]+"${ADDS[@]}"}; do
    split_map "$a"
    mkdir -p "$ST$(dirname "$MAP_GUEST")"
    rm -rf "$ST$MAP_GUEST"
    # -a keeps modes, symlinks and hard links; --reflink is free where possible
    cp -a --reflink=auto "$MAP_HOST" "$ST$MAP_GUEST"
done
for b in ${BINS[@]+"${BINS[@]}"}; do
    split_map "$b"
    add_bin "$MAP_HOST" "$MAP_GUEST"
done
if [ -s "$T/libdirs" ]; then
    # an ld.so.cache, in case a library sits outside the loader's default dirs
    sort -u "$T/libdirs" >"$ST/etc/ld.so.conf"
    ldconfig -X -r "$ST" 2>/dev/null || log "ldconfig for the guest failed (continuing)"
fi
(cd "$ST" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --quiet -o -H newc --null) >"$T/run.cpio"
# the kernel unpacks concatenated cpio archives in order, later ones win
cat "$KDIR/base.cpio" "$T/run.cpio" >"$T/initrd"
rm -rf "$ST" "$T/run.cpio"

: >"$T/console.log"
APPEND="console=ttyS0 quiet panic=-1 systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all"
T1=$(date +%s.%N)
qemu-system-x86_64 -accel tcg -cpu max -m "$MEM" -smp "$SMP" -nographic -no-reboot -nic none "${DISK_ARGS[@]}" \
    -kernel "$KDIR/vmlinuz" -initrd "$T/initrd" -append "$APPEND" \
    </dev/null >"$T/console.log" 2>&1 &
QPID=$!

# Live output: the script's lines (or the whole console with --console);
# tail stops on its own once qemu is gone.
tail -n +1 -s 0.2 -f --pid="$QPID" "$T/console.log" |
    awk -v nonce="$NONCE" -v all="$CONSOLE" '
        { sub(/\r$/, ""); i = index($0, nonce " END rc=") }
        i > 0 { if (i > 1) print substr($0, 1, i - 1); on = 0; if (all) print; fflush(); next }
        index($0, nonce " BEGIN") { on = 1; if (all) print; fflush(); next }
        on || all { print; fflush() }' &
FPID=$!

RC='' BOOTED=''
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
    # liveness first: once qemu is gone the log is complete, so the greps
    # below cannot miss a marker written just before it powered off
    alive=1
    kill -0 "$QPID" 2>/dev/null || alive=0
    if [ -z "$BOOTED" ] && grep -aq "$NONCE BEGIN" "$T/console.log"; then
        BOOTED=$(date +%s.%N)
    fi
    line=$(grep -ao "$NONCE END rc=[0-9]*" "$T/console.log" | head -n1 || true)
    if [ -n "$line" ]; then
        RC=${line##*rc=}
        DONE=$(date +%s.%N)
        break
    fi
    [ "$alive" = 1 ] || break
    # a guest CPU stuck in the kernel for minutes does not come back under
    # TCG: stop now rather than burn the rest of the timeout
    if grep -aqE 'soft lockup - CPU#[0-9]+ stuck for ([2-9][0-9]{2}|1[2-9][0-9])s' "$T/console.log"; then
        log "the guest kernel reports a CPU stuck for over 2 minutes (soft lockup)"
        RC=timeout
        break
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        RC=timeout
        break
    fi
    sleep 0.2
done

# qemu powers off by itself after the marker; give it a moment
if [ "$RC" != timeout ]; then
    for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.2; done
fi
if kill -0 "$QPID" 2>/dev/null; then
    kill "$QPID" 2>/dev/null || true
fi
wait "$QPID" 2>/dev/null || true
QPID=
wait "$FPID" 2>/dev/null || true

fmt() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fs", b - a }'; }
END_T=$(date +%s.%N)
if [ "$RC" = timeout ]; then
    log "timeout after ${TIMEOUT}s; last console lines:"
    tail -n 30 "$T/console.log" | tr -d '\r' >&2
    exit 124
fi
if [ -z "$RC" ]; then
    log "the guest stopped without reporting the script's status (kernel panic or /init failure?); last console lines:"
    tail -n 40 "$T/console.log" | tr -d '\r' >&2
    exit 125
fi
log "script exit status $RC; boot $(fmt "$T1" "${BOOTED:-$DONE}"), script $(fmt "${BOOTED:-$DONE}" "$DONE"), qemu start to marker $(fmt "$T1" "$DONE"), total $(fmt "$T0" "$END_T")"
exit "$RC"
