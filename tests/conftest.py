"""Shared test helpers: the fixture project and a way to run bake.py as a user does."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
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


def bake(project: Path, *args: str, timeout: float = 600) -> Outcome:
    """Run bake.py as a user would (a real process), against a project."""
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
