#!/usr/bin/env bash
# Checks pyarrow.flight is importable, then runs the Arrow C++ Flight client through pyarrow.flight.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHON
bash "$HERE/build.sh"

# Python puts this directory (no pyarrow/ inside it) first on sys.path, so `import pyarrow` still
# finds the installed package despite the directory's name.
exec "$PYTHON" "$HERE/client.py"
