#!/bin/sh
# Install chunkd's system files (the package itself comes from pip): the unit, sysusers and
# tmpfiles entries, the system config (tenant layout) and the documentation.
#
#   systemd/install.sh                       # PREFIX=/usr/local, into /
#   DESTDIR=/tmp/stage PREFIX=/usr systemd/install.sh
#   make install DESTDIR=... PREFIX=...      # the same
#
# Then, on the host (not needed under DESTDIR):
#   systemd-sysusers chunkd.conf && systemd-tmpfiles --create chunkd.conf
# (tmpfiles also makes the config root:chunkd 0640, readable by the service's user; see below)
#   systemctl daemon-reload && systemctl enable --now chunkd
#
# ExecStart= and Documentation= are rewritten to $PREFIX (the console script from
# `pip install --prefix=$PREFIX`, the README installed here). An existing config is kept; the
# new one is then written beside it as chunkd.toml.new. Tested by tests/reliability/
# test_install.py with systemd-sysusers, systemd-tmpfiles and systemd-analyze verify --root.
set -eu

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
SYSCONFDIR=${SYSCONFDIR:-/etc}
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
top=$(dirname -- "$here")

case $PREFIX in
/*) ;;
*) echo "install.sh: PREFIX must be absolute: $PREFIX" >&2; exit 2 ;;
esac

unitdir="$DESTDIR$PREFIX/lib/systemd/system"
docdir="$DESTDIR$PREFIX/share/doc/chunkd"
confdir="$DESTDIR$SYSCONFDIR/chunkd"

install -d -m 0755 "$unitdir" "$DESTDIR$PREFIX/lib/sysusers.d" "$DESTDIR$PREFIX/lib/tmpfiles.d" \
    "$docdir"
prefix_sed=$(printf '%s\n' "$PREFIX" | sed 's/[&|\\]/\\&/g')
sed -e "s|^ExecStart=/usr/local/bin/chunkd |ExecStart=$prefix_sed/bin/chunkd |" \
    -e "s|^Documentation=file:///usr/local/share/doc/chunkd/|Documentation=file://$prefix_sed/share/doc/chunkd/|" \
    "$here/chunkd.service" >"$unitdir/chunkd.service.tmp"
chmod 0644 "$unitdir/chunkd.service.tmp"
mv "$unitdir/chunkd.service.tmp" "$unitdir/chunkd.service"
install -m 0644 "$here/chunkd.sysusers" "$DESTDIR$PREFIX/lib/sysusers.d/chunkd.conf"
install -m 0644 "$here/chunkd.tmpfiles" "$DESTDIR$PREFIX/lib/tmpfiles.d/chunkd.conf"

install -d -m 0755 "$confdir"
if [ -e "$confdir/chunkd.toml" ]; then
    install -m 0640 "$here/chunkd.toml" "$confdir/chunkd.toml.new"
    echo "install.sh: kept $confdir/chunkd.toml; the new one is chunkd.toml.new"
else
    install -m 0640 "$here/chunkd.toml" "$confdir/chunkd.toml"
fi
# The config must be root:chunkd-users 0640 (writable by root; readable by the socket's group:
# the service, which is a member, and the tenants' and operators' CLI, which finds the socket in
# it), the directory root:chunkd-users 0750. The group exists only once systemd-sysusers ran (in
# $DESTDIR's /etc/group under DESTDIR), and chgrp needs root; when either is missing,
# chunkd.tmpfiles' "z" line does it at `systemd-tmpfiles --create` and at every boot.
if [ -n "$DESTDIR" ]; then
    users_gid=$(sed -n 's/^chunkd-users:[^:]*:\([0-9][0-9]*\):.*/\1/p' "$DESTDIR/etc/group" 2>/dev/null || :)
else
    users_gid=$(getent group chunkd-users 2>/dev/null | cut -d: -f3 || :)
fi
if [ -n "$users_gid" ] && [ "$(id -u)" = 0 ]; then
    for f in "$confdir/chunkd.toml" "$confdir/chunkd.toml.new"; do
        if [ -e "$f" ]; then chown "0:$users_gid" "$f" && chmod 0640 "$f"; fi
    done
    chown "0:$users_gid" "$confdir" && chmod 0750 "$confdir"
else
    echo "install.sh: run systemd-tmpfiles --create chunkd.conf (after systemd-sysusers) to give" \
        "$SYSCONFDIR/chunkd/chunkd.toml to root:chunkd-users 0640, or the service cannot read it"
fi
install -m 0644 "$top/config/chunkd.toml" "$docdir/chunkd.toml.example"
install -m 0644 "$top/README.md" "$docdir/README.md"
for doc in "$top"/docs/*.md; do
    install -m 0644 "$doc" "$docdir/"
done
echo "installed chunkd's system files under ${DESTDIR:-/} (PREFIX=$PREFIX)"
