#!/usr/bin/env bash
# Build (if needed) and run the Rust interop client; it reads VGI_* from the environment.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

bash "$HERE/build.sh"
CACHE="${VGI_INTEROP_CACHE:-$HOME/.cache/vgi-flight-interop}/rust"
exec "$CACHE/target/debug/vgi-flight-interop-rust"
