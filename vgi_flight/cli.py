"""The ``vgi-flight`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from vgi_flight import _serve


def _demo(args: argparse.Namespace) -> int:
    from vgi_flight._client import connect
    from vgi_flight._demo import DemoService, DemoServiceImpl, Point
    from vgi_flight._errors import RpcError
    from vgi_flight._log import Message
    from vgi_flight._server import RpcServer
    from vgi_flight._streams import AnnotatedBatch

    def on_log(msg: Message) -> None:
        print(f"    log  {msg.level.value}: {msg.message} {msg.extra or ''}".rstrip())

    with RpcServer(
        DemoService, DemoServiceImpl(), args.location, token_key=b"demo-only-token-key-32-bytes-!!!"
    ) as server:
        print(f"serving DemoService on {server.location}")
        with connect(DemoService, server.location, on_log=on_log) as demo:
            print("unary    add(a=2, b=40)                  ->", demo.add(a=2, b=40))
            print("unary    midpoint(p, q)                  ->", demo.midpoint(p=Point(0, 0), q=Point(4, 2)))
            print("unary    greet(name='Ada', excited=True) ->")
            print("        ", demo.greet(name="Ada", excited=True))
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
    print("done: every method kind served and called over Arrow Flight")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vgi-flight`` command."""
    parser = argparse.ArgumentParser(prog="vgi-flight", description="Typed RPC services on Arrow Flight")
    parser.add_argument(
        "--log-level", default=os.environ.get("VGI_FLIGHT_LOG_LEVEL", "WARNING"), help="log level (default WARNING)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="serve the demo service and call every method kind against it")
    demo.add_argument("--location", default="grpc://127.0.0.1:0", help="where to serve (default: a free port)")
    demo.set_defaults(run=_demo)
    serve = commands.add_parser("serve", help="serve a Protocol implementation (SIGTERM drains)")
    _serve.add_serve_arguments(serve)
    serve.set_defaults(run=_serve.serve)
    health = commands.add_parser("health", help="probe a server's __health__ action (exit 0 when serving)")
    _serve.add_health_arguments(health)
    health.set_defaults(run=_serve.health)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
