# shellcheck shell=bash
# The set-up hack/bench-run and hack/bench-pull share. Set BENCH (run|pull), DEFAULT_RUNS and BENCH_PACKAGES, then
# source it with the script's arguments:
#   hack/bench-$BENCH [--new DRUN] [--old DRUN] [RUNS]
# It installs the packages, resolves the binaries (NEW: target/release/drun unless given; OLD: none unless given),
# reads the test registry's environment (`make images` starts it), and makes the work directory $W on /var/tmp,
# unmounted and removed on exit (scripts add their own clean-up steps to BENCH_CLEANUP). Then:
#   bench_pair NAME [bench-pair.py options] -- ARGV...   old and new interleaved ({drun} in ARGV), when OLD is set
#   bench_report TEXT                                    prints the report and writes target/bench-$BENCH.md
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
# shellcheck source=hack/lib.sh
. "$ROOT/hack/lib.sh"

bench_usage() {
    echo "usage: hack/bench-$BENCH [--new DRUN] [--old DRUN] [RUNS]   (RUNS: $DEFAULT_RUNS unless given)" >&2
    exit 2
}
NEW=$ROOT/target/release/drun
OLD=
RUNS=$DEFAULT_RUNS
while [ $# -gt 0 ]; do
    case $1 in
    --new) [ $# -ge 2 ] || bench_usage; NEW=$2; shift 2 ;;
    --old) [ $# -ge 2 ] || bench_usage; OLD=$2; shift 2 ;;
    -h | --help) bench_usage ;;
    *[!0-9]* | "") bench_usage ;;
    *) RUNS=$1; shift ;;
    esac
done
need_pkgs "${BENCH_PACKAGES[@]}"
[ -x "$NEW" ] || die "no drun binary at $NEW (build it first: make build)"
NEW=$(realpath "$NEW")
if [ -n "$OLD" ]; then
    [ -x "$OLD" ] || die "no drun binary at $OLD"
    OLD=$(realpath "$OLD")
fi
# The binary the rows against podman, runc and skopeo measure.
DRUN=$NEW
[ -s "$DRUN_TEST_STATE/env" ] || die "the test registry is not running: make images"
# shellcheck source=/dev/null
. "$DRUN_TEST_STATE/env"

# (Short: podman refuses a --runroot path longer than 50 characters, and bench-pull's are $W/run.XXXXXX/podman-run.)
W=$(mktemp -d "/var/tmp/drun-$BENCH.XXXXXX")
BENCH_CLEANUP=()
bench_cleanup() {
    local step
    for step in "${BENCH_CLEANUP[@]}"; do "$step" || true; done
    # Mounts below $W (podman's storage, a tmpfs of ours) go first. (No mount left is the usual case: grep's
    # status 1 must not stop the clean-up under `set -e`.)
    { grep -o " ${W}[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do umount "$m" || true; done
    rm -rf "$W"
}
trap bench_cleanup EXIT

PAIRS=()
bench_pair() {
    local name=$1 out
    shift
    out=$W/pair-${#PAIRS[@]}.json
    python3 "$ROOT/hack/bench-pair.py" run --old "$OLD" --new "$NEW" --runs "$RUNS" --name "$name" \
        --out "$out" "$@" >&2
    PAIRS+=("$out")
}

bench_report() {
    local report=$1
    if [ "${#PAIRS[@]}" -gt 0 ]; then
        report+=$'\n\n'$(python3 "$ROOT/hack/bench-pair.py" table "${PAIRS[@]}")
    fi
    mkdir -p "$ROOT/target"
    printf '%s\n' "$report" | tee "$ROOT/target/bench-$BENCH.md"
}
