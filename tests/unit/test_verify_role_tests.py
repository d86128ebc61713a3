"""verify runs a project role's Molecule tests always, a third-party role's only when the image asks for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bakery.config import Project
from bakery.deps.digest import installed_digest
from bakery.deps.lock import Lock, write_lock
from bakery.errors import ConfigError
from bakery.verify.runner import Verifier

pytestmark = pytest.mark.unit

PLAYBOOK = """---
- name: Web
  hosts: all
  become: true
  roles:
    - mine
    - author.web
"""


def write(path: Path, text: str = "def test_it():\n    pass\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_project(root: Path, role_tests: list[str] | None) -> Project:
    verify = f"\n    verify:\n      role_tests: [{', '.join(role_tests)}]" if role_tests is not None else ""
    write(root / "bakery.yml", f"default_base: bookworm\nimages:\n  web:\n    description: web{verify}\n")
    write(root / "playbooks" / "web.yml", PLAYBOOK)
    write(root / "roles" / "mine" / "tasks" / "main.yml", "---\n[]\n")
    galaxy = root / ".bakery" / "galaxy" / "roles"
    write(galaxy / "author.web" / "tasks" / "main.yml", "---\n[]\n")
    write(galaxy / "author.web" / "meta" / "main.yml",
          "galaxy_info: {author: author, role_name: web}\ndependencies: [author.dep]\n")
    write(galaxy / "author.dep" / "tasks" / "main.yml", "---\n[]\n")
    write(galaxy / "author.dep" / "meta" / "main.yml", "galaxy_info: {author: author, role_name: dep}\n")
    lock(root)
    return Project(root)


def lock(root: Path) -> None:
    """requirements.yml and requirements.lock as `bake.py deps` leaves them for what is installed."""
    galaxy = root / ".bakery" / "galaxy" / "roles"
    write(root / "requirements.yml", "roles:\n" + "".join(
        f"  - name: author.{n}\n    src: git+file:///srv/{n}.git\n    version: v1\n" for n in ("web", "dep")))
    write_lock(root, Lock(roles={f"author.{n}": {"src": f"git+file:///srv/{n}.git", "version": "v1",
                                                 "commit": "0" * 40, "digest": installed_digest(galaxy / f"author.{n}")}
                                 for n in ("web", "dep")}, collections={}))


@pytest.fixture
def tests_on_disk(tmp_path):
    root = tmp_path / "project"
    galaxy = root / ".bakery" / "galaxy" / "roles"
    return root, {
        "mine": write(root / "roles" / "mine" / "molecule" / "default" / "tests" / "test_mine.py"),
        "mine-other": write(root / "roles" / "mine" / "molecule" / "other" / "tests" / "test_mine_other.py"),
        "web-default": write(galaxy / "author.web" / "molecule" / "default" / "tests" / "test_web.py"),
        "web-docker": write(galaxy / "author.web" / "molecule" / "docker" / "tests" / "test_web_docker.py"),
        "web-helper": write(galaxy / "author.web" / "molecule" / "default" / "tests" / "conftest.py"),
        "dep": write(galaxy / "author.dep" / "molecule" / "default" / "tests" / "test_dep.py"),
        "suite": write(root / "tests" / "images" / "test_web.py"),
    }


def files_for(project: Project) -> list[Path]:
    record = {"layers": [{"role": "mine"}, {"role": "author.web"}]}
    files, _notes = Verifier(project, None, None, None).test_files("web", record)  # type: ignore[arg-type]
    return files


def test_third_party_tests_are_not_run_unless_asked(tests_on_disk):
    root, on_disk = tests_on_disk
    assert files_for(make_project(root, None)) == [on_disk["suite"], on_disk["mine"]]


def test_a_named_third_party_role_runs_every_scenario_of_its_tests(tests_on_disk):
    root, on_disk = tests_on_disk
    files = files_for(make_project(root, ["author.web"]))
    assert files == [on_disk["suite"], on_disk["mine"], on_disk["web-default"], on_disk["web-docker"]]


def test_a_dependency_of_a_layer_role_can_be_named(tests_on_disk):
    root, on_disk = tests_on_disk
    files = files_for(make_project(root, ["author.dep"]))
    assert files == [on_disk["suite"], on_disk["mine"], on_disk["dep"]]


def test_a_third_party_test_edited_after_deps_stops_verify(tests_on_disk):
    root, on_disk = tests_on_disk
    project = make_project(root, ["author.web"])
    on_disk["web-default"].write_text("def test_it():\n    assert True  # weakened by hand\n")
    with pytest.raises(ConfigError, match="author.web"):
        files_for(project)
