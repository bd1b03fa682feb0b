#!/bin/bash
# A CI job as a privileged runner runs it: drun inside a `--privileged` job container (tests/integration/nested.rs
# starts it with podman), with its store (/var/lib/drun) and state (/run/drun) on the job container's own overlay
# root. Everything must go through overlay: no flattened copy of an image or of the workflow's project directory.
# REGISTRY: the test registry. Prints "N passed, M failed" last; exits non-zero on a failure.
set -u
pass=0 fail=0
ok() { echo "ok: $1"; pass=$((pass + 1)); }
bad() { echo "FAILED: $1"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
DEB=$REGISTRY/drun-test/debian:bookworm
BB=$REGISTRY/drun-test/busybox:latest
E=$(mktemp -d)

# The job container as CI runners make it: an overlay root, /run on it (no tmpfs), no CA certificates, no
# systemd; and as some make it: no /dev/fuse, /proc/sys read-only (--privileged gives both; drun needs neither).
rm -f /dev/fuse
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
check "no /dev/fuse, /proc/sys read-only" eval '[ ! -e /dev/fuse ] && ! : 2>/dev/null >/proc/sys/kernel/domainname'
check "the store and the state are on overlayfs" [ "$(stat -f -c %T /var/lib /run | sort -u)" = overlayfs ]
check "no CA certificates, no systemd" eval '[ ! -e /etc/ssl/certs ] && [ ! -d /run/systemd/system ]'

# A multi-layer image with whiteouts and an opaque directory: overlayfs refuses their 0:0 devices and
# trusted.overlay.* xattrs in the store, so they are kept as markers.
if drun pull -q "$DEB" >"$E/pull" 2>&1; then ok "pull an image with whiteouts onto overlayfs"; else bad "pull: $(cat "$E/pull")"; fi
check "its whiteouts are kept as markers" [ -n "$(find /var/lib/drun/layers -name markers.json)" ]

# Deletions and the opaque directory seen through overlay, the writable layer in memory (said once).
drun --log-level debug run --rm "$DEB" sh -c 'for p in /etc/issue.net /usr/share/doc/apt /opt/keep/gone \
    /opt/replaced/old /opt/replaced/sub; do [ -e $p ] && echo present:$p; done
    cat /opt/replaced/new /opt/keep/changed /opt/keep/stays; grep -c "^overlay / overlay" /proc/mounts
    echo written >/etc/written && cat /etc/written' >"$E/out" 2>"$E/err"
check "deletions and the opaque directory through overlay" [ "$(cat "$E/out")" = "$(printf 'new\nv2\nstays\n1\nwritten')" ]
check "the writable layer in memory, said once" [ "$(grep -c 'writable layer is kept in memory' "$E/err")" = 1 ]
check "no flattened copy" eval '! grep -qiE "flatten|copying" "$E/err"'
grep -v DEBUG "$E/err" | head -5

# Limits in the job container's cgroup (v1 here, no cgroup namespace: its hierarchy is mounted from its own
# cgroup), /dev/shm.
drun run --rm -m 32m "$DEB" sh -c 'cat /sys/fs/cgroup/memory/memory.limit_in_bytes; tail /dev/zero' >"$E/oom" 2>&1
rc=$?
check "the memory limit holds: OOM kill is 137" eval '[ $rc = 137 ] && grep -qx 33554432 "$E/oom"'
check "--tmp-size bounds the writable layer" eval 'drun run --rm --tmp-size 8m "$BB" \
    dd if=/dev/zero of=/big bs=1M count=16 2>&1 | grep -q "No space left"'
check "/dev/shm has its size" [ "$(drun run --rm --shm-size 40m "$BB" df -k /dev/shm 2>/dev/null | awk 'NR==2 {print $2}')" = 40960 ]

# A workflow with an artifact: its project directory is copy-on-write through overlay as well.
mkdir -p /job && echo original >/job/input.txt
cat >/job/ci.yaml <<EOF
workflows:
  - name: build
    image: $DEB
    commands:
      - mkdir -p out
      - cat input.txt > out/result.txt
      - echo changed > input.txt
    artifacts: [out]
EOF
if drun run -q /job/ci.yaml >"$E/wf" 2>&1; then ok "the workflow runs"; else bad "workflow: $(cat "$E/wf")"; fi
check "its artifact is copied out" [ "$(cat /job/artifacts/build/out/result.txt 2>/dev/null)" = original ]
check "the project directory is untouched and not copied" eval '[ "$(cat /job/input.txt)" = original ] && ! grep -qi copying "$E/wf"'

# Nothing left behind: mounts, cgroups, processes, run directories.
check "no mounts left" eval '! grep -qE " /run/drun| /var/lib/drun" /proc/mounts'
check "no cgroups left" [ -z "$(find /sys/fs/cgroup -maxdepth 3 -name 'drun-*' 2>/dev/null)" ]
check "no processes left" eval '! cat /proc/[0-9]*/comm 2>/dev/null | grep -qxE "tail|drun"'
check "no run directories left" [ -z "$(ls /run/drun/containers 2>/dev/null)" ]
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
