"""Fixtures for the example services' tests: a real ``vgi-flight serve`` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("vgi-flight")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vgi_flight"]


class ServedCli:
    """``vgi-flight serve <spec> --location grpc://127.0.0.1:0`` in a child process."""

    def __init__(self, spec: str, env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.proc = subprocess.Popen(
            [*_command(), "serve", spec, "--location", "grpc://127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        self.location = self.proc.stdout.readline().strip()
        if not self.location:
            raise AssertionError(f"vgi-flight serve {spec} did not start: {self.proc.communicate(timeout=10)[1]}")

    def terminate(self) -> int:
        """SIGTERM the server and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def serve_cli() -> Iterator[Callable[..., ServedCli]]:
    started: list[ServedCli] = []

    def start(spec: str, env: dict[str, str] | None = None) -> ServedCli:
        served = ServedCli(spec, env)
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
