# Sourced by tests/vm/cgroup-v2.sh (its `check`, `as_rl` and counters) in the VM of tests/integration/vm.rs:
# `--rdma` on a real verbs device. Debian's kernel has rdma_rxe (soft-RoCE: RDMA over UDP through a netdev); the
# VM loads it (DRUN_VM_MODULES) and here it gets a link on the dummy module's dummy0, made with iproute2's `rdma`
# (added at /opt/iproute2/rdma). The image (tests/fixtures/images.sh's rdma layout) has Debian's rdma-core user
# space: libibverbs1, ibverbs-providers (rxe's provider) and ibverbs-utils.
RIMG=oci:/images/rdma:bookworm
rdma_t0=$(cut -d' ' -f1 /proc/uptime)
ip link set dummy0 up && ip addr add 10.99.0.1/24 dev dummy0 &&
    /opt/iproute2/rdma link add rxe0 type rxe netdev dummy0
check "an rxe link on dummy0 gives a verbs device" [ -c /dev/infiniband/uverbs0 ]
# rxe speaks RoCE v2 only: the GID to address it by is the one of dummy0's IPv4 address (::ffff:10.99.0.1),
# looked up rather than assumed at index 1.
gid=
for g in /sys/class/infiniband/rxe0/ports/1/gids/*; do
    [ "$(cat "$g" 2>/dev/null)" = 0000:0000:0000:0000:0000:ffff:0a63:0001 ] && gid=${g##*/} && break
done
check "rxe0 has a GID for 10.99.0.1 (index ${gid:-none})" [ -n "$gid" ]
drun pull -q "$RIMG" >/dev/null || echo "FAIL: pull $RIMG"

out=$(drun run --rdma "$RIMG" sh -c 'ibv_devices; ls /dev/infiniband; echo "memlock=$(ulimit -l)"' 2>&1)
check "--rdma: ibv_devices lists rxe0" sh -c 'echo "$1" | grep -Eq "^[[:space:]]+rxe0[[:space:]]+[0-9a-f]{16}$"' _ "$out"
check "--rdma: the verbs and rdma_cm nodes" \
    sh -c 'echo "$1" | grep -qx uverbs0 && echo "$1" | grep -qx rdma_cm' _ "$out"
check "--rdma as root: RLIMIT_MEMLOCK is unlimited" sh -c 'echo "$1" | grep -qx memlock=unlimited' _ "$out"
echo "$out" | grep -q rdma_cm || echo "$out" | sed 's/^/  | /'

# The same image without --rdma: sysfs still shows rxe0 (RDMA devices are not per network namespace), but without
# its device node libibverbs drops it, and a verbs program finds no device.
out=$(drun run "$RIMG" sh -c 'ibv_devices; ls /dev/infiniband 2>&1; ibv_rc_pingpong -d rxe0 -g 1; echo "rc=$?"' 2>&1)
check "without --rdma: no device" sh -c \
    '! echo "$1" | grep -Eq "^[[:space:]]+rxe0[[:space:]]|^uverbs" && echo "$1" | grep -q "No such file" && echo "$1" | grep -q "IB device rxe0 not found" &&
     echo "$1" | grep -qx "rc=1"' _ "$out"
echo "$out" | grep -q "IB device rxe0 not found" || echo "$out" | sed 's/^/  | /'

# Two containers, host network: ibv_rc_pingpong's server, and a client that exchanges the queue-pair addresses
# with it over TCP (port 18515) and then 200 messages over RC queue pairs through rxe0.
# Each bounded by coreutils' timeout (as the container's PID 1 a program without handlers would ignore TERM): a
# server whose client never comes waits for it forever, and a client whose server is gone for its completions.
drun run --rdma --network host "$RIMG" timeout 90 ibv_rc_pingpong -d rxe0 -g "${gid:-1}" -n 200 \
    >/tmp/rdma-server.log 2>&1 &
server=$!
i=0
# Until the server listens (18515 is 4853 in /proc/net/tcp's hex, state 0A LISTEN), at most ~60 s under TCG.
while ! grep -q ':4853 [0-9A-F:]* 0A ' /proc/net/tcp /proc/net/tcp6 2>/dev/null && [ $i -lt 300 ]; do
    kill -0 $server 2>/dev/null || break
    sleep 0.2
    i=$((i + 1))
done
drun run --rdma --network host "$RIMG" timeout 90 ibv_rc_pingpong -d rxe0 -g "${gid:-1}" -n 200 127.0.0.1 \
    >/tmp/rdma-client.log 2>&1
crc=$?
wait $server
src=$?
for side in server client; do
    check "ibv_rc_pingpong $side: 200 messages over rxe0" \
        sh -c '[ "$1" = 0 ] && grep -q "^200 iters in" "$2" && grep -q "GID ::ffff:10.99.0.1" "$2"' _ \
        "$([ $side = server ] && echo $src || echo $crc)" /tmp/rdma-$side.log
done
[ "$src$crc" = 00 ] || sed 's/^/  | /' /tmp/rdma-server.log /tmp/rdma-client.log

# Rootless: the same nodes by bind mount, and RLIMIT_MEMLOCK capped at the caller's hard limit, with a warning.
as_rl drun pull -q "$RIMG" >/tmp/rl-rdma 2>&1 || sed 's/^/  | /' /tmp/rl-rdma
as_rl sh -c 'ulimit -H -l 8192; exec drun run --rdma '"$RIMG"' sh -c "ibv_devices; echo memlock=\$(ulimit -l)"' \
    >/tmp/rl-rdma 2>&1
check "rootless --rdma: ibv_devices lists rxe0" grep -Eq "^[[:space:]]+rxe0[[:space:]]+[0-9a-f]{16}$" /tmp/rl-rdma
check "rootless --rdma: RLIMIT_MEMLOCK is the hard limit, with a warning" \
    sh -c 'grep -qx memlock=8192 /tmp/rl-rdma && grep -q "capped at the hard limit of 8192 KiB" /tmp/rl-rdma'
grep -q rxe0 /tmp/rl-rdma || sed 's/^/  | /' /tmp/rl-rdma
check "after the RDMA runs: no container cgroups left" [ -z "$(find /sys/fs/cgroup -name 'drun-*' -type d)" ]
check "after the RDMA runs: no run directories or mounts left" sh -c \
    '[ -z "$(ls /run/drun/containers)" ] && [ -z "$(ls /tmp/drun-1000/containers)" ] && ! grep -q /run/drun /proc/mounts'
echo "rdma.sh: $(awk -v t0="$rdma_t0" '{ printf "%.1f", $1 - t0 }' /proc/uptime) s"
