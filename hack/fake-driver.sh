#!/usr/bin/env bash
# A simulated NVIDIA driver tree for the GPU tests (no GPU here): point DRUN_DRIVER_ROOT at it.
#
#   hack/fake-driver.sh ROOT [--libdir DIR]
#
# Under ROOT (created; needs root for mknod):
#   dev/nvidia0 (c 195:0) dev/nvidia1 (c 195:1) dev/nvidiactl (c 195:255) dev/nvidia-modeset (c 195:254)
#   dev/nvidia-uvm (c 511:0) dev/nvidia-uvm-tools (c 511:1), and proc/devices naming major 511 nvidia-uvm
#   proc/driver/nvidia/gpus/0000:1a:00.0/information  NVIDIA A100-SXM4-80GB, minor 1 -> index 0 (PCI order)
#   proc/driver/nvidia/gpus/0000:3b:00.0/information  Tesla K80, minor 0               -> index 1
#   sys/module/nvidia/version                          550.54.15
#   LIBDIR (default /usr/lib/x86_64-linux-gnu): real ELF shared objects built with gcc, each with its SONAME:
#     libcuda.so.550.54.15 (libcuda.so.1), libnvidia-ml.so.550.54.15 (libnvidia-ml.so.1),
#     libnvidia-ptxjitcompiler.so.550.54.15 (compute), libnvidia-encode.so.550.54.15 (video: not injected by
#     default), and a stale libcuda.so.470.82.01 in usr/lib/stale (never chosen: the module is 550.54.15)
#   etc/ld.so.conf + etc/ld.so.cache (ldconfig -r ROOT), so a non-standard LIBDIR is found through the cache
#   usr/bin/nvidia-smi (a shell script: `--query-gpu=…` prints the two GPUs with memory; otherwise it lists
#     $NVIDIA_VISIBLE_DEVICES), usr/bin/nvidia-debugdump
#   lib/firmware/nvidia/550.54.15/gsp_ga10x.bin, run/nvidia-persistenced/socket
set -euo pipefail
ROOT=${1:?usage: $0 ROOT [--libdir DIR]}
LIBDIR=/usr/lib/x86_64-linux-gnu
if [ "${2:-}" = --libdir ]; then LIBDIR=${3:?}; fi
VER=550.54.15
A100=GPU-a1a1a1a1-0000-4000-8000-000000000001
K80=GPU-c0c0c0c0-0000-4000-8000-000000000002

mkdir -p "$ROOT"/{dev,proc/driver/nvidia/gpus,sys/module/nvidia,usr/bin,etc,usr/lib/stale} "$ROOT$LIBDIR" \
    "$ROOT/lib/firmware/nvidia/$VER" "$ROOT/run/nvidia-persistenced"
node() { [ -e "$ROOT/dev/$1" ] || mknod -m 666 "$ROOT/dev/$1" c "$2" "$3"; }
node nvidia0 195 0
node nvidia1 195 1
node nvidiactl 195 255
node nvidia-modeset 195 254
node nvidia-uvm 511 0
node nvidia-uvm-tools 511 1
printf 'Character devices:\n195 nvidia\n511 nvidia-uvm\n' >"$ROOT/proc/devices"

gpu() { # PCI MODEL UUID MINOR
    mkdir -p "$ROOT/proc/driver/nvidia/gpus/$1"
    printf 'Model: \t\t %s\nIRQ:   \t\t 42\nGPU UUID: \t %s\nVideo BIOS: \t ??.??.??.??.??\nBus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\nBus Location: \t %s\nDevice Minor: \t %s\nGPU Excluded:\t No\n' \
        "$2" "$3" "$1" "$4" >"$ROOT/proc/driver/nvidia/gpus/$1/information"
}
gpu 0000:1a:00.0 "NVIDIA A100-SXM4-80GB" "$A100" 1
gpu 0000:3b:00.0 "Tesla K80" "$K80" 0
echo "$VER" >"$ROOT/sys/module/nvidia/version"

lib() { # DIR NAME SONAME SYMBOL
    [ -s "$ROOT$1/$2" ] && return 0
    echo "int $4(void) { return 0; }" | gcc -shared -fPIC -x c -Wl,-soname,"$3" -o "$ROOT$1/$2" -
}
lib "$LIBDIR" "libcuda.so.$VER" libcuda.so.1 cuInit
lib "$LIBDIR" "libnvidia-ml.so.$VER" libnvidia-ml.so.1 nvmlInit
lib "$LIBDIR" "libnvidia-ptxjitcompiler.so.$VER" libnvidia-ptxjitcompiler.so.1 ptxjit
lib "$LIBDIR" "libnvidia-encode.so.$VER" libnvidia-encode.so.1 NvEncode
lib /usr/lib/stale libcuda.so.470.82.01 libcuda.so.1 cuInit

printf '%s\n' "$LIBDIR" >"$ROOT/etc/ld.so.conf"
ldconfig -r "$ROOT" 2>/dev/null || ldconfig -r "$ROOT"

cat >"$ROOT/usr/bin/nvidia-smi" <<SMI
#!/bin/sh
# fake nvidia-smi (drun tests)
case "\$*" in
*--query-gpu=*) printf '0, $A100, NVIDIA A100-SXM4-80GB, 81920\n1, $K80, Tesla K80, 11441\n' ;;
*) echo "fake nvidia-smi, driver $VER: visible \${NVIDIA_VISIBLE_DEVICES:-none}" ;;
esac
SMI
printf '#!/bin/sh\necho fake nvidia-debugdump\n' >"$ROOT/usr/bin/nvidia-debugdump"
chmod 755 "$ROOT/usr/bin/nvidia-smi" "$ROOT/usr/bin/nvidia-debugdump"
echo fake-firmware >"$ROOT/lib/firmware/nvidia/$VER/gsp_ga10x.bin"
: >"$ROOT/run/nvidia-persistenced/socket"
