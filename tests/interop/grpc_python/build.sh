#!/usr/bin/env bash
# Installs grpcio + grpcio-tools (+ pyarrow, for Arrow IPC only) into $PYTHON and generates the gRPC
# stubs for tests/interop/proto/flight.proto into the cache dir (never into the checkout).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROTO_DIR="$(cd "$HERE/../proto" && pwd)"
PYTHON="${PYTHON:-python3}"
OUT="${VGI_INTEROP_CACHE:-$HOME/.cache/vgi-flight-interop}/grpc_python"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "grpc_python/build.sh: Python interpreter '$PYTHON' not found (set \$PYTHON)" >&2
    exit 1
fi

# Prints the grpcio-tools version when everything imports; empty output means "install".
probe='import grpc, grpc_tools, pyarrow; from importlib.metadata import version; print(version("grpcio-tools"))'
tools_version="$("$PYTHON" -c "$probe" 2>/dev/null || true)"
if [ -z "$tools_version" ]; then
    echo "grpc_python/build.sh: installing grpcio, grpcio-tools into $PYTHON" >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools
    if ! "$PYTHON" -c 'import pyarrow' 2>/dev/null; then
        "$PYTHON" -m pip install --quiet --disable-pip-version-check pyarrow
    fi
    tools_version="$("$PYTHON" -c "$probe")"
fi

# Regenerate when the stubs are missing, the proto is newer, or grpcio-tools changed (the generated
# code checks the grpcio/protobuf runtime versions it was made for).
mkdir -p "$OUT"
stamp="$OUT/.grpcio-tools-version"
if [ ! -f "$OUT/flight_pb2.py" ] || [ ! -f "$OUT/flight_pb2_grpc.py" ] \
    || [ "$PROTO_DIR/flight.proto" -nt "$OUT/flight_pb2.py" ] \
    || [ "$(cat "$stamp" 2>/dev/null || true)" != "$tools_version" ]; then
    echo "grpc_python/build.sh: generating stubs into $OUT" >&2
    "$PYTHON" -m grpc_tools.protoc -I "$PROTO_DIR" --python_out="$OUT" --grpc_python_out="$OUT" \
        "$PROTO_DIR/flight.proto"
    echo "$tools_version" >"$stamp"
fi
