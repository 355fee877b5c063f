"""``vgi-flight serve``: run a service as a process.

Every ``serve`` option can also come from an environment variable ``VGI_FLIGHT_<OPTION>`` (upper
snake case; repeatable options take a comma-separated list), so container platforms can
configure replicas without a command line.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

from vgi_flight._auth import HmacKey, ServerAuth
from vgi_flight._server import RpcServer
from vgi_flight._service import describe_protocol
from vgi_flight._tokens import KeyRing

log = logging.getLogger("vgi_flight.serve")
ENV_PREFIX = "VGI_FLIGHT_"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def load_object(spec: str) -> Any:
    """Import ``module:attribute`` (dots allowed in the attribute).

    Raises:
        SystemExit: The spec is malformed or does not resolve.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"expected MODULE:ATTRIBUTE, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"cannot load {spec}: {exc}") from None
    return obj


def find_protocol(implementation: object) -> type:
    """The one Protocol in the implementation's module that the implementation fully implements.

    Raises:
        SystemExit: None or several match (then ``--protocol`` must name it).
    """
    module = sys.modules[type(implementation).__module__]
    matches = []
    for value in vars(module).values():
        if isinstance(value, type) and getattr(value, "_is_protocol", False) and value is not typing.Protocol:
            names = [n for n, v in vars(value).items() if inspect.isfunction(v) and not n.startswith("_")]
            if names and all(callable(getattr(implementation, n, None)) for n in names):
                matches.append(value)
    if len(matches) != 1:
        found = ", ".join(m.__name__ for m in matches) or "none"
        raise SystemExit(f"cannot tell which Protocol {type(implementation).__name__} serves ({found}): use --protocol")
    return matches[0]


def read_token_keys(path: str) -> KeyRing:
    """A token key file: 64+ hex characters (one key), or JSON ``{"current": id, "keys": {id: hex}}``."""
    text = Path(path).read_text().strip()
    try:
        if text.startswith("{"):
            data = json.loads(text)
            return KeyRing({kid: bytes.fromhex(secret) for kid, secret in data["keys"].items()}, data["current"])
        return KeyRing.single(bytes.fromhex(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"token key file {path}: {exc}") from None


def read_hmac_keys(path: str) -> dict[str, HmacKey]:
    """An HMAC keys file: JSON ``{"<key id>": {"secret_hex": "...", "principal": "..."}}``."""
    try:
        data = json.loads(Path(path).read_text())
        return {kid: HmacKey(bytes.fromhex(entry["secret_hex"]), entry["principal"]) for kid, entry in data.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SystemExit(f"HMAC keys file {path}: {exc}") from None


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vgi-flight serve``."""
    parser.add_argument(
        "--config",
        default=_env("config"),
        help="a TOML file of serve options (keys as the long option names); options and "
        "VGI_FLIGHT_* variables take precedence over it",
    )
    parser.add_argument(
        "implementation",
        metavar="MODULE:ATTR",
        nargs="?",
        default=_env("implementation"),
        help="the implementation (a class is instantiated without arguments)",
    )
    parser.add_argument("--protocol", default=_env("protocol"), help="MODULE:ATTR of the Protocol (found if omitted)")
    parser.add_argument(
        "--location",
        default=_env("location", "grpc://127.0.0.1:8815"),
        help="where to listen (default grpc://127.0.0.1:8815; port 0 picks one)",
    )
    parser.add_argument(
        "--token-key-file",
        default=_env("token_key_file"),
        help="state token key: hex, or a JSON key ring; replicas must share it",
    )
    parser.add_argument("--tls-cert", default=_env("tls_cert"), help="server certificate (PEM); enables TLS")
    parser.add_argument("--tls-key", default=_env("tls_key"), help="server private key (PEM)")
    parser.add_argument(
        "--client-ca", default=_env("client_ca"), help="CA bundle (PEM) for client certificates: requires mTLS"
    )
    parser.add_argument(
        "--hmac-keys-file",
        default=_env("hmac_keys_file"),
        help='HMAC request keys: JSON {"<id>": {"secret_hex": ..., "principal": ...}}',
    )
    parser.add_argument(
        "--advertise",
        action="append",
        default=[a for a in (_env("advertise") or "").split(",") if a],
        help="a replica location to list in FlightInfo endpoints (repeatable)",
    )
    parser.add_argument(
        "--drain-deadline",
        type=float,
        default=float(_env("drain_deadline", "30") or 30),
        help="seconds open streams may run after SIGTERM (default 30)",
    )
    parser.add_argument(
        "--handler-deadline",
        type=float,
        default=float(_env("handler_deadline", "0") or 0) or None,
        help="seconds one handler invocation may run before its call fails with DEADLINE_EXCEEDED "
        "(runs handlers on worker threads; default: no limit, handlers on the gRPC thread)",
    )
    parser.add_argument(
        "--local-data",
        nargs="?",
        const="auto",
        default=_env("local_data"),
        metavar="PATH",
        help="also serve producers to clients on this host over a Unix socket at PATH "
        "(no PATH, or 'auto': a private temporary directory); clients opt in with local_data=True",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("metrics_port", "0") or 0),
        help="serve Prometheus metrics on this port (/metrics; needs the metrics extra)",
    )
    parser.add_argument(
        "--metrics-address",
        default=_env("metrics_address", "127.0.0.1"),
        help="address for the metrics endpoint (default 127.0.0.1)",
    )
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        default=_env("no_access_log") == "1",
        help="do not write the JSON access log line per call to stderr",
    )
    parser.add_argument(
        "--send-tracebacks",
        action="store_true",
        default=_env("send_tracebacks") == "1",
        help="send server tracebacks to clients (development only)",
    )


def apply_config_file(args: argparse.Namespace, parser_defaults: dict[str, Any]) -> None:
    """Fill options from the ``--config`` TOML file where neither the command line nor the environment set them.

    Raises:
        SystemExit: The file is unreadable, not TOML, or names an unknown option.
    """
    if not args.config:
        return
    try:
        with open(args.config, "rb") as fh:
            values = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"config file {args.config}: {exc}") from None
    for key, value in values.items():
        dest = key.replace("-", "_")
        if dest not in parser_defaults or dest == "config":
            raise SystemExit(f"config file {args.config}: unknown option {key!r}")
        given = getattr(args, dest) != parser_defaults[dest]
        if not given and _env(dest) is None:
            setattr(args, dest, value)


def build_server(args: argparse.Namespace) -> RpcServer:
    """Build the server an argument namespace describes."""
    if not args.implementation:
        raise SystemExit("serve needs MODULE:ATTR (or VGI_FLIGHT_IMPLEMENTATION)")
    target = load_object(args.implementation)
    implementation = target() if isinstance(target, type) else target
    protocol = load_object(args.protocol) if args.protocol else find_protocol(implementation)
    describe_protocol(protocol)
    kwargs: dict[str, Any] = {}
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("--tls-cert and --tls-key go together")
        kwargs["tls_certificates"] = [(Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes())]
    if args.client_ca:
        if "tls_certificates" not in kwargs:
            raise SystemExit("--client-ca needs --tls-cert and --tls-key")
        kwargs["verify_client"] = True
        kwargs["root_certificates"] = Path(args.client_ca).read_bytes()
    if args.hmac_keys_file or args.client_ca:
        hmac_keys = read_hmac_keys(args.hmac_keys_file) if args.hmac_keys_file else {}
        kwargs["auth"] = ServerAuth(
            hmac_keys=hmac_keys, require_mtls=bool(args.client_ca), require_hmac=bool(args.hmac_keys_file)
        )
    token_key = read_token_keys(args.token_key_file) if args.token_key_file else None
    return RpcServer(
        protocol,
        implementation,
        args.location,
        token_key=token_key,
        send_tracebacks=args.send_tracebacks,
        advertise=args.advertise,
        metrics=bool(args.metrics_port),
        handler_deadline=args.handler_deadline,
        local_data=True if args.local_data == "auto" else (args.local_data or False),
        **kwargs,
    )


def serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT, then drain."""
    apply_config_file(args, args.serve_defaults)
    server = build_server(args)
    if not args.no_access_log:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))  # each line is already a JSON object
        access = logging.getLogger("vgi_flight.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    if args.metrics_port:
        server.serve_metrics(args.metrics_port, args.metrics_address)
    print(server.location, flush=True)
    log.info("serving on %s", server.location)
    if server.local_data_path is not None:
        log.info("local data channel on %s", server.local_data_path)
    if not server.serve(drain_deadline=args.drain_deadline):
        # A call is stuck on a stalled client: do not let it hold the process past the drain.
        log.warning("exiting with calls still open")
        logging.shutdown()
        os._exit(1)
    return 0
