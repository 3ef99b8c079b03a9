#!/bin/sh
# Check systemd/chunkd.service the way CI (and a reviewer) can, without installing it.
#
# `systemd-analyze verify` fails when ExecStart= names a missing binary, and /usr/local/bin/chunkd
# exists only on an installed host. So verify a temporary copy whose ExecStart= points at the
# chunkd on PATH (CI pip-installs it into a venv), else at /bin/true; everything else is verbatim.
# verify only *warns* about unknown keys and unparsable values, so any line of its output that
# names the unit counts as a failure too: a typo in a hardening option must not pass silently.
# Then print the `systemd-analyze security --offline=true` exposure line and fail above
# $CHUNKD_MAX_EXPOSURE (default 1.0, issue 9). Needs systemd >= 250 for --offline; older
# ones skip that step.
#
# Exit status: 0 = ok, 1 = verify or exposure failed, 2 = systemd-analyze missing.
set -eu

max_exposure=${CHUNKD_MAX_EXPOSURE:-1.0}
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
src="$here/chunkd.service"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify.sh: systemd-analyze not found" >&2
    exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
unit="$tmp/chunkd.service"

exe=$(command -v chunkd || echo /bin/true)
if ! grep -q '^ExecStart=/usr/local/bin/chunkd ' "$src"; then
    echo "verify.sh: no 'ExecStart=/usr/local/bin/chunkd ' line in $src" >&2
    exit 1
fi
exe_sed=$(printf '%s\n' "$exe" | sed 's/[&|\\]/\\&/g')
sed "s|^ExecStart=/usr/local/bin/chunkd |ExecStart=$exe_sed |" "$src" >"$unit"

if ! out=$(systemd-analyze verify --man=no "$unit" 2>&1); then
    printf '%s\n' "$out" >&2
    echo "verify.sh: systemd-analyze verify failed" >&2
    exit 1
fi
if printf '%s\n' "$out" | grep -q 'chunkd\.service'; then
    printf '%s\n' "$out" >&2
    echo "verify.sh: systemd-analyze verify warned about the unit" >&2
    exit 1
fi
echo "verify: ok (ExecStart=$exe)"

if command -v systemd-sysusers >/dev/null 2>&1; then
    mkdir -p "$tmp/root/etc"
    if ! out=$(systemd-sysusers --root="$tmp/root" "$here/chunkd.sysusers" 2>&1) ||
        ! grep -q '^chunkd:' "$tmp/root/etc/passwd"; then
        printf '%s\n' "$out" >&2
        echo "verify.sh: chunkd.sysusers does not create the chunkd user" >&2
        exit 1
    fi
    echo "sysusers: ok"
fi

if ! systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
    echo "security: skipped (systemd-analyze has no --offline; needs systemd >= 250)"
    exit 0
fi
if ! out=$(systemd-analyze security --offline=true "$unit" 2>&1); then
    printf '%s\n' "$out" >&2
    echo "verify.sh: systemd-analyze security failed" >&2
    exit 1
fi
line=$(printf '%s\n' "$out" | grep 'Overall exposure level' || true)
score=$(printf '%s\n' "$line" | sed -n 's/.*Overall exposure level for [^:]*: *\([0-9][0-9.]*\).*/\1/p')
if [ -z "$score" ]; then
    printf '%s\n' "$out" >&2
    echo "verify.sh: no overall exposure level in the output" >&2
    exit 1
fi
echo "$line"
if ! awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s + 0 <= m + 0) }'; then
    printf '%s\n' "$out" | grep '✗' >&2 || true
    echo "verify.sh: exposure $score is above $max_exposure" >&2
    exit 1
fi
