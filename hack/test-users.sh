#!/usr/bin/env bash
# Creates (idempotently) the unprivileged users the rootless tests run drun as:
#   drun-sub    with subordinate uid/gid ranges in /etc/subuid and /etc/subgid
#   drun-nosub  without any (like an LDAP/SSSD account on an HPC node)
# Both get a home under $DRUN_TEST_STATE/home so nothing lands in /home. `down` removes them again.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SUB_START=${DRUN_TEST_SUBID_START:-3000000}
SUB_COUNT=65536

up() {
    need_pkgs uidmap passwd
    mkdir -p "$DRUN_TEST_STATE/home"
    chmod 755 "$DRUN_TEST_STATE" "$DRUN_TEST_STATE/home"
    for u in drun-sub drun-nosub; do
        if ! id "$u" >/dev/null 2>&1; then
            useradd --home-dir "$DRUN_TEST_STATE/home/$u" --create-home --shell /bin/sh --user-group "$u"
            log "added user $u"
        fi
        mkdir -p "$DRUN_TEST_STATE/home/$u"
        chown "$u:$u" "$DRUN_TEST_STATE/home/$u"
    done
    for f in /etc/subuid /etc/subgid; do
        touch "$f"
        grep -q "^drun-sub:" "$f" || echo "drun-sub:$SUB_START:$SUB_COUNT" >>"$f"
        sed -i '/^drun-nosub:/d' "$f"
    done
}

down() {
    for u in drun-sub drun-nosub; do
        if id "$u" >/dev/null 2>&1; then
            userdel "$u" 2>/dev/null || true
        fi
    done
    for f in /etc/subuid /etc/subgid; do
        [ -f "$f" ] && sed -i '/^drun-sub:/d;/^drun-nosub:/d' "$f"
    done
    rm -rf "$DRUN_TEST_STATE/home/drun-sub" "$DRUN_TEST_STATE/home/drun-nosub"
}

case "${1:-up}" in
up) up ;;
down) down ;;
*) die "usage: $0 up|down" ;;
esac
