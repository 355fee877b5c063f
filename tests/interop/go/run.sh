#!/usr/bin/env bash
# Build the Go interop client, then run it against the server described by the VGI_* variables.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${VGI_INTEROP_CACHE:-$HOME/.cache/vgi-flight-interop}/go"

bash "$HERE/build.sh" >&2
exec "$CACHE/interop-client"
