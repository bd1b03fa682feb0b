# shellcheck shell=bash
# Shared helpers for the scripts in hack/ (developer tools: benchmarks, demo, VM and Slurm harnesses) and
# tests/fixtures/ (what the tests run against). Source it:
#   . "$(git rev-parse --show-toplevel)/hack/lib.sh"
# Everything lives in two places so scripts only ever touch what they own:
#   DRUN_TEST_STATE  per-run state: registry configs/storage, pidfiles, logs, TLS, auth
#   DRUN_TEST_CACHE  expensive, reusable build output (image layouts, debootstrap)

repo_root() {
    git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel
}

: "${DRUN_TEST_STATE:=/tmp/drun-test-state}"
: "${DRUN_TEST_CACHE:=/var/cache/drun-test}"
: "${PYTHON:=python3}"
export DRUN_TEST_STATE DRUN_TEST_CACHE PYTHON

# Fixed test credentials (basic-auth and token registries)
export DRUN_TEST_USER=drun DRUN_TEST_PASSWORD=drun-secret

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need_pkgs PKG... : install missing Debian packages; `apt-get update` runs at
# most once per process and only when something is actually missing.
_drun_apt_updated=
need_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing ${missing[*]}"
    if [ -z "$_drun_apt_updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        _drun_apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# pid_is_ours PIDFILE PATTERN : true when PIDFILE names a live process whose
# command line contains PATTERN (guards against recycled PIDs).
pid_is_ours() {
    local pidfile=$1 pattern=$2 pid cmd
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmd" == *"$pattern"* ]]
}
