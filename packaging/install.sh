#!/bin/sh
# Installs fss-edge from this tarball on an aarch64 Linux board without dpkg.
#   sudo ./install.sh                  # PREFIX=/usr/local: bin/edge, share/fss/models/default
#   PREFIX=/opt/fss ./install.sh       # any prefix
#   DESTDIR=/tmp/stage ./install.sh    # staged install (packaging tests)
# The config goes to $DESTDIR/etc/fss/edge.toml (kept if it exists), state to $DESTDIR/var/lib/fss.
# Then: edge doctor
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
ARCH=$(uname -m)
if [ "$ARCH" != aarch64 ] && [ "${FORCE:-0}" != 1 ]; then
  echo "error: this package is for aarch64 (arm64) Linux; this machine is $ARCH (FORCE=1 to install anyway)" >&2
  exit 1
fi
need_glibc=$(cat "$HERE/GLIBC_FLOOR")
have_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}') || true
if [ -n "${have_glibc:-}" ] && [ "$(printf '%s\n%s\n' "$need_glibc" "$have_glibc" | sort -V | head -1)" != "$need_glibc" ]; then
  echo "error: the edge binary needs glibc >= $need_glibc; this system has $have_glibc" >&2
  exit 1
fi
install -d "$DESTDIR$PREFIX/bin" "$DESTDIR$PREFIX/share/fss/models" "$DESTDIR/etc/fss" "$DESTDIR/var/lib/fss"
install -m 0755 "$HERE/bin/edge" "$DESTDIR$PREFIX/bin/edge"
rm -rf "$DESTDIR$PREFIX/share/fss/models/default"
cp -R "$HERE/share/fss/models/default" "$DESTDIR$PREFIX/share/fss/models/default"
cp "$HERE/share/fss/fss-edge.service" "$DESTDIR$PREFIX/share/fss/"
if [ -e "$DESTDIR/etc/fss/edge.toml" ]; then
  echo "keeping existing $DESTDIR/etc/fss/edge.toml"
else
  sed "s#/usr/share/fss/models/default#$PREFIX/share/fss/models/default#" "$HERE/etc/fss/edge.toml" > "$DESTDIR/etc/fss/edge.toml"
fi
echo "installed $DESTDIR$PREFIX/bin/edge and the default bundle in $DESTDIR$PREFIX/share/fss/models/default"
echo "check the board with: $PREFIX/bin/edge doctor"
echo "run it as a service: see the comments at the top of $PREFIX/share/fss/fss-edge.service"
