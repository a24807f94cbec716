#!/usr/bin/env bash
# Fetch the prebuilt OHIF v3 viewer (npm @ohif/app ships dist/) into a cache dir outside the repo.
# Usage: bash tests/viewer/fetch_ohif.sh [DEST]   (DEST defaults to $OHIF_DIST or ~/.cache/dicomnode-ohif/<version>)
# Prints the dist directory on success. Idempotent: does nothing when DEST/index.html exists.
set -euo pipefail
VERSION="${OHIF_VERSION:-3.13.2}"
DEST="${1:-${OHIF_DIST:-${XDG_CACHE_HOME:-$HOME/.cache}/dicomnode-ohif/$VERSION}}"
if [ -f "$DEST/index.html" ]; then
  echo "$DEST"
  exit 0
fi
command -v npm >/dev/null || { echo "npm is not installed (apt-get install -y npm)" >&2; exit 2; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
( cd "$WORK" && npm pack --silent "@ohif/app@$VERSION" >/dev/null )
TGZ="$(ls "$WORK"/ohif-app-*.tgz)"
tar -xzf "$TGZ" -C "$WORK"
[ -f "$WORK/package/dist/index.html" ] || { echo "@ohif/app@$VERSION has no dist/index.html" >&2; exit 3; }
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp"
mv "$WORK/package/dist" "$DEST.tmp"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$DEST"
