#!/bin/sh
# meson install script: put the example config in place as the live one,
# unless a live one exists already (it may hold a real admin_token).
#   install-config.sh DEST EXAMPLE   (EXAMPLE is relative to the prefix)
set -eu
dest=${DESTDIR:-}$1
example=${DESTDIR:-}${MESON_INSTALL_PREFIX}/$2
if [ -e "$dest" ]; then
    echo "batchd: keeping existing $dest (new example: $example)"
else
    mkdir -p "$(dirname "$dest")"
    cp "$example" "$dest"
    chmod 0640 "$dest"
    echo "batchd: installed $dest from $example; set admin_token before starting"
fi
