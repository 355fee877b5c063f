"""vgi-rpc, the third side of the benchmark: its Python 3.13 venv, its servers and its client workers.

vgi-rpc needs Python >= 3.13: :func:`vgirpc_python` finds a 3.13 interpreter (``python3.13`` on
PATH, else ``$(pyenv root)/versions/3.13*/bin/python3.13``), builds a venv under
``${VGI_BENCH_CACHE:-~/.cache/vgi-flight-bench}/vgirpc-venv`` with ``vgi-rpc[http]`` and pyarrow
(reused on later runs). Without one, the vgi-rpc cells read "skipped: no Python 3.13".

Every vgi-rpc transport is measured by one long-lived client worker (``benchmarks.vgirpc_workloads
client``) in that venv, connected once, like the vgi-flight and raw clients of ``benchmarks.run``;
:class:`VgiRpcSide` sends it one round of one workload at a time and waits for the samples, so
the sides never run at the same time. The unix and HTTP servers run in their own processes;
"subprocess" is spawned over stdin/stdout by the worker (once), and "pipe" serves on a thread of
the worker, which is what those transports are.

vgi-rpc's HTTP transport has no TLS of its own: it expects TLS from "the fronting server". With
mTLS, :func:`tls_front` (from :mod:`benchmarks.nginx`) puts nginx in front of it on loopback
(client certificates verified against the run's CA, keep-alive to the upstream, no buffering) and
the server requires a bearer token.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRANSPORTS = ("pipe", "subprocess", "unix", "http")
BEARER = "bench-bearer-token-" + "x" * 24
COMMAND_TIMEOUT = 600.0  # seconds for one round of one workload


# --- the vgi-rpc environment ---------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("VGI_BENCH_CACHE") or Path.home() / ".cache" / "vgi-flight-bench")


def python_version(exe: str) -> tuple[int, int] | None:
    """(major, minor) of an interpreter that actually runs (a pyenv shim may exist but fail)."""
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def find_python313() -> str | None:
    candidates = [shutil.which("python3.13")]
    pyenv_root = None
    if shutil.which("pyenv"):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
            pyenv_root = out.stdout.strip() or None
    for root in (pyenv_root, os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")):
        if root:
            candidates += sorted(glob.glob(os.path.join(root, "versions", "3.13*", "bin", "python3.13")), reverse=True)
    for exe in candidates:
        if exe and python_version(exe) == (3, 13):
            return exe
    return None


def venv_status(python: Path) -> tuple[bool, bool]:
    """Whether the venv's python imports vgi_rpc + pyarrow, and whether it also has the HTTP extras."""
    if not python.exists():
        return False, False
    base = subprocess.run([python, "-c", "import pyarrow, vgi_rpc"], capture_output=True, timeout=120)
    if base.returncode != 0:
        return False, False
    http = subprocess.run([python, "-c", "import vgi_rpc.http, waitress"], capture_output=True, timeout=120)
    return True, http.returncode == 0


def vgirpc_python() -> tuple[Path | None, str | None, bool]:
    """The venv python to run vgi-rpc with (None + the reason if unavailable), and whether HTTP works."""
    venv = cache_dir() / "vgirpc-venv"
    python = venv / "bin" / "python"
    ok, http = venv_status(python)
    if ok and http:
        return python, None, True
    py313 = find_python313()
    if py313 is None:
        return (python, None, False) if ok else (None, "skipped: no Python 3.13", False)
    print(f"building {venv} with {py313} (pip install vgi-rpc[http] pyarrow) ...", file=sys.stderr, flush=True)
    try:
        if not python.exists():
            subprocess.run([py313, "-m", "venv", str(venv)], check=True, timeout=300)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if subprocess.run([*pip, "vgi-rpc[http]", "pyarrow"], timeout=900).returncode != 0:
            subprocess.run([*pip, "vgi-rpc", "pyarrow"], timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"building the vgi-rpc venv failed: {exc}", file=sys.stderr)
    ok, http = venv_status(python)
    if not ok:
        return None, "skipped: pip install vgi-rpc failed", False
    return python, None, http


# --- child processes -----------------------------------------------------------------------------


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """Kill a child started with start_new_session=True and everything it spawned."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def workload_command(python: Path, *args: str) -> list[str]:
    return [str(python), "-m", "benchmarks.vgirpc_workloads", *args]


@contextlib.contextmanager
def vgirpc_server(python: Path, mode: str, address: str | None = None, bearer: str | None = None) -> Iterator[str]:
    """A vgi-rpc server (unix or http) in its own process group; yields its address."""
    args = workload_command(python, "serve", mode, *([address] if address else []))
    args += ["--bearer", bearer] if bearer else []
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"vgi-rpc {mode} server exited with {proc.wait()}")
        if mode == "http":
            if not line.startswith("PORT:"):
                raise RuntimeError(f"vgi-rpc http server printed {line!r}")
            yield f"http://127.0.0.1:{int(line[5:])}"
        else:
            yield line
    finally:
        kill_group(proc)


# --- the client workers --------------------------------------------------------------------------


class VgiRpcSide:
    """One vgi-rpc client worker connected over one transport; measures one round at a time."""

    def __init__(
        self, python: Path, transport: str, address: str | None, tls: str | None = None, bearer: str | None = None
    ) -> None:
        self.name = f"vgi-rpc {transport}"
        args = workload_command(python, "client", "--transport", transport)
        args += ["--address", address] if address else []
        args += ["--tls", tls] if tls else []
        args += ["--bearer", bearer] if bearer else []
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.versions: dict[str, str] = self._reply()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr = [*self.stderr[-20:], line.rstrip()]

    def _reply(self) -> Any:
        assert self.proc.stdout is not None
        timer = threading.Timer(COMMAND_TIMEOUT, lambda: kill_group(self.proc))
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            self.proc.wait()
            tail = self.stderr[-1] if self.stderr else "(no stderr)"
            raise RuntimeError(f"{self.name} worker exited with {self.proc.returncode}: {tail}")
        return json.loads(line)

    def sample(self, workload: str, count: int, warmup: int, sizes: dict[str, int]) -> list[float]:
        assert self.proc.stdin is not None
        command = {"workload": workload, "count": count, "warmup": warmup, "sizes": sizes}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        if "error" in reply:
            raise RuntimeError(f"{self.name} {workload}: {reply['error']}")
        return [float(s) for s in reply["samples"]]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        kill_group(self.proc)  # also any "subprocess" server it spawned
