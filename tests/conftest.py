"""Shared test helpers: the fixture project and a way to run bake.py as a user does."""

from __future__ import annotations

import contextlib
import fcntl
import json
import random
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE_PROJECT = REPO / "tests" / "fixtures" / "project"
BAKE = REPO / "bake.py"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout.strip()


def init_repo(path: Path, message: str = "Initial commit of the test project") -> str:
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "-c", "user.email=test@bakery", "-c", "user.name=bakery tests", "commit", "-q", "-m", message)
    return git(path, "rev-parse", "HEAD")


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A fresh copy of the fixture project (no git repository: for tests that only read it)."""
    root = tmp_path / "project"
    shutil.copytree(FIXTURE_PROJECT, root)
    return root


@pytest.fixture
def project(proj: Path) -> Path:
    """A fresh copy of the fixture project, committed to its own git repository."""
    init_repo(proj)
    return proj


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout)


_EXCLUSIVE: set[str] = set()  # machine locks this process holds exclusively


@contextlib.contextmanager
def machine_lock(name: str, shared: bool = False) -> Iterator[None]:
    """An flock every pytest process on this machine takes for `name` (make test's two integration workers).
    Inside an exclusive hold, this process's own shared takes pass through: they are what the hold waits for."""
    if name in _EXCLUSIVE:
        yield
        return
    path = REPO / ".bakery" / "tmp" / f"tests-{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        if not shared:
            _EXCLUSIVE.add(name)
        try:
            yield
        finally:
            _EXCLUSIVE.discard(name)


# Every build (and pipeline) and gc removes the build containers of any dead bake on the machine. They take the
# "leftovers" lock shared; a test that leaves a dead bake's container on purpose holds it exclusively meanwhile.
LEFTOVER_CLEANERS = frozenset({"build", "pipeline", "gc"})


def bake(project: Path, *args: str, timeout: float = 600) -> Outcome:
    """Run bake.py as a user would (a real process), against a project."""
    cleans = bool(args) and args[0] in LEFTOVER_CLEANERS
    with machine_lock("leftovers", shared=True) if cleans else contextlib.nullcontext():
        proc = subprocess.run([sys.executable, str(BAKE), "--project", str(project), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def free_port() -> int:
    """A free loopback port in 19000-19999 (the range these tests may use)."""
    for port in random.sample(range(19000, 20000), 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 19000-19999")
