# Sourced by scripts/*: make sure .venv exists with vgi-flight and its dev tools installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VGI_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    PY=""
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PY="$candidate"
            break
        fi
    done
    [ -n "$PY" ] || { echo "vgi-flight needs Python >= 3.11" >&2; exit 1; }
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.vgi-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
