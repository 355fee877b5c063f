#!/usr/bin/env bash
# Builds (if needed) and runs the Java interop client; it reads the VGI_* environment variables.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="${VGI_INTEROP_CACHE:-$HOME/.cache/vgi-flight-interop}/java/target"

bash "$HERE/build.sh"
# Arrow's memory layer reflects into java.nio, which JDK 17 only allows with this flag.
exec java --add-opens=java.base/java.nio=ALL-UNNAMED \
  -cp "$BUILD/classes:$(cat "$BUILD/classpath.txt")" vgi.interop.InteropClient
