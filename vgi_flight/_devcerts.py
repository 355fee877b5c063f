"""A throwaway development PKI: a CA, a server certificate and client certificates.

Used by ``vgi-flight demo`` (which serves over mTLS with certificates made on the fly) and by
``certs/generate.py`` (which writes them to files). Everything uses EC P-256 keys and SHA-256
signatures. The certificates are for development and tests only.

A client's principal on a vgi-flight server is what Arrow Flight's ``ServerCallContext.peer_identity()``
returns: the first subject alternative name of the client certificate, else its common name. A client
certificate therefore gets the principal as its common name and, when the principal is a valid DNS name,
also as its only (DNS) subject alternative name. Principals that are not DNS names (for example ones with
``_``) get no SAN at all, so the common name is what the server sees.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_COMMON_NAME",
    "DEFAULT_DAYS",
    "DEFAULT_PRINCIPAL",
    "DEFAULT_SERVER_SANS",
    "DevPki",
    "Key",
    "PkiError",
    "cert_pem",
    "dev_pki",
    "generate",
    "is_dns_name",
    "issue_client",
    "issue_server",
    "key_pem",
    "make_ca",
    "validate_principal",
]

CA_COMMON_NAME = "vgi-flight dev CA"
DEFAULT_DAYS = 30
DEFAULT_PRINCIPAL = "dev-client"
DEFAULT_SERVER_SANS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

_PRINCIPAL_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Backdate certificates a little so that small clock differences between machines do not matter.
_CLOCK_SKEW = dt.timedelta(minutes=5)

Key = ec.EllipticCurvePrivateKey


class PkiError(ValueError):
    """Invalid input or an unsafe file operation; the message is meant for the user."""


# --- validation ---------------------------------------------------------------------------------


def validate_principal(name: str) -> str:
    """Check a client principal name.

    Args:
        name: The proposed principal.

    Returns:
        The name, unchanged.

    Raises:
        PkiError: The name is empty, longer than 64 characters or holds characters other than
            letters, digits, ``.``, ``-`` and ``_``.
    """
    if _PRINCIPAL_RE.fullmatch(name) is None:
        raise PkiError(f"invalid principal name {name!r}: use 1-64 characters, each a letter, digit, '.', '-' or '_'")
    return name


def is_dns_name(name: str) -> bool:
    """Tell whether ``name`` is a valid DNS host name (dot-separated labels, at most 253 characters).

    Args:
        name: The candidate name.

    Returns:
        True when every label is 1-63 letters, digits or inner hyphens.
    """
    if not name or len(name) > 253:
        return False
    return all(_DNS_LABEL_RE.fullmatch(label) for label in name.split("."))


def _server_general_name(name: str) -> x509.GeneralName:
    """Turn a ``--server-name`` value into an IP or DNS subject alternative name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    host = name[2:] if name.startswith("*.") else name
    if not is_dns_name(host):
        raise PkiError(f"invalid server name {name!r}: expected a DNS name (optionally '*.'-prefixed) or an IP address")
    return x509.DNSName(name.lower())


# --- certificates -------------------------------------------------------------------------------


def _new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise PkiError(f"invalid validity {days} days: must be at least 1")
    now = dt.datetime.now(dt.UTC)
    return now - _CLOCK_SKEW, now + dt.timedelta(days=days)


def make_ca(days: int = DEFAULT_DAYS, common_name: str = CA_COMMON_NAME) -> tuple[x509.Certificate, Key]:
    """Create a self-signed CA that may sign leaf certificates only.

    Args:
        days: Validity in days.
        common_name: Subject common name.

    Returns:
        The CA certificate and its private key.
    """
    key = _new_key()
    not_before, not_after = _validity(days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: Key,
    common_name: str,
    sans: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> tuple[x509.Certificate, Key]:
    key = _new_key()
    not_before, not_after = _validity(days)
    # A leaf must not outlive the CA that signed it.
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def issue_server(
    ca_cert: x509.Certificate, ca_key: Key, server_names: Iterable[str] = (), days: int = DEFAULT_DAYS
) -> tuple[x509.Certificate, Key]:
    """Issue a TLS server certificate (ExtendedKeyUsage serverAuth).

    Its SANs are ``DNS:localhost``, ``IP:127.0.0.1`` and ``IP:::1`` followed by ``server_names``
    (each an IP SAN when it parses as an IP address, else a DNS SAN); duplicates are dropped.

    Args:
        ca_cert: The signing CA certificate.
        ca_key: The signing CA key.
        server_names: Extra DNS names or IP addresses.
        days: Validity in days (capped at the CA's expiry).

    Returns:
        The server certificate and its private key.

    Raises:
        PkiError: A server name is neither an IP address nor a DNS name.
    """
    sans: list[x509.GeneralName] = []
    for name in (*DEFAULT_SERVER_SANS, *server_names):
        general_name = _server_general_name(name)
        if general_name not in sans:
            sans.append(general_name)
    dns_names = [n.value for n in sans if isinstance(n, x509.DNSName)]
    return _issue_leaf(ca_cert, ca_key, dns_names[0], sans, ExtendedKeyUsageOID.SERVER_AUTH, days)


def issue_client(
    ca_cert: x509.Certificate, ca_key: Key, principal: str, days: int = DEFAULT_DAYS
) -> tuple[x509.Certificate, Key]:
    """Issue a TLS client certificate (ExtendedKeyUsage clientAuth) for one principal.

    The common name is the principal. When the principal is a valid DNS name it is also the one and
    only SAN (``DNS:<principal>``), otherwise the certificate has no SAN. Either way Arrow Flight's
    ``peer_identity()`` (first SAN, else common name) yields the principal.

    Args:
        ca_cert: The signing CA certificate.
        ca_key: The signing CA key.
        principal: The client identity; see :func:`validate_principal`.
        days: Validity in days (capped at the CA's expiry).

    Returns:
        The client certificate and its private key.

    Raises:
        PkiError: The principal is not a valid name.
    """
    validate_principal(principal)
    sans: list[x509.GeneralName] = [x509.DNSName(principal)] if is_dns_name(principal) else []
    return _issue_leaf(ca_cert, ca_key, principal, sans, ExtendedKeyUsageOID.CLIENT_AUTH, days)


# --- files --------------------------------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Key) -> bytes:
    """Unencrypted PKCS#8 PEM encoding of a private key."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` with permission bits ``mode``, never exposing a key with looser ones."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; an overwritten file keeps its old mode otherwise
        os.write(fd, data)
    finally:
        os.close(fd)


def generate(
    out: str | os.PathLike[str],
    principals: Sequence[str] = (DEFAULT_PRINCIPAL,),
    days: int = DEFAULT_DAYS,
    server_names: Sequence[str] = (),
    force: bool = False,
) -> list[Path]:
    """Write a fresh dev CA, a server certificate and client certificates into ``out``.

    Files: ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` and ``client-<principal>.pem``/``.key``
    per principal. Certificates get mode 0644, keys 0600; ``out`` is created with mode 0700 if missing.
    All input is validated and existing files are checked before anything is written.

    Args:
        out: Output directory.
        principals: Client principals (duplicates are ignored); may be empty.
        days: Validity of every certificate in days.
        server_names: Extra server SANs (DNS names or IP addresses).
        force: Overwrite existing files instead of refusing.

    Returns:
        The paths written, certificate before key.

    Raises:
        PkiError: Bad input, or output files exist and ``force`` is false.
    """
    out_dir = Path(out)
    unique_principals = list(dict.fromkeys(validate_principal(p) for p in principals))
    _validity(days)
    for name in server_names:
        _server_general_name(name)

    stems = ["ca", "server", *(f"client-{p}" for p in unique_principals)]
    targets = [out_dir / f"{stem}{suffix}" for stem in stems for suffix in (".pem", ".key")]
    existing = [path for path in targets if path.exists()]
    if existing and not force:
        names = ", ".join(str(path) for path in existing)
        raise PkiError(f"refusing to overwrite existing files (use --force to replace them): {names}")

    if not out_dir.exists():
        out_dir.mkdir(mode=0o700, parents=True)
        out_dir.chmod(0o700)

    ca_cert, ca_key = make_ca(days)
    issued = [("ca", ca_cert, ca_key), ("server", *issue_server(ca_cert, ca_key, server_names, days))]
    issued += [(f"client-{p}", *issue_client(ca_cert, ca_key, p, days)) for p in unique_principals]

    written: list[Path] = []
    for stem, cert, key in issued:
        cert_path, key_path = out_dir / f"{stem}.pem", out_dir / f"{stem}.key"
        _write(cert_path, cert_pem(cert), 0o644, force)
        _write(key_path, key_pem(key), 0o600, force)
        written += [cert_path, key_path]
    return written


@dataclass(frozen=True)
class DevPki:
    """A CA with one server and one client certificate, all as PEM bytes (nothing on disk).

    Attributes:
        ca_cert: The CA certificate (trust it on both sides).
        server_cert: The server certificate (``localhost``, ``127.0.0.1``, ``::1``).
        server_key: The server's private key.
        client_cert: The client certificate for ``principal``.
        client_key: The client's private key.
        principal: The client principal.
    """

    ca_cert: bytes
    server_cert: bytes = field(repr=False)
    server_key: bytes = field(repr=False)
    client_cert: bytes = field(repr=False)
    client_key: bytes = field(repr=False)
    principal: str


def dev_pki(principal: str = DEFAULT_PRINCIPAL, days: int = 1) -> DevPki:
    """Make a fresh CA, a server certificate and a client certificate in memory.

    Args:
        principal: The client certificate's principal.
        days: Validity in days.

    Returns:
        The PEM bundle.

    Raises:
        PkiError: Invalid principal or validity.
    """
    ca, ca_key = make_ca(days)
    server, server_key = issue_server(ca, ca_key, days=days)
    client, client_key = issue_client(ca, ca_key, principal, days)
    return DevPki(
        ca_cert=cert_pem(ca),
        server_cert=cert_pem(server),
        server_key=key_pem(server_key),
        client_cert=cert_pem(client),
        client_key=key_pem(client_key),
        principal=principal,
    )
