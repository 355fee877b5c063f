#!/usr/bin/env bash
# Builds (installs grpcio/grpcio-tools, generates stubs into the cache) and runs the raw gRPC client.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHON
bash "$HERE/build.sh"

# The generated flight_pb2 / flight_pb2_grpc modules live in the cache, outside the checkout.
STUBS="${VGI_INTEROP_CACHE:-$HOME/.cache/vgi-flight-interop}/grpc_python"
PYTHONPATH="$STUBS${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" "$HERE/client.py"
