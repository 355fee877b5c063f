"""The benchmark's allocator setting: held in the process that asks and in the children it starts."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.allocator import ENVIRONMENT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = """
import os, subprocess, sys
from benchmarks.allocator import hold_thresholds
print(hold_thresholds())
child = "import os; print(os.environ.get('MALLOC_MMAP_THRESHOLD_'), os.environ.get('MALLOC_TRIM_THRESHOLD_'))"
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout.strip())
"""


def test_thresholds_are_held_here_and_in_children() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    env["PYTHONPATH"] = ROOT
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, env=env)
    report, inherited = result.stdout.splitlines()
    if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION"):
        assert report == "glibc malloc thresholds held: mmap 32 MiB, trim 256 MiB (every process)"
        assert inherited.split() == [ENVIRONMENT["MALLOC_MMAP_THRESHOLD_"], ENVIRONMENT["MALLOC_TRIM_THRESHOLD_"]]
    else:
        assert report.startswith("allocator defaults")
        assert inherited == "None None"
