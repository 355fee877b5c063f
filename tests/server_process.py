"""Run an RpcServer in a child process: ``python tests/server_process.py module:Protocol module:Impl``.

Prints the bound location on the first line of stdout, then serves until killed.
"""

from __future__ import annotations

import importlib
import os
import sys


def _load(spec: str) -> object:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def main() -> None:
    protocol, impl_cls = _load(sys.argv[1]), _load(sys.argv[2])
    location = sys.argv[3] if len(sys.argv) > 3 else "grpc://127.0.0.1:0"
    from vgi_flight import RpcServer

    key = bytes.fromhex(os.environ.get("VGI_TEST_TOKEN_KEY", "00" * 32))
    server = RpcServer(protocol, impl_cls(), location, token_key=key)  # type: ignore[arg-type,operator]
    print(server.location, flush=True)
    server.serve()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
