"""Serve the load service in this process: ``python -m tests.load_server [LOCATION]``.

Prints the bound location on the first line of stdout, then serves until killed (SIGTERM drains).
All replicas share the token key ``VGI_TEST_TOKEN_KEY`` (hex; default 32 zero bytes), so any of
them can resume any stream. ``LoadServer`` starts one in a child process for the tests.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.nginx import grpc_front

ROOT = Path(__file__).resolve().parent.parent


class LoadServer:
    """``python -m tests.load_server`` in a child process on loopback; stderr goes to ``log_path``."""

    def __init__(self, log_path: Path, location: str = "grpc://127.0.0.1:0") -> None:
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.load_server", location],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            self.stop()
            raise RuntimeError(f"load server failed to start: {self.log()}")
        self.location = line
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGKILL the server (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Nginx:
    """nginx balancing gRPC over ``upstreams`` (:func:`benchmarks.nginx.grpc_front`) until :meth:`stop`."""

    def __init__(self, upstreams: list[str], workdir: Path) -> None:
        self._stack = contextlib.ExitStack()
        self.location: str = self._stack.enter_context(grpc_front(upstreams, workdir))

    def stop(self) -> None:
        """Stop nginx (idempotent)."""
        self._stack.close()


def main() -> None:
    from tests.load_service import Load, LoadImpl
    from vgi_flight import RpcServer

    location = sys.argv[1] if len(sys.argv) > 1 else "grpc://127.0.0.1:0"
    key = bytes.fromhex(os.environ.get("VGI_TEST_TOKEN_KEY", "00" * 32))
    impl = LoadImpl()
    server = RpcServer(Load, impl, location, token_key=key)
    impl.server = server
    print(server.location, flush=True)
    server.serve()


if __name__ == "__main__":
    main()
