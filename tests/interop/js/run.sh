#!/usr/bin/env bash
# Build (if needed), then run the JavaScript interop client against the server named by the VGI_*
# environment variables (see tests/interop/README.md).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/build.sh"
exec node "$here/client.mjs"
