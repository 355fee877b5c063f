"""Tests for the development PKI generator in certs/generate.py, including a real mTLS round trip."""

from __future__ import annotations

import importlib.util
import ipaddress
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SCRIPT = Path(__file__).resolve().parent.parent / "certs" / "generate.py"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vgi_flight_dev_certs_generate", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _cn(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def _check_pki(out: Path, principals: list[str]) -> None:
    """Check the files, modes and certificates of a generated directory."""
    expected = {"ca.pem", "ca.key", "server.pem", "server.key"}
    expected |= {f"client-{p}{suffix}" for p in principals for suffix in (".pem", ".key")}
    assert {p.name for p in out.iterdir()} == expected
    assert _mode(out) == 0o700
    for path in out.iterdir():
        assert _mode(path) == (0o600 if path.suffix == ".key" else 0o644), path
        if path.suffix == ".key":
            key = load_pem_private_key(path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            assert key.curve.name == "secp256r1"
            assert key.public_key() == _cert(path.with_suffix(".pem")).public_key()

    ca = _cert(out / "ca.pem")
    assert _cn(ca) == "vgi-flight dev CA"
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign

    server = _cert(out / "server.pem")
    server.verify_directly_issued_by(ca)
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _ekus(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _sans(server)[:3] == [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]

    for principal in principals:
        client = _cert(out / f"client-{principal}.pem")
        client.verify_directly_issued_by(ca)
        assert _cn(client) == principal
        assert _ekus(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert client.not_valid_after_utc <= ca.not_valid_after_utc


def test_script_defaults_and_server_names(tmp_path: Path) -> None:
    out = tmp_path / "dev"
    result = _run("--out", str(out), "--server-name", "flight.example.com", "--server-name", "10.1.2.3")
    assert result.returncode == 0, result.stderr
    _check_pki(out, ["dev-client"])
    for name in ("ca.pem", "ca.key", "server.pem", "server.key", "client-dev-client.pem", "client-dev-client.key"):
        assert str(out / name) in result.stdout
    server = _cert(out / "server.pem")
    assert _sans(server)[3:] == [
        x509.DNSName("flight.example.com"),
        x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
    ]
    ca = _cert(out / "ca.pem")
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert 30 <= lifetime.total_seconds() / 86400 < 30.1
    assert _sans(_cert(out / "client-dev-client.pem")) == [x509.DNSName("dev-client")]


def test_function_with_principals_and_days(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    written = gen.generate(out, principals=["alice", "svc_reporting", "alice"], days=3)
    assert [p.name for p in written] == [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client-alice.pem",
        "client-alice.key",
        "client-svc_reporting.pem",
        "client-svc_reporting.key",
    ]
    _check_pki(out, ["alice", "svc_reporting"])
    # A DNS-valid principal is the only SAN; one that is not a DNS name gets no SAN, only the CN.
    assert _sans(_cert(out / "client-alice.pem")) == [x509.DNSName("alice")]
    assert _sans(_cert(out / "client-svc_reporting.pem")) == []
    server = _cert(out / "server.pem")
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 3 <= lifetime.total_seconds() / 86400 < 3.1


def test_main_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "main"
    assert gen.main(["--out", str(out), "--principal", "bob"]) == 0
    assert str(out / "client-bob.key") in capsys.readouterr().out
    _check_pki(out, ["bob"])


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "dev"
    assert _run("--out", str(out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    result = _run("--out", str(out))
    assert result.returncode != 0
    assert "refusing to overwrite" in result.stderr
    assert "--force" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    with pytest.raises(gen.PkiError, match="refusing to overwrite"):
        gen.generate(out)

    (out / "ca.key").chmod(0o644)
    result = _run("--out", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert (out / "ca.key").read_bytes() != before["ca.key"]
    _check_pki(out, ["dev-client"])


@pytest.mark.parametrize("bad", ["", "a" * 65, "has space", "a/b", "../etc", "é", "x:y"])
def test_bad_principal_is_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(gen.PkiError, match="invalid principal name"):
        gen.generate(tmp_path / "out", principals=[bad])
    assert not (tmp_path / "out").exists()


def test_bad_principal_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run("--out", str(out), "--principal", "no/slashes")
    assert result.returncode == 2
    assert "invalid principal name 'no/slashes'" in result.stderr
    assert "letter, digit, '.', '-' or '_'" in result.stderr
    assert not out.exists()


def test_valid_principal_edge_cases() -> None:
    assert gen.validate_principal("a" * 64) == "a" * 64
    assert gen.validate_principal("A.b-c_9") == "A.b-c_9"
    assert gen.is_dns_name("svc.team-1.example")
    assert not gen.is_dns_name("svc_1")
    assert not gen.is_dns_name("-leading")
    assert not gen.is_dns_name("a..b")


def test_bad_server_name_and_days(tmp_path: Path) -> None:
    with pytest.raises(gen.PkiError, match="invalid server name"):
        gen.generate(tmp_path / "a", server_names=["not a host"])
    result = _run("--out", str(tmp_path / "b"), "--days", "0")
    assert result.returncode == 2
    assert "at least 1" in result.stderr


# --- end to end: a real pyarrow.flight server with mTLS -----------------------------------------


class _WhoAmI(flight.FlightServerBase):  # type: ignore[misc]
    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator[flight.Result]:
        yield flight.Result(pa.py_buffer(context.peer_identity()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "dev"
    result = _run("--out", str(out), "--principal", "alice", "--principal", "svc_reporting")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def mtls_server(pki: Path) -> Iterator[int]:
    server = _WhoAmI(
        "grpc+tls://127.0.0.1:0",
        tls_certificates=[flight.CertKeyPair((pki / "server.pem").read_bytes(), (pki / "server.key").read_bytes())],
        verify_client=True,
        root_certificates=(pki / "ca.pem").read_bytes(),
    )
    try:
        yield server.port
    finally:
        server.shutdown()


def _whoami(port: int, ca: bytes, cert: bytes | None = None, key: bytes | None = None) -> bytes:
    kwargs = {"cert_chain": cert, "private_key": key} if cert is not None else {}
    client = flight.FlightClient(f"grpc+tls://127.0.0.1:{port}", tls_root_certs=ca, **kwargs)
    try:
        options = flight.FlightCallOptions(timeout=10)
        results = list(client.do_action(flight.Action("whoami", b""), options))
        return bytes(results[0].body.to_pybytes())
    finally:
        client.close()


@pytest.mark.parametrize("principal", ["alice", "svc_reporting"])
def test_mtls_peer_identity_is_the_principal(pki: Path, mtls_server: int, principal: str) -> None:
    identity = _whoami(
        mtls_server,
        (pki / "ca.pem").read_bytes(),
        (pki / f"client-{principal}.pem").read_bytes(),
        (pki / f"client-{principal}.key").read_bytes(),
    )
    assert identity == principal.encode()


def test_mtls_client_without_certificate_is_refused(pki: Path, mtls_server: int) -> None:
    with pytest.raises((flight.FlightError, pa.ArrowException)):
        _whoami(mtls_server, (pki / "ca.pem").read_bytes())


def test_mtls_client_from_another_ca_is_refused(pki: Path, mtls_server: int, tmp_path: Path) -> None:
    other = tmp_path / "other"
    gen.generate(other, principals=["alice"])
    with pytest.raises((flight.FlightError, pa.ArrowException)):
        _whoami(
            mtls_server,
            (pki / "ca.pem").read_bytes(),
            (other / "client-alice.pem").read_bytes(),
            (other / "client-alice.key").read_bytes(),
        )
