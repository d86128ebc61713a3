"""A local environment's commands need a working podman: without one, status, down, rollback and config set exit 2
with the one line deploy, logs and top give, before the environment's lock (or anything else) is written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bakery.cli import main
from tests.unit.test_cli_contract import make_project, snapshot

pytestmark = pytest.mark.unit

BROKEN_PODMAN = """#!{python}
import sys
sys.stderr.write("Error: cannot connect to the podman socket\\n")
sys.exit(125)
"""


def project_with_broken_podman(tmp_path: Path, monkeypatch) -> Path:
    """A fresh project, and a `podman` first on PATH that fails every command as a dead podman service does."""
    root = make_project(tmp_path / "p")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "podman"
    fake.write_text(BROKEN_PODMAN.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("BAKERY_PROJECT", raising=False)
    return root


@pytest.mark.parametrize("args", [
    ["status", "--env", "qa"],
    ["down", "--env", "qa"],
    ["rollback", "--env", "qa"],
    ["config", "set", "--env", "qa", "LOG_LEVEL=debug"],
], ids=lambda args: " ".join(args[:2]))
def test_a_broken_podman_is_exit_2_and_a_fresh_checkout_stays_as_it_was(tmp_path: Path, monkeypatch, capsys, args):
    root = project_with_broken_podman(tmp_path, monkeypatch)
    before = snapshot(root)

    rc = main(["--project", str(root), *args])

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "podman is not working" in lines[0], err
    assert snapshot(root) == before


def test_a_bake_with_a_broken_podman_is_the_same_one_line_exit_2(tmp_path: Path, monkeypatch, capsys):
    """build asks podman for its leftovers and base before check_working (a no-change rebake skips it): a podman
    that fails there still gets check_working's line, not the failed command's."""
    root = project_with_broken_podman(tmp_path, monkeypatch)

    rc = main(["--project", str(root), "build", "webapp"])

    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "podman is not working" in lines[0], lines


def test_a_bake_does_not_load_the_secret_scanners_before_it_needs_them():
    """A no-change rebake must stay under a second: importing the builder may not pull in detect-secrets (0.3 s)."""
    import subprocess

    code = "import sys, bakery.builders.podman; print(sorted(m for m in sys.modules if m.startswith('detect_secrets')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"
