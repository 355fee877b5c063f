#!/usr/bin/env bash
# The pyarrow client needs only pyarrow (with Flight) in $PYTHON; installs it from PyPI if missing.
# Nothing is compiled, so there is nothing to cache.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "pyarrow/build.sh: Python interpreter '$PYTHON' not found (set \$PYTHON)" >&2
    exit 1
fi

if ! "$PYTHON" -c 'import pyarrow.flight' 2>/dev/null; then
    echo "pyarrow/build.sh: installing pyarrow into $PYTHON" >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check pyarrow
    # Fails loudly (with the import error) if the wheel has no Flight.
    "$PYTHON" -c 'import pyarrow.flight'
fi
