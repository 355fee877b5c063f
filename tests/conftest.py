from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

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
