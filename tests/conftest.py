from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ServerProcess:
    """A vgi-flight server running in a child process on loopback."""

    def __init__(self, protocol: str, impl: str, location: str = "grpc://127.0.0.1:0") -> None:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "server_process.py"), protocol, impl, location],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"server process failed to start: {err}")
        self.location = line

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def spawn_server() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def spawn(protocol: str, impl: str, location: str = "grpc://127.0.0.1:0") -> ServerProcess:
        server = ServerProcess(protocol, impl, location)
        started.append(server)
        return server

    yield spawn
    for server in started:
        server.stop()


def _vgi_flight_command() -> list[str]:
    script = Path(sys.executable).with_name("vgi-flight")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vgi_flight"]


class Served:
    """``vgi-flight serve ARGS`` in a child process; ``location`` is the first line it prints."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
        self.proc = subprocess.Popen(
            [*_vgi_flight_command(), "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        self.location = self.proc.stdout.readline().strip()
        if not self.location:
            raise AssertionError(f"vgi-flight serve {args} did not start: {self.proc.communicate(timeout=10)[1]}")

    def terminate(self) -> int:
        """SIGTERM the server and return its exit code; fail with its log if it does not stop in 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, stderr = self.proc.communicate(timeout=10)
            raise AssertionError(
                f"the server did not stop within 30 s of SIGTERM; its log:\n{stderr[-4000:]}"
            ) from None


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Served:
        served = Served(list(args), env)
        started.append(served)
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
        served.proc.wait(timeout=30)
        for stream in (served.proc.stdout, served.proc.stderr):
            if stream is not None:
                stream.close()
