#!/bin/sh
# One boot of the power-cut campaign (tests/integration/vm.rs, `make test-powercut`), in the VM of hack/vm-test.sh
# with the campaign's disk as /dev/vda (ext4): the store lives there, as on a real host.
#   1. After a cut (the disk's iteration counter > 0): `drun check` says what the cut left (damage other than
#      staging debris in tmp/ is a failure), `--repair`, then the image is pulled in full and run, and the store
#      checked again.
#   2. Unless this is the last boot: the image is removed, pulled again, and the power cut (sysrq b: an immediate
#      reset, unwritten pages lost) after a random delay, while the pull runs or just after.
# Lines starting with RESULT and CUT are what the host test counts.
set -u
mkdir -p /store
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.5; done
# data=writeback: metadata may reach the disk before the data it describes (as on XFS), the ordering drun's syncs
# must not depend on (ext4's default, data=ordered, would hide a missing sync).
mount -t ext4 -o data=writeback /dev/vda /store || { echo "RESULT no-disk"; exit 2; }
export DRUN_ROOT=/store/drun
IMG=$(cat /store/image-ref)
TOTAL=$(cat /store/total)
MAXMS=$(cat /store/max-delay-ms)
# The drun whose pulls are cut (another binary only to show what a drun without the syncs leaves).
CUT_DRUN=$(cat /store/cut-drun 2>/dev/null || echo drun)
n=$(cat /store/iteration 2>/dev/null || echo 0)

if [ "$n" -gt 0 ]; then
    out=$(drun check --deep 2>&1)
    echo "$out" | sed 's/^/check: /'
    bad=$(echo "$out" | grep '^damage:' | grep -vc 'left by an interrupted')
    debris=$(echo "$out" | grep -c 'left by an interrupted')
    echo "RESULT iteration=$n damage=$bad debris=$debris"
    drun check --repair >/dev/null 2>&1
    pulled=$(drun pull -q "$IMG" 2>&1) && ran=$(drun run -q --pull never "$IMG" /bin/busybox cat /top 2>&1)
    if [ $? -eq 0 ] && [ "$ran" = 127 ]; then
        echo "RESULT iteration=$n pull-run=ok"
    else
        echo "RESULT iteration=$n pull-run=FAILED"
        printf '%s\n%s\n' "$pulled" "${ran:-}" | tail -8 | sed 's/^/RESULT detail: /'
    fi
    echo "RESULT iteration=$n after=$(drun check 2>&1 | grep -c '^damage:')"
fi

if [ "$n" -lt "$TOTAL" ]; then
    drun rmi "$IMG" >/dev/null 2>&1
    drun prune >/dev/null 2>&1
    echo $((n + 1)) >/store/iteration
    sync
    $CUT_DRUN pull -q "$IMG" >/dev/null 2>&1 &
    pull=$!
    delay=$(( $(od -An -N4 -tu4 /dev/urandom) % MAXMS ))
    usleep $((delay * 1000))
    if kill -0 "$pull" 2>/dev/null; then
        echo "CUT iteration=$((n + 1)) during-pull delay=${delay}ms"
    else
        echo "CUT iteration=$((n + 1)) after-pull delay=${delay}ms"
    fi
    echo b >/proc/sysrq-trigger
    sleep 30
    echo "RESULT the reset did not happen"
    exit 3
fi
echo "RESULT done iterations=$n"
