"""nginx fronts on loopback for the tests and benchmarks: one configuration generator, one lifecycle.

:func:`grpc_front` balances gRPC (``grpc_pass``) over an upstream of replicas, as the cluster test,
the load test and ``benchmarks.cluster`` use it; :func:`tls_front` terminates mTLS in front of an
HTTP upstream (``proxy_pass``), as ``benchmarks.run`` uses it for vgi-rpc's HTTP transport. Each
writes a throw-away configuration (pid, error log and temp paths in its own directory, so it runs
unprivileged), starts ``nginx`` in the foreground, waits until the port accepts connections, yields
the front's URL, and stops nginx on exit, also when the body raises. The production configurations
are in ``deploy/nginx/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT = 10.0  # seconds for nginx to accept connections
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str:
    """The nginx executable, or a RuntimeError saying it is missing."""
    if not os.path.exists(NGINX):
        raise RuntimeError(f"nginx is required: not on PATH and no {NGINX} (.ci/run installs the Debian package)")
    return NGINX


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _address(url: str) -> str:
    """``host:port`` of ``grpc://host:port``, ``http://host:port`` or ``host:port``."""
    return url.split("://", 1)[-1]


def base_config(directory: Path, http_body: str, worker_connections: int = 1024) -> str:
    """A whole nginx.conf: one foreground worker, pid/log/temp files under ``directory``, ``http_body`` in ``http``."""
    temp = "\n".join(f"  {kind}_temp_path {directory}/{kind};" for kind in TEMP_KINDS)
    body = http_body.strip("\n")
    return f"""
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
{temp}
{body}
}}
"""


@contextlib.contextmanager
def _workdir(directory: str | Path | None) -> Iterator[Path]:
    """``directory`` as given, else a temporary one removed on exit."""
    if directory is not None:
        yield Path(directory)
        return
    with tempfile.TemporaryDirectory(prefix="vgi-bench-nginx-") as temporary:
        yield Path(temporary)


@contextlib.contextmanager
def _running(config: str, directory: Path, port: int, own_session: bool = False) -> Iterator[None]:
    """Run nginx with ``config`` until exit; yields once ``port`` accepts connections.

    ``own_session``: nginx gets its own process group, and is stopped with SIGKILL to the whole group
    (master and worker) instead of SIGTERM (a fast shutdown; SIGKILL after 10 s).
    """
    binary = nginx_binary()
    path = directory / "nginx.conf"
    path.write_text(config)
    proc = subprocess.Popen(
        [binary, "-c", str(path), "-p", str(directory)], stderr=subprocess.PIPE, start_new_session=own_session
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start listening on 127.0.0.1:{port} within {START_TIMEOUT:g} s")
            time.sleep(0.02)
        yield
    finally:
        if own_session:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # a no-op once it has been waited for
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@contextlib.contextmanager
def grpc_front(
    upstreams: Sequence[str],
    directory: str | Path | None = None,
    *,
    buffer: str | None = None,
    worker_connections: int = 1024,
) -> Iterator[str]:
    """nginx on a free loopback port balancing gRPC over ``upstreams``; yields its ``grpc://`` location.

    ``upstreams`` are ``host:port`` or ``grpc://host:port``; each gets ``max_fails=1 fail_timeout=10s``,
    and a call that cannot reach one is tried on the next (``grpc_next_upstream error timeout``).
    ``directory`` holds the configuration, pid, error log and temp files (default: a temporary one).
    ``buffer`` sets ``grpc_buffer_size`` (nginx's default is one memory page, 4 KiB here).
    """
    servers = "\n".join(f"    server {_address(u)} max_fails=1 fail_timeout=10s;" for u in upstreams)
    buffering = f"\n    grpc_buffer_size {buffer};" if buffer else ""
    with _workdir(directory) as workdir:
        port = free_port()
        body = f"""
  upstream replicas {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port} http2;
    client_max_body_size 0;
    grpc_read_timeout 3600s;
    grpc_send_timeout 3600s;
    grpc_next_upstream error timeout;{buffering}
    location / {{ grpc_pass grpc://replicas; }}
  }}
"""
        with _running(base_config(workdir, body, worker_connections), workdir, port):
            yield f"grpc://127.0.0.1:{port}"


@contextlib.contextmanager
def tls_front(upstream: str, certs: str | Path) -> Iterator[str]:
    """nginx on a free loopback port terminating mTLS in front of ``upstream`` (an http:// URL); yields its https URL.

    ``certs`` holds ``server.pem``, ``server.key`` and ``ca.pem`` (client certificates are verified
    against it). Keep-alive connections to the upstream, no buffering either way; nginx runs in its
    own process group and is killed with it.
    """
    with _workdir(None) as workdir:
        port = free_port()
        body = f"""
  upstream vgirpc {{
    server {_address(upstream)};
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {certs}/server.pem;
    ssl_certificate_key {certs}/server.key;
    ssl_client_certificate {certs}/ca.pem;
    ssl_verify_client on;
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout 3600s;
    proxy_send_timeout 3600s;
    location / {{ proxy_pass http://vgirpc; }}
  }}
"""
        with _running(base_config(workdir, body), workdir, port, own_session=True):
            yield f"https://127.0.0.1:{port}"
