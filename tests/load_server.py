"""Serve the load service in this process: ``python -m tests.load_server [LOCATION]``.

Prints the bound location on the first line of stdout, then serves until killed (SIGTERM drains).
All replicas share the token key ``VGI_TEST_TOKEN_KEY`` (hex; default 32 zero bytes), so any of
them can resume any stream. ``LoadServer`` starts one in a child process for the tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

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
    """nginx balancing gRPC over ``upstreams`` on a free loopback port (as in tests/test_cluster.py)."""

    def __init__(self, upstreams: list[str], workdir: Path) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        assert os.path.exists(binary), "nginx is required (.ci/run installs the Debian package)"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        servers = "\n".join(f"    server {u.split('://')[1]} max_fails=1 fail_timeout=10s;" for u in upstreams)
        temp = "\n".join(
            f"  {kind}_temp_path {workdir}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        config = workdir / "nginx.conf"
        config.write_text(
            f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temp}
  upstream replicas {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port} http2;
    client_max_body_size 0;
    grpc_read_timeout 3600s;
    grpc_send_timeout 3600s;
    grpc_next_upstream error timeout;
    location / {{ grpc_pass grpc://replicas; }}
  }}
}}
"""
        )
        self.proc = subprocess.Popen([binary, "-c", str(config), "-p", str(workdir)], stderr=subprocess.PIPE)
        self.location = f"grpc://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert self.proc.poll() is None, self.proc.stderr.read().decode() if self.proc.stderr else "nginx exited"
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


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
