#!/usr/bin/env bash
# Build drun's test images offline (only the Debian mirror is used, by
# debootstrap) into OCI layouts under $DRUN_TEST_CACHE, then push them to the
# registries of hack/registry.sh (started here if needed).
#
#   hack/images.sh               build (cached) + push
#   hack/images.sh --build-only  build the cache only, no registries needed
#
# Cache ($DRUN_TEST_CACHE, default /var/cache/drun-test), reused between runs:
#   debootstrap/bookworm-minbase-amd64/   debootstrap result (its own cache key)
#   layouts/NAME/                         OCI layouts, one tag each (see IMAGES)
#   archives/busybox.tar                  docker-archive of busybox (amd64), tag drun-test/busybox:latest
#   umoci/debian-bookworm/rootfs          `umoci unpack` of debian:bookworm (reference rootfs)
#   digests/                              digests of manifests skopeo converted to v2s2
#   images.key                            IMAGES_VERSION + hash of mkimage.py
#
# Images on 127.0.0.1:5000 (anonymous HTTP):
#   drun-test/busybox:latest         OCI index: linux/amd64 + linux/arm64/v8, 1 gzip layer
#                                    each; /etc/drun-arch = "amd64" | "arm64" (no newline;
#                                    the arm64 variant reuses the amd64 binary)
#   drun-test/busybox:uncompressed   OCI manifest, amd64, 1 plain-tar layer
#   drun-test/busybox:docker         the index converted to a Docker schema-2 manifest list
#   drun-test/debian:bookworm        OCI manifest, 3 gzip layers (below)
#   drun-test/debian:bookworm-zstd   same 3 layers zstd-compressed (same diff_ids)
#   drun-test/debian:bookworm-docker Docker schema-2 manifest of debian:bookworm
#   drun-test/debian:base            layers 1-2 of debian:bookworm (what podman can apply; for benchmarks)
#   drun-test/python:bookworm        debootstrap minbase + python3-pip, 1 gzip layer, without Debian's
#                                    EXTERNALLY-MANAGED marker (pip installs system-wide, as in python:3 images)
#   drun-test/evil:NAME              innocent gzip layer + hostile gzip layer, NAME in
#                                    abs dotdot symlink symlink-rel symlink-chain
#                                    symlink-file hardlink hardlink-dotdot whiteout
# and drun-test/busybox:latest also on 127.0.0.1:5001 (basic auth),
# 127.0.0.1:5443 (TLS) and 127.0.0.1:5002 (token auth).
#
# debian:bookworm layers (exact contents in hack/mkimage.py recipes):
#   1  debootstrap --variant=minbase bookworm, minus dev/*, proc/*, sys/*,
#      var/cache/apt/archives/*.deb, var/lib/apt/lists/*, var/log/bootstrap.log,
#      etc/hostname, etc/resolv.conf
#   2  /etc/issue -> "drun test image\n" (overwrites layer 1)
#      /opt/keep/{stays,gone,changed,empty}  ("stays\n" "gone\n" "v1\n" "")
#      /opt/replaced/old ("old\n"), /opt/replaced/sub/deep ("deep\n")
#      /opt/links/hard-a + hard-b (hardlink pair, "hardlink content\n")
#      /opt/links/rel -> ../keep/stays, abs -> /opt/keep/stays, dir -> ../keep,
#      dangling -> /nonexistent/drun-dangling
#      /opt/perm/setuid (0:0 04755), /opt/perm/owned (1234:5678 0640, "owned\n"),
#      /opt/perm/owned-dir/ (1234:5678 0750), /opt/perm/sticky/ (01777),
#      /opt/perm/readonly (0444)
#      /opt/xattr/file ("xattr\n", xattr user.drun = "drun-xattr-value")
#   3  whiteouts: etc/.wh.issue.net, usr/share/doc/.wh.apt (a directory),
#      opt/keep/.wh.gone; opt/keep/changed -> "v2\n";
#      opt/replaced/.wh..wh..opq + opt/replaced/new ("new\n");
#      opt/links/hard-lower = hardlink to opt/keep/stays (target in a lower layer)
#   => final: /etc/issue.net, /usr/share/doc/apt, /opt/keep/gone, /opt/replaced/old,
#      /opt/replaced/sub are absent; /opt/replaced/new exists; no .wh.* files anywhere.
#
# Hostile layers all aim at /tmp/drun-escape-target (and its file "victim"); the
# payload text is "pwned-NAME\n".  See EVIL in hack/mkimage.py.
set -euo pipefail
shopt -s inherit_errexit  # failures inside $(...) must stop the script

ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
# shellcheck source=hack/lib.sh
. "$ROOT/hack/lib.sh"

# Bump when a recipe here changes; edits to mkimage.py change the key by themselves.
IMAGES_VERSION=1
DEBOOTSTRAP_VERSION=1
MIRROR=${DRUN_TEST_MIRROR:-http://deb.debian.org/debian}
CREATED=2024-01-01T00:00:00Z
ENV_PATH='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
EVIL_NAMES=(abs dotdot symlink symlink-rel symlink-chain symlink-file hardlink hardlink-dotdot whiteout)

C=$DRUN_TEST_CACHE
S=$DRUN_TEST_STATE
B=$C/build

BUILD_ONLY=
case ${1:-} in
--build-only) BUILD_ONLY=1 ;;
"") ;;
*) echo "usage: $0 [--build-only]" >&2; exit 2 ;;
esac

need_pkgs skopeo umoci busybox-static debootstrap zstd jq

mkdir -p "$C"
exec 9>"$C/.lock"
flock 9  # one builder at a time per cache

mkimage() { "$PYTHON" "$ROOT/hack/mkimage.py" "$@"; }

KEY="$IMAGES_VERSION-$(sha256sum "$ROOT/hack/mkimage.py" | cut -c1-16)"
if [ "$(cat "$C/images.key" 2>/dev/null || true)" != "$KEY" ]; then
    log "image cache key is now $KEY: rebuilding"
    rm -rf "$C/layouts" "$C/archives" "$C/umoci" "$C/digests" "$B"
    mkdir -p "$C"
    echo "$KEY" >"$C/images.key"
fi
mkdir -p "$C/layouts" "$C/archives" "$C/umoci" "$C/digests" "$B"

# ------------------------------------------------------------------ building
busybox_bin() {
    dpkg -L busybox-static | grep -m1 -E '/s?bin/busybox$'
}

# umount anything a failed debootstrap left mounted below $1, then delete it
# without crossing into other filesystems.
remove_tree() {
    local dir=$1 m
    [ -e "$dir" ] || return 0
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system -- "$dir"
}

# debootstrap_into DIR VERSION [debootstrap options] : a cached debootstrap of bookworm
debootstrap_into() {
    local dir=$1 version=$2 stamp=$1.version
    shift 2
    if [ -d "$dir" ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$version" ]; then
        return 0
    fi
    log "debootstrap $* bookworm from $MIRROR, takes a few minutes"
    remove_tree "$dir.tmp"
    remove_tree "$dir"
    mkdir -p "$(dirname "$dir")"
    debootstrap "$@" bookworm "$dir.tmp" "$MIRROR" >"$B/debootstrap.log" 2>&1 ||
        { tail -n 30 "$B/debootstrap.log" >&2; die "debootstrap failed (log: $B/debootstrap.log)"; }
    mv "$dir.tmp" "$dir"
    echo "$version" >"$stamp"
}

DEBIAN_ROOTFS=$C/debootstrap/bookworm-minbase-amd64
PYTHON_ROOTFS=$C/debootstrap/bookworm-python-amd64
ensure_debootstrap() {
    debootstrap_into "$DEBIAN_ROOTFS" "$DEBOOTSTRAP_VERSION" --variant=minbase
}

# layer RECIPE NAME [args] : $B/NAME.tar, built once
layer() {
    local recipe=$1 name=$2
    shift 2
    [ -s "$B/$name.tar" ] || mkimage layer "$recipe" "$B/$name.tar" "$@"
    echo "$B/$name.tar"
}

# build_layout NAME TAG SPEC-JSON-WITHOUT-LAYOUT/TAG : atomically creates layouts/NAME
build_layout() {
    local name=$1 tag=$2 body=$3 dir=$C/layouts/$1
    [ -f "$dir/index.json" ] && return 0
    remove_tree "$dir.tmp"
    printf '{"layout": "%s", "tag": "%s", "created": "%s", %s}\n' \
        "$dir.tmp" "$tag" "$CREATED" "$body" >"$B/$name.json"
    mkimage build "$B/$name.json" >/dev/null
    remove_tree "$dir"
    mv "$dir.tmp" "$dir"
    log "built layouts/$name:$tag"
}

build_busybox() {
    local bb amd arm
    [ -f "$C/layouts/busybox/index.json" ] && [ -f "$C/layouts/busybox-uncompressed/index.json" ] &&
        return 0
    bb=$(busybox_bin)
    amd=$(layer busybox busybox-amd64 --busybox "$bb" --arch amd64)
    arm=$(layer busybox busybox-arm64 --busybox "$bb" --arch arm64)
    local cfg='"config": {"Env": ['"$ENV_PATH"'], "Cmd": ["sh"], "WorkingDir": "/"},
        "history_extra": [{"created_by": "CMD [\"sh\"]", "empty_layer": true}]'
    build_layout busybox latest '"index": true, "images": [
      {"os": "linux", "architecture": "amd64", '"$cfg"',
       "layers": [{"tar": "'"$amd"'", "compression": "gzip", "created_by": "busybox rootfs (amd64)"}]},
      {"os": "linux", "architecture": "arm64", "variant": "v8", '"$cfg"',
       "layers": [{"tar": "'"$arm"'", "compression": "gzip", "created_by": "busybox rootfs (arm64)"}]}]'
    build_layout busybox-uncompressed uncompressed '"images": [
      {"os": "linux", "architecture": "amd64", '"$cfg"',
       "layers": [{"tar": "'"$amd"'", "compression": "none", "created_by": "busybox rootfs (amd64)"}]}]'
}

build_debian() {
    local need='' n
    for n in debian-bookworm debian-bookworm-zstd debian-base; do
        [ -f "$C/layouts/$n/index.json" ] || need=1
    done
    [ -n "$need" ] || return 0
    ensure_debootstrap
    local l1 l2 l3 comp
    l1=$(layer dir debian-l1 --dir "$DEBIAN_ROOTFS" \
        --exclude 'dev/*' --exclude 'proc/*' --exclude 'sys/*' \
        --exclude 'var/cache/apt/archives/*.deb' --exclude 'var/lib/apt/lists/*' \
        --exclude 'var/log/bootstrap.log' --exclude 'etc/hostname' --exclude 'etc/resolv.conf')
    l2=$(layer debian-l2 debian-l2)
    l3=$(layer debian-l3 debian-l3)
    for comp in gzip zstd; do
        local name=debian-bookworm tag=bookworm
        [ "$comp" = zstd ] && name=debian-bookworm-zstd tag=bookworm-zstd
        build_layout "$name" "$tag" '"images": [
          {"os": "linux", "architecture": "amd64",
           "config": {"Env": ['"$ENV_PATH"'], "Cmd": ["bash"], "WorkingDir": "/"},
           "layers": [
             {"tar": "'"$l1"'", "compression": "'"$comp"'", "created_by": "debootstrap --variant=minbase bookworm"},
             {"tar": "'"$l2"'", "compression": "'"$comp"'", "created_by": "drun fixtures: links, modes, owners, xattrs"},
             {"tar": "'"$l3"'", "compression": "'"$comp"'", "created_by": "drun fixtures: whiteouts, opaque dir"}],
           "history_extra": [{"created_by": "CMD [\"bash\"]", "empty_layer": true}]}]'
    done
    # Layers 1-2 only: no hardlink into a lower layer, which podman (containers/storage) cannot apply, so the
    # benchmarks can compare against it.
    build_layout debian-base base '"images": [
      {"os": "linux", "architecture": "amd64",
       "config": {"Env": ['"$ENV_PATH"'], "Cmd": ["bash"], "WorkingDir": "/"},
       "layers": [
         {"tar": "'"$l1"'", "compression": "gzip", "created_by": "debootstrap --variant=minbase bookworm"},
         {"tar": "'"$l2"'", "compression": "gzip", "created_by": "drun fixtures: links, modes, owners, xattrs"}]}]'
}

build_python() {
    [ -f "$C/layouts/python/index.json" ] && return 0
    debootstrap_into "$PYTHON_ROOTFS" 1 --variant=minbase --include=python3-pip
    local l1
    l1=$(layer dir python-l1 --dir "$PYTHON_ROOTFS" \
        --exclude 'dev/*' --exclude 'proc/*' --exclude 'sys/*' \
        --exclude 'var/cache/apt/archives/*.deb' --exclude 'var/lib/apt/lists/*' \
        --exclude 'var/log/bootstrap.log' --exclude 'etc/hostname' --exclude 'etc/resolv.conf' \
        --exclude 'usr/lib/python3*/EXTERNALLY-MANAGED')
    build_layout python bookworm '"images": [
      {"os": "linux", "architecture": "amd64",
       "config": {"Env": ['"$ENV_PATH"'], "Cmd": ["python3"], "WorkingDir": "/"},
       "layers": [
         {"tar": "'"$l1"'", "compression": "gzip", "created_by": "debootstrap --variant=minbase --include=python3-pip bookworm"}]}]'
}

build_evil() {
    local n innocent bad
    for n in "${EVIL_NAMES[@]}"; do
        [ -f "$C/layouts/evil-$n/index.json" ] && continue
        innocent=$(layer innocent evil-innocent)
        bad=$(layer "evil-$n" "evil-$n")
        build_layout "evil-$n" "$n" '"images": [
          {"os": "linux", "architecture": "amd64", "config": {"Cmd": ["/bin/true"]},
           "layers": [
             {"tar": "'"$innocent"'", "compression": "gzip", "created_by": "innocent"},
             {"tar": "'"$bad"'", "compression": "gzip", "created_by": "hostile: '"$n"'"}]}]'
    done
}

build_archive() {
    local out=$C/archives/busybox.tar
    [ -s "$out" ] && return 0
    rm -f "$out.tmp"
    skopeo --policy "$POLICY" copy -q --override-os linux --override-arch amd64 \
        "oci:$C/layouts/busybox:latest" "docker-archive:$out.tmp:drun-test/busybox:latest"
    mv "$out.tmp" "$out"
    log "built archives/busybox.tar"
}

build_umoci_reference() {
    local out=$C/umoci/debian-bookworm
    [ -d "$out/rootfs" ] && return 0
    remove_tree "$out.tmp"
    umoci unpack --image "$C/layouts/debian-bookworm:bookworm" "$out.tmp" >"$B/umoci.log" 2>&1 ||
        { cat "$B/umoci.log" >&2; die "umoci unpack failed"; }
    remove_tree "$out"
    mv "$out.tmp" "$out"
    log "built umoci/debian-bookworm"
}

# skopeo refuses to run without a policy; keep ours self-contained.
mkdir -p "$S"
POLICY=$S/skopeo-policy.json
echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"$POLICY"

build_busybox
build_debian
build_python
build_evil
build_archive
build_umoci_reference
rm -rf "$B"  # intermediate tars are large and every layout is complete now

if [ -n "$BUILD_ONLY" ]; then
    log "cache ready in $C"
    exit 0
fi

# ------------------------------------------------------------------- pushing
bash "$ROOT/hack/registry.sh" up

# opts_for HOST:PORT : fills DEST_OPTS/SRC_OPTS for skopeo copy/inspect
opts_for() {
    case ${1##*:} in
    5000) DEST_OPTS=(--dest-tls-verify=false) SRC_OPTS=(--tls-verify=false) ;;
    5001) DEST_OPTS=(--dest-tls-verify=false --dest-creds "$DRUN_TEST_USER:$DRUN_TEST_PASSWORD")
          SRC_OPTS=(--tls-verify=false --creds "$DRUN_TEST_USER:$DRUN_TEST_PASSWORD") ;;
    5443) DEST_OPTS=(--dest-cert-dir "$S/tls/certs.d/127.0.0.1:5443")
          SRC_OPTS=(--cert-dir "$S/tls/certs.d/127.0.0.1:5443") ;;
    # push needs credentials; inspect stays anonymous to exercise anonymous tokens
    5002) DEST_OPTS=(--dest-tls-verify=false --dest-creds "$DRUN_TEST_USER:$DRUN_TEST_PASSWORD")
          SRC_OPTS=(--tls-verify=false) ;;
    *) die "unknown registry $1" ;;
    esac
}

layout_digest() { # NAME
    jq -r '.manifests[0].digest' "$C/layouts/$1/index.json"
}

# push LAYOUT TAG HOST:PORT REPO:TAG [v2s2] : copy unless the registry already
# serves the expected manifest.
push() {
    local layout=$1 tag=$2 reg=$3 ref=$4 format=${5:-} want have digestfile state
    opts_for "$reg"
    digestfile=$C/digests/$layout.$format
    if [ -z "$format" ]; then
        want=$(layout_digest "$layout")
    else
        want=$(cat "$digestfile" 2>/dev/null || echo none)
    fi
    have=sha256:$(skopeo --policy "$POLICY" inspect --raw "${SRC_OPTS[@]}" "docker://$reg/$ref" 2>/dev/null |
        sha256sum | cut -d' ' -f1) || true
    if [ "$have" = "$want" ]; then
        state=up-to-date
    else
        local fmt=(--preserve-digests)
        [ -n "$format" ] && fmt=(--format "$format")
        skopeo --policy "$POLICY" copy -q --all --retry-times 2 "${fmt[@]}" \
            --digestfile "$digestfile.tmp" "${DEST_OPTS[@]}" \
            "oci:$C/layouts/$layout:$tag" "docker://$reg/$ref"
        want=$(cat "$digestfile.tmp")
        if [ -n "$format" ]; then mv "$digestfile.tmp" "$digestfile"; else rm -f "$digestfile.tmp"; fi
        state=pushed
    fi
    printf '%-50s %s %s\n' "$reg/$ref" "$want" "$state"
}

R=127.0.0.1:5000
push busybox latest $R drun-test/busybox:latest
push busybox-uncompressed uncompressed $R drun-test/busybox:uncompressed
push busybox latest $R drun-test/busybox:docker v2s2
push debian-bookworm bookworm $R drun-test/debian:bookworm
push debian-bookworm-zstd bookworm-zstd $R drun-test/debian:bookworm-zstd
push debian-base base $R drun-test/debian:base
push debian-bookworm bookworm $R drun-test/debian:bookworm-docker v2s2
push python bookworm $R drun-test/python:bookworm
for n in "${EVIL_NAMES[@]}"; do
    push "evil-$n" "$n" $R "drun-test/evil:$n"
done
push busybox latest 127.0.0.1:5001 drun-test/busybox:latest
push busybox latest 127.0.0.1:5443 drun-test/busybox:latest
push busybox latest 127.0.0.1:5002 drun-test/busybox:latest

printf '%-50s %s\n' "layout" "$C/layouts/busybox:latest" \
    "docker-archive" "$C/archives/busybox.tar (drun-test/busybox:latest)" \
    "umoci reference" "$C/umoci/debian-bookworm/rootfs"
