#!/bin/sh
# meson install script for the live config /etc/batchd/batchd.ini:
#   install-config.sh DEST EXAMPLE SYSUSERS   (EXAMPLE, SYSUSERS relative to the prefix)
#
# The file holds secrets (admin_token, the PostgreSQL password): it is
# root:batchd 0640, readable by root and by the group the service runs as
# (systemd/batchd.service.in: User=batchd, Group=batchd). The user and group
# come from the sysusers.d file, applied here with systemd-sysusers.
# An existing file keeps its contents (it may hold a real admin_token); its
# group and mode are set all the same, since a service that cannot read its
# config does not start.
#
# With DESTDIR (staging a package) the build host's users and ownerships are
# left alone: the target runs systemd-sysusers and the chgrp (a Debian
# postinst does both).
set -eu
dest=${DESTDIR:-}$1
example=${DESTDIR:-}${MESON_INSTALL_PREFIX}/$2
sysusers=${DESTDIR:-}${MESON_INSTALL_PREFIX}/${3:-lib/sysusers.d/batchd.conf}

if [ -e "$dest" ]; then
    echo "batchd: keeping existing $dest (new example: $example)"
else
    mkdir -p "$(dirname "$dest")"
    # umask first: the copy is never world-readable, not even briefly.
    (umask 077 && cp "$example" "$dest")
    chmod 0640 "$dest"
    echo "batchd: installed $dest from $example; set admin_token before starting"
fi

if [ -n "${DESTDIR:-}" ]; then
    echo "batchd: DESTDIR install: on the target run 'systemd-sysusers ${sysusers#"${DESTDIR}"}' and 'chgrp batchd $1'"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "batchd: not root: run 'systemd-sysusers $sysusers' and 'chgrp batchd $dest' as root" >&2
    exit 0
fi
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$sysusers"
elif ! getent group batchd >/dev/null; then
    adduser --system --group --no-create-home --home /nonexistent batchd
fi
chgrp batchd "$dest"
chmod g+r,g-wx,o-rwx "$dest"
echo "batchd: $dest is root:batchd, not world-readable; the service runs as user batchd"
