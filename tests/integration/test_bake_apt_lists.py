"""Package lists while baking: every layer finds fresh apt lists, and no layer commits any.

A community role installs a package without refreshing the lists (a normal Debian server has them), after a
role that deleted them the way this repository's roles do in their handlers. The bake mounts per-bake lists
and package cache directories into the build container, so the install works and nothing apt downloaded ends
up in a committed layer.
"""

from __future__ import annotations

import pytest

from bakery import podman
from tests.conftest import bake, git
from tests.integration.conftest import remove_images_of

pytestmark = pytest.mark.integration

IMAGE = "aptlists"
PLAYBOOK = """---
- name: Bake an image whose last role installs a package without refreshing the lists
  hosts: all
  become: true
  gather_facts: false
  roles:
    - emptier
    - thirdparty_pkg
"""
EMPTIER = """---
- name: Remove apt package lists and downloaded packages (what this repository's handlers do)
  ansible.builtin.command: find /var/lib/apt/lists /var/cache/apt -type f ! -name lock -delete
  changed_when: true
"""
INSTALLER = """---
- name: Install a package the way most community roles do (no cache refresh)
  ansible.builtin.apt:
    name: tree
    state: present
"""
# Anything under the apt lists or the package cache other than the lock files and the empty partial/ dirs.
LEFTOVERS = ("find /var/lib/apt/lists /var/cache/apt -mindepth 1 ! -name lock ! -name partial "
             "! -path /var/cache/apt/archives")


@pytest.fixture
def apt_project(project):
    for role, text in (("emptier", EMPTIER), ("thirdparty_pkg", INSTALLER)):
        (project / "roles" / role / "tasks").mkdir(parents=True)
        (project / "roles" / role / "tasks" / "main.yml").write_text(text, encoding="utf-8")
    (project / "playbooks" / f"{IMAGE}.yml").write_text(PLAYBOOK, encoding="utf-8")
    git(project, "add", "-A")
    git(project, "-c", "user.email=test@bakery", "-c", "user.name=bakery tests", "commit", "-q", "-m", "apt roles")
    yield project
    remove_images_of(IMAGE)


def test_role_installs_without_update_cache_and_no_layer_keeps_apt_files(apt_project):
    out = bake(apt_project, "build", IMAGE, "--json", "--no-cache")
    assert out.rc == 0, out.stderr
    result = out.json
    assert [layer["role"] for layer in result["layers"] if not layer["cached"]] == ["emptier", "thirdparty_pkg"]

    committed = [podman.cache_ref(IMAGE, layer["role"], layer["key"]) for layer in result["layers"]]
    committed.append(result["ref"])
    for ref in committed:
        left = podman.run("run", "--rm", "--network=none", ref, "sh", "-c", LEFTOVERS).stdout.split()
        assert left == [], f"{ref} committed apt files: {left[:10]}"
    assert podman.run("run", "--rm", "--network=none", result["ref"], "tree", "--version").returncode == 0

    run_dir = apt_project / ".bakery" / "runs" / result["run_id"]
    assert not (run_dir / "apt").exists(), "the per-bake apt directories are removed after the bake"
