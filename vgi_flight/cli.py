"""The ``vgi-flight`` command: ``demo``, ``serve``, ``health``, ``describe`` and ``call``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from vgi_flight import _cli_call, _serve

DEMO_PRINCIPAL = "demo-client"
DEMO_KEY_ID = "demo-key"


def _demo(args: argparse.Namespace) -> int:
    """Serve the demo service over mTLS with HMAC-signed calls, call every method kind, stop."""
    import tempfile
    from pathlib import Path

    from vgi_flight._auth import HmacAuth, HmacKey, ServerAuth
    from vgi_flight._client import connect
    from vgi_flight._demo import DemoService, DemoServiceImpl, Point
    from vgi_flight._devcerts import generate
    from vgi_flight._errors import RpcError
    from vgi_flight._log import Message
    from vgi_flight._server import RpcServer
    from vgi_flight._streams import AnnotatedBatch

    if not args.location.startswith("grpc+tls://"):
        raise SystemExit("demo serves mTLS: --location must be grpc+tls://HOST:PORT")

    def on_log(msg: Message) -> None:
        print(f"         log {msg.level.value}: {msg.message} {msg.extra or ''}".rstrip())

    secret = os.urandom(32)
    with tempfile.TemporaryDirectory(prefix="vgi-flight-demo-") as tmp:
        pki = Path(tmp)
        generate(pki, principals=[DEMO_PRINCIPAL], days=1)
        ca = (pki / "ca.pem").read_bytes()
        cert = (pki / f"client-{DEMO_PRINCIPAL}.pem").read_bytes()
        key = (pki / f"client-{DEMO_PRINCIPAL}.key").read_bytes()

        server = RpcServer(
            DemoService,
            DemoServiceImpl(),
            args.location,
            token_key=os.urandom(32),
            tls_certificates=[((pki / "server.pem").read_bytes(), (pki / "server.key").read_bytes())],
            verify_client=True,
            root_certificates=ca,
            auth=ServerAuth(
                hmac_keys={DEMO_KEY_ID: HmacKey(secret, DEMO_PRINCIPAL)}, require_mtls=True, require_hmac=True
            ),
        )
        with server:
            print(f"serving DemoService on {server.location}")
            print(f"         mTLS: throwaway dev CA, client certificate CN={DEMO_PRINCIPAL} (deleted at exit)")
            print(f"         HMAC: every call signed with key '{DEMO_KEY_ID}'; unsigned calls are refused")
            with connect(
                DemoService,
                server.location,
                on_log=on_log,
                tls_root_certs=ca,
                cert_chain=cert,
                private_key=key,
                auth=HmacAuth(DEMO_KEY_ID, secret),
            ) as demo:
                me = demo.whoami()
                print(
                    f"auth     whoami()                        -> principal '{me.principal}' "
                    f"(signed with key '{me.key_id}', certificate '{me.certificate}')"
                )
                print("unary    add(a=2, b=40)                  ->", demo.add(a=2, b=40))
                print("unary    midpoint(p, q)                  ->", demo.midpoint(p=Point(0, 0), q=Point(4, 2)))
                print("unary    greet(name='Ada', excited=True) ->", repr(demo.greet(name="Ada", excited=True)))
                try:
                    demo.divide(a=1.0, b=0.0)
                except RpcError as exc:
                    print(f"unary    divide(a=1, b=0)                -> RpcError {exc.code.value}: {exc}")
                session = demo.countdown(start=3)
                print(f"producer countdown(start=3)             -> header {session.header}")
                for batch in session:
                    print("         batch", batch.batch.to_pydict())
                print("exchange running_sum()")
                with demo.running_sum() as sums:
                    for values in ([1.0, 2.0], [3.0], [4.5]):
                        out = sums.exchange(AnnotatedBatch.from_pydict({"value": values}))
                        print(f"         sent {values} -> {out.batch.to_pydict()}")
            with connect(DemoService, server.location, tls_root_certs=ca, cert_chain=cert, private_key=key) as unsigned:
                try:
                    unsigned.add(a=2, b=40)
                    print("auth     unsigned add(a=2, b=40)         -> accepted (unexpected)")
                    return 1
                except RpcError as exc:
                    print(f"auth     unsigned add(a=2, b=40)         -> refused: {exc.code.value}: {exc.error_message}")
    print("done: every method kind called over mTLS with HMAC-signed requests; certificates deleted")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vgi-flight`` command."""
    parser = argparse.ArgumentParser(prog="vgi-flight", description="Typed RPC services on Arrow Flight")
    parser.add_argument(
        "--log-level", default=os.environ.get("VGI_FLIGHT_LOG_LEVEL", "WARNING"), help="log level (default WARNING)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="serve the demo service over mTLS + HMAC and call every method kind against it"
    )
    demo.add_argument("--location", default="grpc+tls://127.0.0.1:0", help="where to serve (default: a free port)")
    demo.set_defaults(run=_demo)
    serve = commands.add_parser("serve", help="serve a Protocol implementation (SIGTERM drains)")
    _serve.add_serve_arguments(serve)
    defaults = {action.dest: action.default for action in serve._actions if action.dest != "help"}
    serve.set_defaults(run=_serve.serve, serve_defaults=defaults)
    health = commands.add_parser("health", help="probe a server's __health__ action (exit 0 when serving)")
    _cli_call.add_health_arguments(health)
    health.set_defaults(run=_cli_call.health)
    describe = commands.add_parser("describe", help="print a server's service, methods and their schemas")
    _cli_call.add_describe_arguments(describe)
    describe.set_defaults(run=lambda a: _cli_call.run_reporting_errors(_cli_call.describe, a))
    call = commands.add_parser(
        "call",
        help="call a method without its Protocol class",
        description=(
            "Call METHOD on the server at LOCATION. Parameters are KEY=VALUE pairs parsed by the parameter's "
            "Arrow type (KEY:=JSON for raw JSON) and/or --json. Unary results print as JSON; producer rows as "
            "JSON lines, a table, or into --out FILE.arrow/.parquet; an exchange reads one JSON object per "
            "stdin line (column -> value or list of values) and prints each answer."
        ),
    )
    _cli_call.add_call_arguments(call)
    call.set_defaults(run=lambda a: _cli_call.run_reporting_errors(_cli_call.call, a))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
