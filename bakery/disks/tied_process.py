"""Start a child process that dies with bakery, so that a kill -9 of bakery leaves no qemu running.

Linux's PR_SET_PDEATHSIG (set in the child between fork and exec) sends the child SIGKILL when the thread that
started it ends, for whatever reason: start VMs from a thread that outlives them (bakery's main thread).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the child only calls into it


def _dies_with(parent: int) -> Callable[[], None]:
    def setup() -> None:
        if _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # bakery died between fork and prctl: nobody would stop this child
            os._exit(126)

    return setup


def start(argv: Sequence[str], cwd: Path, output: Path) -> subprocess.Popen[bytes]:
    """Run `argv` in `cwd` in its own session (a ^C reaches bakery, which stops the child in order), stdout and
    stderr to `output`."""
    with output.open("ab") as log:
        return subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, preexec_fn=_dies_with(os.getpid()))


def end(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL and reap (no zombie left for leftovers to mistake for a live qemu)."""
    if process.poll() is None:
        process.kill()
    process.wait()
