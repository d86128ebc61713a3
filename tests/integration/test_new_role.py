"""A scaffolded role passes the linters and its own Molecule scenario as made (what a new user does first)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, bake

pytestmark = pytest.mark.integration


def test_new_role_passes_lint_and_molecule(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("bakery.yml", "ansible.cfg", ".yamllint", ".ansible-lint"):
        shutil.copy(REPO / name, project / name)
    (project / "roles").mkdir()
    out = bake(project, "new-role", "demo")
    assert out.rc == 0, out.stderr
    assert "cd roles/demo && molecule test" in out.stdout
    again = bake(project, "new-role", "demo")
    assert again.rc == 2 and "already exists" in again.stderr

    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "NO_COLOR": "1"}
    lint = subprocess.run([str(venv_bin / "ansible-lint"), "--nocolor", "--profile", "production", "roles/demo"],
                          cwd=project, env=env, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    yamllint = subprocess.run([str(venv_bin / "yamllint"), "-s", "roles/demo"], cwd=project, env=env,
                              capture_output=True, text=True, check=False)
    assert yamllint.returncode == 0, yamllint.stdout

    molecule = subprocess.run([str(venv_bin / "molecule"), "test"], cwd=project / "roles" / "demo", env=env,
                              capture_output=True, text=True, check=False, timeout=900)
    assert molecule.returncode == 0, molecule.stdout[-4000:] + molecule.stderr[-4000:]
    assert "1 passed" in molecule.stdout + molecule.stderr
