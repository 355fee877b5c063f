"""Serve the interop service over mTLS with HMAC-signed requests for the cross-language clients.

    python -m tests.interop.server DIR

writes dev certificates into DIR (ca.pem, server.*, client-interop-client.*) and prints one JSON
line with everything a client needs: location, file paths, HMAC key id and secret (hex). It then
serves until killed. Every client program reads these values from the environment variables
VGI_LOCATION, VGI_CA, VGI_CERT, VGI_KEY, VGI_HMAC_KID and VGI_HMAC_SECRET_HEX.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HMAC_KID = "interop"
HMAC_SECRET = bytes(range(32))
PRINCIPAL = "interop-client"


def make_certs(directory: Path) -> None:
    spec = importlib.util.spec_from_file_location("certs_generate", ROOT / "certs" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(directory, principals=[PRINCIPAL], force=True)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from tests.interop.service import Interop, InteropImpl
    from vgi_flight import HmacKey, RpcServer, ServerAuth

    directory = Path(sys.argv[1])
    make_certs(directory)
    auth = ServerAuth(hmac_keys={HMAC_KID: HmacKey(HMAC_SECRET, PRINCIPAL)}, require_mtls=True)
    server = RpcServer(
        Interop,
        InteropImpl(),
        "grpc+tls://127.0.0.1:0",
        token_key=b"interop-token-key-0123456789abcdef",
        tls_certificates=[((directory / "server.pem").read_bytes(), (directory / "server.key").read_bytes())],
        verify_client=True,
        root_certificates=(directory / "ca.pem").read_bytes(),
        auth=auth,
    )
    env = {
        "VGI_LOCATION": server.location,
        "VGI_CA": str(directory / "ca.pem"),
        "VGI_CERT": str(directory / f"client-{PRINCIPAL}.pem"),
        "VGI_KEY": str(directory / f"client-{PRINCIPAL}.key"),
        "VGI_HMAC_KID": HMAC_KID,
        "VGI_HMAC_SECRET_HEX": HMAC_SECRET.hex(),
    }
    print(json.dumps(env), flush=True)
    server.serve()


if __name__ == "__main__":
    main()
