#!/usr/bin/env python3
"""Generate a development PKI for vgi-flight: a CA, a server certificate and client certificates.

Run it as a script::

    python certs/generate.py --out certs/dev --principal alice --principal bob --days 30

or import it (tests load it by path) and call :func:`generate`.

The certificates come from :mod:`vgi_flight._devcerts` (EC P-256 keys, SHA-256 signatures), which
``vgi-flight demo`` uses too; this script only adds the default output directory and the command
line. The certificates are for development and tests only: the CA key sits unencrypted next to the
certificates it signed. See :mod:`vgi_flight._devcerts` for how a client certificate's principal
is chosen.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vgi_flight import _devcerts
from vgi_flight._devcerts import (
    CA_COMMON_NAME,
    DEFAULT_DAYS,
    DEFAULT_PRINCIPAL,
    Key,
    PkiError,
    is_dns_name,
    issue_client,
    issue_server,
    make_ca,
    validate_principal,
)

__all__ = [
    "CA_COMMON_NAME",
    "DEFAULT_DAYS",
    "DEFAULT_OUT",
    "DEFAULT_PRINCIPAL",
    "Key",
    "PkiError",
    "generate",
    "is_dns_name",
    "issue_client",
    "issue_server",
    "main",
    "make_ca",
    "validate_principal",
]

DEFAULT_OUT = Path(__file__).resolve().parent / "dev"


def generate(
    out: str | os.PathLike[str] = DEFAULT_OUT,
    principals: Sequence[str] = (DEFAULT_PRINCIPAL,),
    days: int = DEFAULT_DAYS,
    server_names: Sequence[str] = (),
    force: bool = False,
) -> list[Path]:
    """Write a fresh dev CA, a server certificate and client certificates into ``out``.

    Files: ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` and ``client-<principal>.pem``/``.key``
    per principal (see :func:`vgi_flight._devcerts.generate`).

    Args:
        out: Output directory (default ``certs/dev`` next to this script).
        principals: Client principals (duplicates are ignored); may be empty.
        days: Validity of every certificate in days.
        server_names: Extra server SANs (DNS names or IP addresses).
        force: Overwrite existing files instead of refusing.

    Returns:
        The paths written, certificate before key.

    Raises:
        PkiError: Bad input, or output files exist and ``force`` is false.
    """
    return _devcerts.generate(out, principals, days, server_names, force)


# --- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate a development CA, server certificate and client certificates for vgi-flight mTLS.",
        epilog="Development only: never use these certificates or this CA in production.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: certs/dev)")
    parser.add_argument(
        "--principal",
        action="append",
        dest="principals",
        metavar="NAME",
        help=f"client principal to issue a certificate for; repeatable (default: {DEFAULT_PRINCIPAL})",
    )
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity in days (default: {DEFAULT_DAYS})")
    parser.add_argument(
        "--server-name",
        action="append",
        dest="server_names",
        default=[],
        metavar="NAME",
        help="extra server DNS name or IP address (localhost, 127.0.0.1 and ::1 are always included); repeatable",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 on invalid input or refused overwrite.
    """
    args = _parser().parse_args(argv)
    principals: list[str] = args.principals if args.principals is not None else [DEFAULT_PRINCIPAL]
    try:
        written = generate(args.out, principals, args.days, args.server_names, args.force)
    except PkiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print("development certificates only: never use this CA in production", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
