"""tree_digest sees what a role really ships: symlinked directories and payload directories named like tests."""

import os
from pathlib import Path

import pytest

from bakery.provenance import tree_digest

pytestmark = pytest.mark.unit


def make_role(root: Path) -> Path:
    (root / "tasks").mkdir(parents=True)
    (root / "tasks" / "main.yml").write_text("- debug: {msg: hi}\n")
    return root


@pytest.mark.parametrize("everything", [False, True])
def test_a_symlinked_directory_counts_by_its_target(tmp_path, everything):
    role = make_role(tmp_path / "role")
    (role / "plugins").mkdir()
    for target in ("one", "two"):
        (tmp_path / target).mkdir()
        (tmp_path / target / "thing.py").write_text(f"# {target}\n")
    before = tree_digest(role, everything=everything)
    os.symlink(tmp_path / "one", role / "plugins" / "action")
    linked = tree_digest(role, everything=everything)
    assert linked != before
    (role / "plugins" / "action").unlink()
    os.symlink(tmp_path / "two", role / "plugins" / "action")
    assert tree_digest(role, everything=everything) not in (before, linked)


@pytest.mark.parametrize("payload", ["files/tests/payload", "templates/molecule/x.j2", "tasks/tests/check.yml"])
@pytest.mark.parametrize("everything", [False, True])
def test_tests_and_molecule_below_the_top_level_are_payload(tmp_path, payload, everything):
    role = make_role(tmp_path / "role")
    (role / payload).parent.mkdir(parents=True, exist_ok=True)
    (role / payload).write_text("v1\n")
    before = tree_digest(role, everything=everything)
    (role / payload).write_text("v2\n")
    assert tree_digest(role, everything=everything) != before


def test_top_level_tests_molecule_and_caches_anywhere_stay_out_of_a_layer_key(tmp_path):
    role = make_role(tmp_path / "role")
    before = tree_digest(role)
    for path in ("tests/test.yml", "molecule/default/molecule.yml", "files/__pycache__/x.pyc",
                 "files/.cache/x", "files/sub/.git/HEAD", "files/.pytest_cache/x"):
        (role / path).parent.mkdir(parents=True, exist_ok=True)
        (role / path).write_text("anything\n")
    assert tree_digest(role) == before
    assert tree_digest(role, everything=True) != before  # the lock pins the role's own tests
