"""An image made of the project's own `base`, two community-style roles with namespaced names (one depending on the
other through meta/main.yml) and a collection role: installed offline from requirements.yml, locked, baked, verified,
re-baked from the cache, and re-baked only from the first affected layer when a locked version changes."""

from __future__ import annotations

import shutil

import pytest
import yaml

from bakery import podman
from tests.conftest import REPO, bake, git, init_repo
from tests.galaxy_fixtures import collection_tarball, git_role
from tests.integration.conftest import remove_images_of

pytestmark = pytest.mark.integration

IMAGE = "community"
PLAYBOOK = [{
    "name": "Bake an image of the project's base, community roles and a collection role",
    "hosts": "all",
    "become": True,
    "gather_facts": True,
    "roles": [
        {"role": "base"},
        {"role": "acme.web", "vars": {"web_greeting": "hello from the playbook"}, "tags": ["web"]},
        {"role": "acme.tools.motd", "when": "ansible_facts['os_family'] == 'Debian'"},
    ],
}]


@pytest.fixture
def community_project(tmp_path):
    root = tmp_path / "project"
    (root / "roles").mkdir(parents=True)
    (root / "playbooks").mkdir()
    shutil.copytree(REPO / "roles" / "base", root / "roles" / "base",
                    ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    for name in ("ansible.cfg", "verify-allowlist.yml"):
        shutil.copy(REPO / name, root / name)
    (root / "bakery.yml").write_text("default_base: bookworm\nimages:\n  community:\n    description: community\n")
    (root / "playbooks" / f"{IMAGE}.yml").write_text(yaml.safe_dump(PLAYBOOK, sort_keys=False))
    motd = git_role(tmp_path, "base_motd")
    web = git_role(tmp_path, "web", depends_on="acme.base_motd")
    tools = collection_tarball(tmp_path, "acme", "tools", "1.0.0")
    (root / "requirements.yml").write_text(yaml.safe_dump({
        "roles": [{"name": "acme.base_motd", "src": f"git+file://{motd}", "version": "v1.0.0"},
                  {"name": "acme.web", "src": f"git+file://{web}", "version": "main"}],
        "collections": [{"name": "acme.tools", "source": str(tools), "type": "file"}]}, sort_keys=False))
    (root / ".gitignore").write_text(".bakery/\n")
    assert bake(root, "deps").rc == 0
    init_repo(root, "community image")
    yield root, tools
    remove_images_of(IMAGE)


def ran_roles(result) -> list[str]:
    return [layer["role"] for layer in result["layers"] if not layer["cached"]]


def files_in(ref: str, *paths: str) -> dict[str, str]:
    script = "; ".join(f"echo '== {p}'; cat {p}" for p in paths)
    out = podman.run("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", ref, "-c", script).stdout
    parts = out.split("== ")[1:]
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts}


def test_community_roles_bake_verify_rebake_from_cache_and_from_the_first_affected_layer(community_project, tmp_path):
    root, _tools = community_project
    first = bake(root, "build", IMAGE, "--json", timeout=1200)
    assert first.rc == 0, first.stderr
    assert ran_roles(first.json) == ["base", "acme.web", "acme.tools.motd"]
    requirements = first.json["provenance"]["requirements"]
    assert set(requirements) == {"acme.base_motd", "acme.web", "acme.tools"}
    assert requirements["acme.tools"].startswith("1.0.0 ")

    files = files_in(first.json["ref"], "/etc/web.conf", "/var/lib/web.reloaded", "/etc/base_motd.conf",
                     "/etc/acme-tools.answer", "/etc/image-release")
    assert "greeting = hello from the playbook" in files["/etc/web.conf"]      # the entry's vars: reached the role
    assert files["/var/lib/web.reloaded"] == "reloaded\n"                       # its handler ran
    assert "greeting = hello" in files["/etc/base_motd.conf"]                   # its meta dependency ran
    assert files["/etc/acme-tools.answer"] == "answer from 1.0.0\n"             # the collection's module answered
    assert "acme.tools=1.0.0" in files["/etc/image-release"]

    verified = bake(root, "verify", IMAGE, timeout=1200)
    assert verified.rc == 0, verified.stdout + verified.stderr

    # a no-change rebake reuses the version (its time is measured in bench/, not here: a timed assertion fails on
    # a busy machine, e.g. beside make test's other integration worker)
    again = bake(root, "build", IMAGE, "--json")
    assert again.rc == 0 and again.json["reused"], again.stderr

    # A new version of the collection re-bakes its layer only: base and acme.web come from the cache.
    newer = collection_tarball(tmp_path, "acme", "tools", "1.1.0")
    requirements_file = root / "requirements.yml"
    requirements_file.write_text(requirements_file.read_text().replace(str(_tools), str(newer)))
    assert bake(root, "deps", "--update", "acme.tools").rc == 0
    git(root, "-c", "user.email=t@b", "-c", "user.name=t", "commit", "-qam", "acme.tools 1.1.0")
    bumped = bake(root, "build", IMAGE, "--json", timeout=1200)
    assert bumped.rc == 0, bumped.stderr
    assert ran_roles(bumped.json) == ["acme.tools.motd"]
    assert files_in(bumped.json["ref"], "/etc/acme-tools.answer")["/etc/acme-tools.answer"] == "answer from 1.1.0\n"

    # A tampered installed role stops the bake before anything runs, naming the role; no version is added.
    versions = bake(root, "images", "--json").stdout
    template = root / ".bakery" / "galaxy" / "roles" / "acme.web" / "templates" / "web.conf.j2"
    template.write_text(template.read_text() + "# changed by hand\n")
    tampered = bake(root, "build", IMAGE)
    assert tampered.rc == 2, tampered.stdout + tampered.stderr
    assert len(tampered.stderr.strip().splitlines()) == 1 and "acme.web" in tampered.stderr
    assert bake(root, "images", "--json").stdout == versions
    leftover = podman.run("ps", "-a", "--filter", f"label=io.bakery.image={IMAGE}", "--format", "{{.Names}}").stdout
    assert leftover.strip() == ""
