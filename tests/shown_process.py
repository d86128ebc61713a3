"""Start a process for a test that looks for it by its command line in /proc."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def start_shown(argv: list[str], timeout: float = 10.0, **popen_args) -> subprocess.Popen:
    """Popen, returned once /proc shows the new command line.

    Popen returns when the child's exec has closed its descriptors, and the kernel sets the new command line
    only after that: read at once on a busy host it is often empty (215 of 400 tries with two cores busy; CI
    once found no process at all)."""
    proc = subprocess.Popen(argv, **popen_args)
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    wanted = b"\0".join(arg.encode() for arg in argv) + b"\0"
    deadline = time.monotonic() + timeout
    while cmdline.read_bytes() != wanted:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"process {proc.pid} never showed the command line {argv}")
        time.sleep(0.01)
    return proc
