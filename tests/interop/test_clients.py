"""Official Flight clients in other languages call the interop service (see README.md here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CLIENTS = sorted(p.name for p in HERE.iterdir() if (p / "run.sh").is_file())


@pytest.fixture(scope="module")
def interop_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    directory = tmp_path_factory.mktemp("interop")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.interop.server", str(directory)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        yield json.loads(line)
    finally:
        proc.kill()
        proc.wait()


def test_every_language_has_a_client() -> None:
    # A missing client must fail loudly, never be skipped.
    assert {"go", "java", "rust", "js", "grpc_python", "pyarrow"} <= set(CLIENTS), CLIENTS


@pytest.mark.parametrize("lang", CLIENTS)
@pytest.mark.timeout(1800)
def test_client(lang: str, interop_env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", str(HERE / lang / "run.sh")],
        env={**os.environ, **interop_env, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert f"INTEROP OK {lang}" in result.stdout, output[-6000:]
