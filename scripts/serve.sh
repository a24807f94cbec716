#!/usr/bin/env bash
# Start the node with its embedded defaults (SQLite audit database, CPU engine, packaged demo
# weights, AE DICOMNODE on port 11112, console on http://127.0.0.1:8080), installing first if needed.
# Extra arguments go to `dicomnode serve`, e.g. --send-to ORTHANC@127.0.0.1:4242
# The DICOM port then accepts any calling AE from any host (serve warns at start-up); to allow only your PACS:
#   DICOMNODE_SECURITY__ALLOWED_HOSTS='["10.1.2.3"]' scripts/serve.sh   (see the top of `dicomnode config example`)
set -euo pipefail
cd "$(dirname "$0")/.."
DICOMNODE_NODE_ONLY=1 bash scripts/install.sh
exec .venv/bin/dicomnode serve "$@"
