"""`vgi-flight serve` and `vgi-flight health` as processes: configuration, probes, SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conformance_service import Conformance
from tests.conftest import Served
from vgi_flight import connect

ROOT = Path(__file__).resolve().parent.parent


def health(location: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vgi_flight", "health", location, "--timeout", "5"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
    )


def test_serve_finds_the_protocol_and_answers(serve: Callable[..., Served]) -> None:
    served = serve("vgi_flight._demo:DemoServiceImpl", "--location", "grpc://127.0.0.1:0")
    assert served.location.startswith("grpc://127.0.0.1:")
    probe = health(served.location)
    assert (probe.returncode, probe.stdout.strip()) == (0, "SERVING")
    from vgi_flight._demo import DemoService

    with connect(DemoService, served.location) as demo:
        assert demo.add(a=1, b=2) == 3
    assert served.terminate() == 0
    assert health(served.location).returncode == 1


def test_configuration_from_environment(serve: Callable[..., Served], tmp_path: Path) -> None:
    key_file = tmp_path / "token.key"
    key_file.write_text(json.dumps({"current": "k2", "keys": {"k1": "11" * 32, "k2": "22" * 32}}))
    env = {
        "VGI_FLIGHT_IMPLEMENTATION": "tests.conformance_service:ConformanceImpl",
        "VGI_FLIGHT_LOCATION": "grpc://127.0.0.1:0",
        "VGI_FLIGHT_TOKEN_KEY_FILE": str(key_file),
    }
    served = serve(env=env)
    with connect(Conformance, served.location) as proxy:
        assert proxy.add(a=1) == 11
        assert [b.batch.column(0)[0].as_py() for b in proxy.count(limit=2)] == [0, 1]


def test_sigterm_drains_and_streams_resume_on_another_replica(serve: Callable[..., Served], tmp_path: Path) -> None:
    key_file = tmp_path / "token.key"
    key_file.write_text("ab" * 32)
    common = [
        "tests.conformance_service:ConformanceImpl",
        "--location",
        "grpc://127.0.0.1:0",
        "--token-key-file",
        str(key_file),
        "--drain-deadline",
        "0.3",
    ]
    first, second = serve(*common), serve(*common)
    limit = 20_000
    with connect(Conformance, [first.location, second.location]) as proxy:
        # Start the stream on the first replica (the pool starts with it), then drain that replica.
        session = proxy.pids(limit=limit)
        rows = []
        for batch in session:
            rows.append((batch.batch.column("i")[0].as_py(), batch.batch.column("pid")[0].as_py()))
            if len(rows) == 20:
                assert rows[-1][1] == first.proc.pid
                first.proc.send_signal(signal.SIGTERM)
        assert [i for i, _ in rows] == list(range(limit))
        assert rows[-1][1] == second.proc.pid
        assert first.proc.wait(timeout=30) == 0
        assert proxy.add(a=5) == 15  # new calls go to the replica still serving


def test_serve_writes_access_log_and_metrics(serve: Callable[..., Served]) -> None:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    served = serve(
        "tests.conformance_service:ConformanceImpl", "--location", "grpc://127.0.0.1:0", "--metrics-port", str(port)
    )
    with connect(Conformance, served.location) as proxy:
        assert proxy.add(a=2) == 12
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert b'vgi_flight_calls_total{method="add",rpc="DoAction",status="OK"} 1.0' in response.read()
    assert served.terminate() == 0
    assert served.proc.stderr is not None
    lines = [json.loads(line) for line in served.proc.stderr.read().splitlines() if line.startswith("{")]
    assert any(line["method"] == "add" and line["status"] == "OK" for line in lines)


def test_configuration_from_a_toml_file(serve: Callable[..., Served], tmp_path: Path) -> None:
    key_file = tmp_path / "token.key"
    key_file.write_text("cd" * 32)
    config = tmp_path / "serve.toml"
    config.write_text(
        'implementation = "tests.conformance_service:ConformanceImpl"\n'
        'location = "grpc://127.0.0.1:1"\n'  # overridden by the command line below
        f'token_key_file = "{key_file}"\n'
        "drain_deadline = 2.5\n"
    )
    served = serve("--config", str(config), "--location", "grpc://127.0.0.1:0")
    with connect(Conformance, served.location) as proxy:
        assert proxy.add(a=3) == 13
    bad = tmp_path / "bad.toml"
    bad.write_text('no_such_option = 1\nimplementation = "tests.conformance_service:ConformanceImpl"\n')
    result = subprocess.run(
        [sys.executable, "-m", "vgi_flight", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
    )
    assert result.returncode != 0
    assert "unknown option 'no_such_option'" in result.stderr


def test_serve_with_a_local_data_channel(serve: Callable[..., Served], tmp_path: Path) -> None:
    path = tmp_path / "data.sock"
    served = serve(
        "tests.conformance_service:ConformanceImpl", "--location", "grpc://127.0.0.1:0", "--local-data", str(path)
    )
    assert path.is_socket()
    with connect(Conformance, served.location, local_data=True) as proxy:
        assert [b.batch.column(0)[0].as_py() for b in proxy.count(limit=3)] == [0, 1, 2]
    assert served.terminate() == 0
    assert not path.exists()  # removed on the way out
    assert served.proc.stderr is not None
    lines = [json.loads(line) for line in served.proc.stderr.read().splitlines() if line.startswith("{")]
    local = [line for line in lines if line.get("kind") == "producer-local"]
    assert [(line["method"], line["status"], line["rows_out"]) for line in local] == [("count", "OK", 3)]
