"""`vgi-flight describe`, `call`, `health` and `demo` as processes against real servers."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vgi_flight import HmacKey, RpcServer, ServerAuth
from vgi_flight._demo import DemoService, DemoServiceImpl
from vgi_flight._devcerts import dev_pki

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vgi_flight", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=60,
    )


def ok(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = cli(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result


def json_lines(text: str) -> list[object]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def location() -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vgi_flight",
            "serve",
            "vgi_flight._demo:DemoServiceImpl",
            "--location",
            "grpc://127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    if not first:
        raise AssertionError(proc.communicate(timeout=10)[1])
    try:
        yield first
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- describe -----------------------------------------------------------------------------------


def test_describe_text(location: str) -> None:
    out = ok("describe", location).stdout
    assert out.startswith("DemoService: A small service showing every method kind.\n")
    assert "add (unary)  Add two integers.\n    a: int64\n    b: int64\n    -> int64\n" in out
    assert "    excited: bool = false\n    -> string\n" in out
    assert "    p: struct<x: double not null, y: double not null>\n" in out
    assert "countdown (stream)  Producer: one batch per number from ``start`` down to 1.\n    start: int64\n" in out
    assert "    header {total: int64, label: string}" in out
    assert "running_sum (stream)  Exchange: answers each batch with the running total so far.\n" in out


def test_describe_json(location: str) -> None:
    data = json.loads(ok("describe", location, "--json").stdout)
    assert (data["service"], data["doc"]) == ("DemoService", "A small service showing every method kind.")
    methods = {m["name"]: m for m in data["methods"]}
    assert list(methods) == ["add", "midpoint", "greet", "divide", "whoami", "countdown", "running_sum"]
    assert methods["add"]["kind"] == "unary"
    assert methods["add"]["params"] == [
        {"name": "a", "type": "int64", "nullable": False, "required": True},
        {"name": "b", "type": "int64", "nullable": False, "required": True},
    ]
    assert methods["add"]["result_schema"] == [{"name": "result", "type": "int64", "nullable": False}]
    assert methods["add"]["header_schema"] is None
    excited = methods["greet"]["params"][1]
    assert (excited["name"], excited["type"], excited["required"], excited["default"]) == (
        "excited",
        "bool",
        False,
        False,
    )
    countdown = methods["countdown"]
    assert (countdown["kind"], countdown["summary"]) == (
        "stream",
        "Producer: one batch per number from ``start`` down to 1.",
    )
    assert [(f["name"], f["type"]) for f in countdown["header_schema"]] == [("total", "int64"), ("label", "string")]
    assert methods["running_sum"]["params"] == []


# --- unary --------------------------------------------------------------------------------------


def test_call_unary_key_value_and_json(location: str) -> None:
    assert ok("call", location, "add", "a=2", "b=40").stdout == "42\n"
    assert ok("call", location, "add", "a=-5", "--json", '{"b": 7}').stdout == "2\n"
    assert ok("call", location, "add", "--json", '{"a": 1, "b": 2}').stdout == "3\n"
    # key=value overrides --json; structs are JSON, KEY:=JSON is raw JSON
    assert ok("call", location, "add", "b=10", "--json", '{"a": 1, "b": 2}').stdout == "11\n"
    result = ok("call", location, "midpoint", 'p={"x": 0, "y": 0}', 'q:={"x": 4, "y": 2}')
    assert json.loads(result.stdout) == {"x": 2.0, "y": 1.0}
    assert json.loads(ok("call", location, "divide", "a=1", "b=4").stdout) == 0.25


def test_call_unary_defaults_bools_and_logs_on_stderr(location: str) -> None:
    plain = ok("call", location, "greet", "name=Ada")
    assert json.loads(plain.stdout) == "Hello, Ada."  # excited takes the server's default
    assert plain.stderr == 'log INFO: greeting Ada {"caller": "anonymous"}\n'
    assert json.loads(ok("call", location, "greet", "name=Ada", "excited=true").stdout) == "Hello, Ada!"
    assert json.loads(ok("call", location, "greet", "name=true", "excited=no").stdout) == "Hello, true."
    anonymous = json.loads(ok("call", location, "whoami").stdout)
    assert anonymous == {"principal": "", "domain": "anonymous", "key_id": "", "certificate": ""}


# --- producer -----------------------------------------------------------------------------------


def test_call_producer_jsonl_and_table(location: str) -> None:
    result = ok("call", location, "countdown", "start=4")
    assert json_lines(result.stdout) == [{"n": 4}, {"n": 3}, {"n": 2}, {"n": 1}]
    assert result.stderr == 'header {"total": 4, "label": "countdown from 4"}\n'
    assert "\r" not in result.stderr  # no progress indicator when stderr is not a terminal
    table = ok("call", location, "countdown", "start=3", "--format", "table").stdout.splitlines()
    assert table == ['header {"total": 3, "label": "countdown from 3"}', "n", "-", "3", "2", "1", "(3 rows)"]
    assert ok("call", location, "countdown", "start=0").stdout == ""


@pytest.mark.parametrize("suffix", [".arrow", ".parquet"])
def test_call_producer_to_file(location: str, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    result = ok("call", location, "countdown", "start=5", "--out", str(path))
    assert result.stdout == ""
    assert f"wrote 5 rows to {path}" in result.stderr
    table = pa.ipc.open_file(path).read_all() if suffix == ".arrow" else pq.read_table(path)
    assert table.schema.field("n").type == pa.int64()
    expected = json_lines(ok("call", location, "countdown", "start=5").stdout)
    assert table.to_pylist() == expected == [{"n": n} for n in (5, 4, 3, 2, 1)]


def test_progress_only_on_a_terminal(location: str, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    path = tmp_path / "big.arrow"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vgi_flight", "call", location, "countdown", "start=3000", "--out", str(path)],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=ENV,
        cwd=ROOT,
    )
    os.close(slave)
    chunks = []
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while data := os.read(master, 4096):
            chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    stderr = b"".join(chunks).decode()
    assert "batches, " in stderr
    assert " rows" in stderr
    assert "\r\x1b[K" in stderr
    assert f"wrote 3000 rows to {path}" in stderr
    assert pa.ipc.open_file(path).read_all().num_rows == 3000


# --- exchange -----------------------------------------------------------------------------------


def test_call_exchange_from_stdin(location: str) -> None:
    stdin = '{"value": [1, 2]}\n\n{"value": 3}\n{"value": [4.5]}\n'
    result = ok("call", location, "running_sum", stdin=stdin)
    assert json_lines(result.stdout) == [{"total": 3.0}, {"total": 6.0}, {"total": 10.5}]
    assert result.stderr == "log INFO: 2 batches so far\n"
    table = ok("call", location, "running_sum", "--format", "table", stdin='{"value": [1, 2]}\n').stdout
    assert table.splitlines() == ["total", "-----", "  3.0", "(1 row)"]
    assert ok("call", location, "running_sum", stdin="").stdout == ""


# --- errors -------------------------------------------------------------------------------------


def test_errors_exit_1_with_code_and_type(location: str) -> None:
    cases = [
        (("divide", "a=1", "b=0"), None, "ERROR UNKNOWN ZeroDivisionError: division by zero"),
        (("add", "a=x", "b=1"), None, "ERROR INVALID_ARGUMENT ArgumentError: parameter 'a' expects int64, got 'x'"),
        (("add", "a=1"), None, "ERROR INVALID_ARGUMENT ArgumentError: add() needs b (int64)"),
        (("add", "a=1", "c=2"), None, "ERROR INVALID_ARGUMENT ArgumentError: add() has no parameter(s) c"),
        (("nope",), None, "ERROR NOT_FOUND NotFound: DemoService has no method 'nope'"),
        (("running_sum",), '{"value": 1}\n{"valu": 2}\n', "ERROR INVALID_ARGUMENT ArgumentError: stdin line 2"),
        (("running_sum",), '{"value": "abc"}\n', "ERROR INVALID_ARGUMENT ArgumentError: stdin line 1: column 'value'"),
    ]
    for args, stdin, expected in cases:
        result = cli("call", location, *args, stdin=stdin)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.splitlines()[-1].startswith(expected), (args, result.stderr)
    # the exchange answered the first line before failing on the second
    assert json_lines(cli("call", location, "running_sum", stdin=cases[5][1]).stdout) == [{"total": 1.0}]
    unreachable = cli("call", "grpc://127.0.0.1:1", "add", "a=1", "b=2", "--timeout", "5")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("ERROR UNAVAILABLE ")


# --- mTLS + HMAC --------------------------------------------------------------------------------


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[tuple[str, list[str], Path]]:
    """An in-process server requiring client certificates and HMAC-signed calls; yields (location, options)."""
    pki = dev_pki("alice")
    secret = os.urandom(32)
    files = {
        "ca.pem": pki.ca_cert,
        "alice.pem": pki.client_cert,
        "alice.key": pki.client_key,
        "secret.hex": secret.hex().encode(),
        "wrong.hex": os.urandom(32).hex().encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    auth = ServerAuth(hmac_keys={"k1": HmacKey(secret, "alice")}, require_mtls=True)
    server = RpcServer(
        DemoService,
        DemoServiceImpl(),
        "grpc+tls://127.0.0.1:0",
        token_key=os.urandom(32),
        tls_certificates=[(pki.server_cert, pki.server_key)],
        verify_client=True,
        root_certificates=pki.ca_cert,
        auth=auth,
    )
    options = [
        "--tls-root-certs",
        str(tmp_path / "ca.pem"),
        "--tls-cert",
        str(tmp_path / "alice.pem"),
        "--tls-key",
        str(tmp_path / "alice.key"),
        "--override-hostname",
        "localhost",
        "--hmac-key-id",
        "k1",
    ]
    with server:
        yield server.location, options, tmp_path


def test_describe_and_call_over_mtls_with_hmac(secure: tuple[str, list[str], Path]) -> None:
    location, options, tmp = secure
    signed = [*options, "--hmac-secret-file", str(tmp / "secret.hex")]
    assert "add (unary)  Add two integers." in ok("describe", location, *signed).stdout
    assert ok("call", location, "add", "a=2", "b=40", *signed).stdout == "42\n"
    me = json.loads(ok("call", location, "whoami", *signed).stdout)
    assert me == {"principal": "alice", "domain": "hmac", "key_id": "k1", "certificate": "alice"}
    assert json_lines(ok("call", location, "countdown", "start=2", *signed).stdout) == [{"n": 2}, {"n": 1}]
    exchange = ok("call", location, "running_sum", *signed, stdin='{"value": [1, 2]}\n{"value": 4}\n')
    assert json_lines(exchange.stdout) == [{"total": 3.0}, {"total": 7.0}]
    assert ok("health", location, *signed).stdout == "SERVING\n"

    wrong = cli("call", location, "add", "a=1", "b=2", *options, "--hmac-secret-file", str(tmp / "wrong.hex"))
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("ERROR UNAUTHENTICATED Unauthenticated: authentication failed")
    no_cert = cli("describe", location, "--tls-root-certs", str(tmp / "ca.pem"), "--override-hostname", "localhost")
    assert no_cert.returncode == 1
    assert no_cert.stderr.startswith("ERROR ")
    half = cli("describe", location, *options)  # --hmac-key-id without its secret
    assert half.returncode == 1
    assert "--hmac-key-id and --hmac-secret-file go together" in half.stderr


# --- demo ---------------------------------------------------------------------------------------


def test_demo_uses_mtls_and_hmac() -> None:
    result = ok("demo")
    out = result.stdout
    assert out.startswith("serving DemoService on grpc+tls://127.0.0.1:")
    assert "mTLS" in out
    assert "principal 'demo-client' (signed with key 'demo-key', certificate 'demo-client')" in out
    assert "unary    add(a=2, b=40)                  -> 42" in out
    assert "         batch {'n': [1]}" in out
    assert "         sent [4.5] -> {'total': [10.5]}" in out
    assert "unsigned add(a=2, b=40)         -> refused: UNAUTHENTICATED" in out
    assert out.rstrip().endswith("certificates deleted")
    assert len(out.splitlines()) < 30
