"""One testinfra run of verify, started in the background so that the checks that need no instance go on meanwhile.

The run is a pytest process writing to anonymous files (a pipe would fill and stall it while nobody reads);
finish() waits for it and makes the `testinfra` check exactly as a run in the foreground did: testinfra.log,
pass or fail, pytest's summary line and the failing tests' names. Its podman:// and ssh:// hosts run their commands
over one exec session per instance (testinfra_plugin/bakery_exec_session.py).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bakery.verify import junit

TIMEOUT = 1800.0
PLUGIN_DIR = Path(__file__).resolve().parent / "testinfra_plugin"
PLUGIN = "bakery_exec_session"


def command(ini: Path, root: Path, hosts: tuple[str, ...], report: Path, suite: str, files: list[Path]) -> list[str]:
    """pytest over `files` against `hosts`, one JUnit report, the exec session plugin loaded."""
    return [sys.executable, "-m", "pytest", "-c", str(ini), "--rootdir", str(root), "--import-mode=importlib",
            "-p", PLUGIN, *hosts, f"--junitxml={report}", "-o", f"junit_suite_name={suite}", "-q", *map(str, files)]


def environment(extra: dict[str, str]) -> dict[str, str]:
    """This environment (without pytest's own variables) plus `extra`, the venv's bin on PATH and only the plugin's
    directory added to imports."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    python_path = os.pathsep.join(p for p in (str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")) if p)
    # the caller's own pytest settings are not the gate's (PYTEST_ADDOPTS with an `-n` would spread the suites,
    # which share one instance, over workers; a caller that is itself a pytest run sets PYTEST_XDIST_WORKER, ...)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return {**inherited, **extra, "PATH": path, "PYTHONPATH": python_path}


@dataclass
class TestinfraRun:
    """A pytest process under way; finish() turns it into the `testinfra` check."""

    __test__ = False  # not a pytest test class

    proc: subprocess.Popen
    stdout: IO[bytes]
    stderr: IO[bytes]
    started: float
    root: Path
    files: list[Path]
    log: Path
    ended: float = 0.0
    waiter: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        # Notes when the run ended, so that its seconds do not count the wait for the checks that ran beside it.
        self.waiter = threading.Thread(target=self._wait, daemon=True)
        self.waiter.start()

    def _wait(self) -> None:
        self.proc.wait()
        self.ended = time.monotonic()

    def finish(self, timeout: float = TIMEOUT) -> junit.Check:
        self.waiter.join(timeout=max(timeout - (time.monotonic() - self.started), 1))
        if self.waiter.is_alive():
            self.stop()
            raise subprocess.TimeoutExpired(self.proc.args, timeout)
        out, err = _text(self.stdout), _text(self.stderr)
        self.stop()
        self.log.write_text(out + err, encoding="utf-8")
        lines = [line for line in out.splitlines() if line.strip()]
        tail = lines[-1] if lines else err.strip()[-300:]
        seconds = self.ended - self.started
        if self.proc.returncode == 0:
            rel = [str(f.relative_to(self.root)) for f in self.files]
            return junit.Check("testinfra", True, seconds, output=f"{tail} ({', '.join(rel)})")
        failing = [line.split(" - ")[0].removeprefix("FAILED ") for line in lines if line.startswith("FAILED ")]
        message = f"{tail}" + (f": {', '.join(failing[:5])}" if failing else "")
        return junit.Check("testinfra", False, seconds, message, out[-20000:])

    def stop(self) -> None:
        """Kill the run if it is still going (verify was cancelled or failed); its output files go with it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stdout.close()
        self.stderr.close()


def start(cmd: list[str], env: dict[str, str], root: Path, files: list[Path], log: Path) -> TestinfraRun:
    stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, cwd=root)
    return TestinfraRun(proc, stdout, stderr, started, root, files, log)


def _text(output: IO[bytes]) -> str:
    """Decoded as subprocess.run(text=True) decodes: the locale's encoding, universal newlines."""
    output.seek(0)
    wrapper = io.TextIOWrapper(output)
    text = wrapper.read()
    wrapper.detach()
    return text
