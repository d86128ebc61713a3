"""Every role's Molecule scenario (create, converge, idempotence, verify, destroy) passes, run as `make molecule`
runs it (scripts/molecule-all.sh). It is a test here so that `make test` runs it in the integration worker that
is otherwise idle once the VM modules are done (see conftest.py)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_every_role_passes_its_molecule_scenario():
    # the scenarios' testinfra is a pytest of its own: nothing of this session's (xdist worker, options) reaches it
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run([str(REPO / "scripts" / "molecule-all.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=3600, check=False)
    print(proc.stdout)  # one line per role with its time (shown with -rA or on failure)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    roles = sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/molecule/default"))
    assert sorted(line.split()[1] for line in proc.stdout.splitlines() if " passed in " in line) == roles
