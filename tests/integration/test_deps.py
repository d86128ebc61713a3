"""bake.py deps with the real ansible-galaxy, against offline fixtures: a Galaxy-style role (with a dependency on a
second one) in local git repositories and a collection tarball. No network: the sources are files under tmp_path,
and the second run must not even need those."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.conftest import FIXTURE_PROJECT, bake
from tests.galaxy_fixtures import collection_tarball, git_commit, git_head, git_role

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "project"
    shutil.copytree(FIXTURE_PROJECT, root)
    base = git_role(tmp_path, "base_motd")
    web = git_role(tmp_path, "web", depends_on="acme.base_motd")
    tarball = collection_tarball(tmp_path, "acme", "tools", "1.0.0")
    (root / "requirements.yml").write_text(yaml.safe_dump({
        "roles": [{"name": "acme.base_motd", "src": f"git+file://{base}", "version": "v1.0.0"},
                  {"name": "acme.web", "src": f"git+file://{web}", "version": "main"}],
        "collections": [{"name": "acme.tools", "source": str(tarball), "type": "file"}]}, sort_keys=False))
    return root, base, web, tarball


def lock(root):
    return yaml.safe_load((root / "requirements.lock").read_text())


def galaxy(root):
    return root / ".bakery" / "galaxy"


def test_install_lock_reuse_offline_check_tamper_update_and_remove(setup):
    root, base, web, tarball = setup
    out = bake(root, "deps")
    assert out.rc == 0, out.stderr
    locked = lock(root)
    assert locked["roles"]["acme.web"]["commit"] == git_head(web)
    assert locked["roles"]["acme.base_motd"]["version"] == "v1.0.0"
    assert locked["collections"]["acme.tools"]["version"] == "1.0.0"
    assert all(e["digest"].startswith("sha256:") for s in ("roles", "collections") for e in locked[s].values())
    assert (galaxy(root) / "roles/acme.web/templates/web.conf.j2").is_file()
    assert (galaxy(root) / "collections/ansible_collections/acme/tools/plugins/modules/answer.py").is_file()

    # Everything installed as locked: no ansible-galaxy, no source needed (moved away), lock untouched.
    lock_text = (root / "requirements.lock").read_text()
    hidden = base.parent.parent / "hidden"
    hidden.mkdir()
    for source in (base, web, tarball):
        source.rename(hidden / source.name)
    again = bake(root, "deps")
    assert again.rc == 0, again.stderr
    assert again.stdout.startswith("requirements: 3 installed as locked (3 unchanged)"), again.stdout
    assert (root / "requirements.lock").read_text() == lock_text
    assert bake(root, "deps", "--check").rc == 0
    for source in (base, web, tarball):
        (hidden / source.name).rename(source)

    # A tampered installed file: --check names it (exit 1), deps restores the locked content.
    (galaxy(root) / "roles/acme.web/templates/web.conf.j2").write_text("tampered\n")
    check = bake(root, "deps", "--check")
    assert check.rc == 1 and "installed role 'acme.web'" in check.stdout, check
    assert bake(root, "deps").rc == 0
    assert "tampered" not in (galaxy(root) / "roles/acme.web/templates/web.conf.j2").read_text()
    assert bake(root, "deps", "--check").rc == 0

    # A new commit upstream changes nothing until --update picks it up.
    new = git_commit(web, {"defaults/main.yml": "web_greeting: bonjour\n"}, "web: say bonjour")
    assert bake(root, "deps").rc == 0 and lock(root)["roles"]["acme.web"]["commit"] != new
    update = bake(root, "deps", "--update", "acme.web")
    assert update.rc == 0, update.stderr
    assert lock(root)["roles"]["acme.web"]["commit"] == new
    assert "bonjour" in (galaxy(root) / "roles/acme.web/defaults/main.yml").read_text()
    assert lock(root)["roles"]["acme.base_motd"] == locked["roles"]["acme.base_motd"]

    # A requirement removed from requirements.yml leaves the lock and .bakery/galaxy.
    reqs = yaml.safe_load((root / "requirements.yml").read_text())
    reqs["collections"] = []
    (root / "requirements.yml").write_text(yaml.safe_dump(reqs))
    assert bake(root, "deps").rc == 0
    assert lock(root)["collections"] == {}
    assert not (galaxy(root) / "collections/ansible_collections/acme").exists()


def test_a_new_collection_version_is_picked_up_by_update(setup, tmp_path):
    root, _base, _web, tarball = setup
    assert bake(root, "deps").rc == 0
    first = lock(root)["collections"]["acme.tools"]
    newer = collection_tarball(tmp_path, "acme", "tools", "1.1.0")
    (root / "requirements.yml").write_text((root / "requirements.yml").read_text().replace(str(tarball), str(newer)))
    check = bake(root, "deps", "--check")
    assert check.rc == 1 and "requirement 'acme.tools' in requirements.yml differs" in check.stdout
    assert bake(root, "deps").rc == 0
    second = lock(root)["collections"]["acme.tools"]
    assert second["version"] == "1.1.0" and second["digest"] != first["digest"]
    module = galaxy(root) / "collections/ansible_collections/acme/tools/plugins/modules/answer.py"
    assert "1.1.0" in module.read_text()


def test_a_failed_install_changes_nothing(setup):
    root, _base, web, _tarball = setup
    assert bake(root, "deps").rc == 0
    lock_text = (root / "requirements.lock").read_text()
    before = sorted(p.relative_to(root).as_posix() for p in galaxy(root).rglob("*"))
    (root / "requirements.yml").write_text((root / "requirements.yml").read_text().replace("version: main",
                                                                                          "version: no-such-tag"))
    out = bake(root, "deps")
    assert out.rc == 1 and "acme.web" in out.stderr and len(out.stderr.splitlines()) == 1, out
    assert (root / "requirements.lock").read_text() == lock_text
    assert sorted(p.relative_to(root).as_posix() for p in galaxy(root).rglob("*")) == before


def test_credentials_in_a_source_url_are_never_printed_or_locked(setup):
    root, _base, web, _tarball = setup
    (root / "requirements.yml").write_text(yaml.safe_dump({"roles": [
        {"name": "acme.web", "src": "git+https://deploy:s3cr3t@127.0.0.1:9/acme/web.git", "version": "main"}]}))
    out = bake(root, "deps")
    assert out.rc == 1 and "acme.web" in out.stderr and len(out.stderr.splitlines()) == 1, out
    assert "s3cr3t" not in out.stdout + out.stderr
    assert not (root / "requirements.lock").exists()


BAD = [
    ("roles: [acme.web\n", "malformed YAML"),
    ("roles:\n  - src: svn+https://example.com/r\n    version: '1'\n", "unknown source type 'svn'"),
    ("roles:\n  - src: git+file:///srv/web.git\n", "has no version"),
    ("roles:\n  - src: https://example.com/r\n    scm: hg\n    version: '1'\n", "unknown source type 'hg'"),
]


@pytest.mark.parametrize("text, fragment", BAD, ids=["malformed", "unknown-type", "git-no-version", "hg"])
def test_bad_requirements_are_one_line_exit_2_and_write_nothing(setup, text, fragment):
    root = setup[0]
    assert bake(root, "deps").rc == 0
    lock_text = (root / "requirements.lock").read_text()
    before = sorted(p.relative_to(root).as_posix() for p in galaxy(root).rglob("*"))
    (root / "requirements.yml").write_text(text)
    for args in (["deps"], ["deps", "--check"], ["deps", "--update", "acme.web"]):
        out = bake(root, *args)
        assert out.rc == 2 and out.stderr.count("\n") == 1 and fragment in out.stderr, (args, out)
    assert (root / "requirements.lock").read_text() == lock_text
    assert sorted(p.relative_to(root).as_posix() for p in galaxy(root).rglob("*")) == before


def test_bad_requirements_in_a_fresh_project_write_no_lock(setup):
    root = setup[0]
    (root / "requirements.yml").write_text(BAD[2][0])
    out = bake(root, "deps")
    assert out.rc == 2 and not (root / "requirements.lock").exists() and not galaxy(root).exists()


def test_without_requirements_check_names_an_unlocked_install_and_deps_removes_it(setup):
    root = setup[0]
    (root / "requirements.yml").unlink()
    stray = galaxy(root) / "roles/someone.else/tasks"
    stray.mkdir(parents=True)
    (stray / "main.yml").write_text("[]\n")
    check = bake(root, "deps", "--check")
    assert check.rc == 1 and "role 'someone.else' is installed in .bakery/galaxy/roles but not in " \
                             "requirements.lock; run: bake.py deps" in check.stdout, check
    out = bake(root, "deps")
    assert out.rc == 0 and not (galaxy(root) / "roles/someone.else").exists(), out
    assert bake(root, "deps", "--check").rc == 0


def test_a_token_in_a_tarball_url_is_never_printed(setup):
    root = setup[0]
    (root / "requirements.yml").write_text(yaml.safe_dump({"roles": [
        {"src": "http://127.0.0.1:9/roles/web.tar.gz?private_token=TOKEN456"}]}))
    out = bake(root, "deps")
    assert out.rc == 1 and "'web'" in out.stderr and len(out.stderr.splitlines()) == 1, out
    assert "TOKEN456" not in out.stdout + out.stderr and "--ignore-errors" not in out.stderr, out
    assert not (root / "requirements.lock").exists()
