#!/usr/bin/env bash
# Packages the cross-built aarch64 edge (scripts/build-arm.sh builds it first) as
#   target/arm-dist/fss-edge_<version>_arm64.deb            (dpkg-deb; /usr/bin/edge,
#        /usr/share/fss/models/default, /etc/fss/edge.toml, /var/lib/fss, the fss-edge systemd
#        unit running `edge run` as the unprivileged `fss` user in the video and gpio groups)
#   target/arm-dist/fss-edge-<version>-aarch64-linux-gnu.tar.gz   (install.sh, for boards without dpkg)
# Templates live in packaging/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=aarch64-unknown-linux-gnu
BIN=${EDGE_BIN:-$ROOT/target/$TARGET/release/edge}
case $BIN in /*) ;; *) BIN="$ROOT/$BIN" ;; esac
BUNDLE="$ROOT/models/default"
DIST=${DIST_DIR:-$ROOT/target/arm-dist}
case $DIST in /*) ;; *) DIST="$ROOT/$DIST" ;; esac
[ -x "$BIN" ] || { echo "error: $BIN: not built (run scripts/build-arm.sh)" >&2; exit 1; }
[ -f "$BUNDLE/bundle.json" ] || { echo "error: $BUNDLE/bundle.json: default bundle missing" >&2; exit 1; }

# Version of the workspace ([workspace.package] version in Cargo.toml).
VERSION=$(awk '/^\[workspace.package\]/{p=1; next} /^\[/{p=0} p && /^version *=/{gsub(/[" ]/,""); split($0,a,"="); print a[2]; exit}' Cargo.toml)
[ -n "$VERSION" ] || { echo "error: Cargo.toml: no [workspace.package] version" >&2; exit 1; }
# The highest GLIBC_x.y symbol version the binary needs.
GLIBC=$(aarch64-linux-gnu-objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)

rm -rf "$DIST"
mkdir -p "$DIST"
STRIPPED="$DIST/edge"
aarch64-linux-gnu-strip -o "$STRIPPED" "$BIN"

# --- the files both packages hold, under a staging root ------------------------------------------
stage() { # stage DIR: usr/bin/edge, usr/share/fss/..., etc/fss/edge.toml
  local d=$1
  install -d "$d/usr/bin" "$d/usr/share/fss/models" "$d/etc/fss" "$d/usr/share/doc/fss-edge"
  install -m 0755 "$STRIPPED" "$d/usr/bin/edge"
  cp -R "$BUNDLE" "$d/usr/share/fss/models/default"
  install -m 0644 packaging/fss-edge.service "$d/usr/share/fss/fss-edge.service"
  install -m 0644 packaging/edge.toml "$d/etc/fss/edge.toml"
  install -m 0644 docs/arm.md "$d/usr/share/doc/fss-edge/README.md"
}

# --- .deb -----------------------------------------------------------------------------------------
DEB_ROOT="$DIST/deb/fss-edge_${VERSION}_arm64"
stage "$DEB_ROOT"
install -d "$DEB_ROOT/DEBIAN" "$DEB_ROOT/var/lib/fss" "$DEB_ROOT/lib/systemd/system"
install -m 0644 packaging/fss-edge.service "$DEB_ROOT/lib/systemd/system/fss-edge.service"
SIZE_KB=$(du -sk --exclude=DEBIAN "$DEB_ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@GLIBC@/$GLIBC/" -e "s/@SIZE_KB@/$SIZE_KB/" packaging/control.in \
  > "$DEB_ROOT/DEBIAN/control"
echo /etc/fss/edge.toml > "$DEB_ROOT/DEBIAN/conffiles"
install -m 0755 packaging/postinst "$DEB_ROOT/DEBIAN/postinst"
install -m 0755 packaging/prerm "$DEB_ROOT/DEBIAN/prerm"
DEB="$DIST/fss-edge_${VERSION}_arm64.deb"
dpkg-deb --root-owner-group -Zxz --build "$DEB_ROOT" "$DEB" >/dev/null

# --- tarball + install.sh -------------------------------------------------------------------------
NAME="fss-edge-${VERSION}-aarch64-linux-gnu"
TAR_ROOT="$DIST/tar/$NAME"
stage "$DIST/tar/stage"
install -d "$TAR_ROOT/bin" "$TAR_ROOT/share" "$TAR_ROOT/etc"
mv "$DIST/tar/stage/usr/bin/edge" "$TAR_ROOT/bin/edge"
mv "$DIST/tar/stage/usr/share/fss" "$TAR_ROOT/share/fss"
mv "$DIST/tar/stage/etc/fss" "$TAR_ROOT/etc/fss"
install -m 0644 docs/arm.md "$TAR_ROOT/README.md"
install -m 0755 packaging/install.sh "$TAR_ROOT/install.sh"
echo "$GLIBC" > "$TAR_ROOT/GLIBC_FLOOR"
echo "$VERSION" > "$TAR_ROOT/VERSION"
rm -rf "$DIST/tar/stage"
TARBALL="$DIST/$NAME.tar.gz"
tar -C "$DIST/tar" --owner=0 --group=0 -czf "$TARBALL" "$NAME"

# --- smoke test: both packages unpacked/installed into a scratch root, `edge doctor` finds the
# bundle beside the binary and runs it (under qemu-aarch64 on a non-arm64 host) -------------------
if [ "$(uname -m)" = aarch64 ]; then RUN=(); else RUN=(qemu-aarch64 -L /usr/aarch64-linux-gnu); fi
if [ "$(uname -m)" = aarch64 ] || command -v qemu-aarch64 >/dev/null; then
  # Outside the repository, so that `edge` cannot find the repository's models/default.
  SMOKE=$(mktemp -d /tmp/fss-edge-smoke.XXXXXX)
  trap 'rm -rf "$SMOKE"' EXIT
  mkdir -p "$SMOKE/deb" "$SMOKE/tar"
  doctor_finds() { # doctor_finds BINARY BUNDLE-DIR: `edge doctor` run from $SMOKE checks BUNDLE-DIR, ok
    local out
    out=$(cd "$SMOKE" && "${RUN[@]}" "$1" doctor --json) || return 1
    [[ $out == *"\"ok\":true,\"path\":\"$2\""* ]]
  }
  config_ok() { # config_ok BINARY CONFIG BUNDLE: the shipped config passes `edge run --check-config`
    (cd "$SMOKE" && "${RUN[@]}" "$1" run --config "$2" --bundle "$3" --check-config >/dev/null)
  }
  dpkg-deb -x "$DEB" "$SMOKE/deb"
  doctor_finds "$SMOKE/deb/usr/bin/edge" "$SMOKE/deb/usr/share/fss/models/default" \
    || { echo "error: edge doctor from the unpacked .deb failed" >&2; exit 1; }
  config_ok "$SMOKE/deb/usr/bin/edge" "$SMOKE/deb/etc/fss/edge.toml" "$SMOKE/deb/usr/share/fss/models/default" \
    || { echo "error: the .deb's /etc/fss/edge.toml fails edge run --check-config" >&2; exit 1; }
  [ -f "$SMOKE/deb/lib/systemd/system/fss-edge.service" ] \
    || { echo "error: the .deb has no fss-edge.service" >&2; exit 1; }
  tar -C "$SMOKE/tar" -xzf "$TARBALL"
  FORCE=1 DESTDIR="$SMOKE/tar/root" "$SMOKE/tar/$NAME/install.sh" >/dev/null
  doctor_finds "$SMOKE/tar/root/usr/local/bin/edge" "$SMOKE/tar/root/usr/local/share/fss/models/default" \
    || { echo "error: edge doctor from the tarball's install.sh failed" >&2; exit 1; }
  rm -rf "$SMOKE"
  echo "[package-arm] smoke test: edge doctor runs the bundle from the .deb and from install.sh"
fi

echo "[package-arm] $(basename "$DEB"): $(du -h "$DEB" | cut -f1) (needs libc6 >= $GLIBC)"
echo "[package-arm] $(basename "$TARBALL"): $(du -h "$TARBALL" | cut -f1)"
