"""Installed requirements in an image's record (label, /etc/image-release, AMI tag), the paths every bake uses,
the tests a Packer bake runs and what the Image Builder bundle ships."""

import io
import os
import re
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from bakery import role_paths
from bakery.ansible import ansible_env
from bakery.aws import tags
from bakery.aws.bundle import build_bundle, bundle_sources
from bakery.builders.packer_bake import PackerBake
from bakery.config import Project
from bakery.layers import plan_layers
from bakery.provenance import Provenance, parse_release_file, parse_requirements, tree_digest
from tests.unit.test_role_paths import collection_role, galaxy_role, installed_collection_role, playbook, role

pytestmark = pytest.mark.unit

D1, D2 = "sha256:" + "a" * 64, "sha256:" + "b" * 64
REQUIREMENTS = {"author.web": f"1.4.0@0123456789ab {D1}", "acme.tools": f"2.0.1 {D2}"}


def provenance(**overrides) -> Provenance:
    fields = dict(image="webapp", version="20261128.001", git_commit="abc123", git_message="Fix it",
                  git_branch="main", git_dirty=False, build_time="2026-11-28T00:00:00Z", base_image="b:1",
                  base_digest="sha256:aa", input_digest="sha256:bb", bakery_version="0.1.0",
                  roles={"base": "sha256:cc"})
    fields.update(overrides)
    return Provenance(**fields)


def test_the_install_date_ansible_galaxy_records_does_not_change_a_roles_digest(tmp_path):
    path = galaxy_role(tmp_path, "author.web", deps=[])
    (path / "meta" / ".galaxy_install_info").write_text("install_date: 'Mon Nov 30 10:00:00 2026'\nversion: 1.4.0\n")
    before = tree_digest(path)
    (path / "meta" / ".galaxy_install_info").write_text("install_date: 'Tue Dec  1 11:00:00 2026'\nversion: 1.4.0\n")
    assert tree_digest(path) == before
    (path / "tasks" / "main.yml").write_text("---\n- ansible.builtin.debug: {msg: tampered}\n")
    assert tree_digest(path) != before
    (path / ".galaxy_install_info").write_text("only meta/.galaxy_install_info is left out\n")
    (path / "tasks" / "main.yml").write_text("---\n- ansible.builtin.debug: {msg: hi}\n")
    assert tree_digest(path) != before


def test_requirements_go_into_the_label_and_the_release_file_and_come_back():
    p = provenance(requirements=REQUIREMENTS)
    label = p.labels()["io.bakery.requirements"]
    assert label == f"author.web=1.4.0@0123456789ab {D1} acme.tools=2.0.1 {D2}"
    facts = parse_release_file(p.release_file())
    assert facts["REQUIREMENTS"] == label
    assert parse_requirements(facts["REQUIREMENTS"]) == REQUIREMENTS
    assert p.to_dict()["requirements"] == REQUIREMENTS


def test_an_image_without_requirements_records_none():
    p = provenance()
    assert p.requirements == {} and p.labels()["io.bakery.requirements"] == ""
    assert parse_release_file(p.release_file())["REQUIREMENTS"] == ""
    assert tags.REQUIREMENTS not in tags.provenance_tags(p)  # no tag spent on nothing


def test_the_ami_tag_has_names_and_versions_sanitised_and_cut_at_a_whole_entry():
    value = tags.provenance_tags(provenance(requirements=REQUIREMENTS))[tags.REQUIREMENTS]
    assert value == "author.web=1.4.0@0123456789ab acme.tools=2.0.1"
    odd = {"author.web": f"1.0~rc<1> {D1}"}
    assert tags.provenance_tags(provenance(requirements=odd))[tags.REQUIREMENTS] == "author.web=1.0rc1"
    many = {f"author.role_{i:03}": f"10.20.30 {D1}" for i in range(40)}
    value = tags.provenance_tags(provenance(requirements=many))[tags.REQUIREMENTS]
    assert len(value) <= 255 and re.fullmatch(r"[\w .:/=+\-@]*", value)
    assert all(re.fullmatch(r"author\.role_\d{3}=10\.20\.30", word) for word in value.split())


def test_every_bake_finds_installed_roles_after_the_projects_and_installed_collections(tmp_path):
    env = ansible_env(tmp_path)
    assert env["ANSIBLE_ROLES_PATH"].split(os.pathsep) == [str(tmp_path / "roles"),
                                                           str(tmp_path / ".bakery/galaxy/roles")]
    assert env["ANSIBLE_COLLECTIONS_PATH"].split(os.pathsep) == [str(tmp_path / ".bakery/galaxy/collections")]


def packer_test_files(proj: Path) -> list[str]:
    project = Project(proj)
    definition = project.image("img")
    bake = PackerBake.__new__(PackerBake)
    bake.b = SimpleNamespace(project=project)
    bake.definition = definition
    bake.plan = SimpleNamespace(planned=plan_layers(definition, "sha256:base", {}, collections={}))
    return [f.relative_to(project.root).as_posix() for f in bake.test_files()]


def molecule_test(role_dir: Path, scenario: str = "default") -> None:
    (role_dir / "molecule" / scenario / "tests").mkdir(parents=True)
    (role_dir / "molecule" / scenario / "tests" / "test_role.py").write_text("def test_it(host):\n    pass\n")


def test_packer_runs_a_third_party_roles_own_tests_only_when_role_tests_names_it(proj):
    molecule_test(proj / "roles" / "first")
    molecule_test(galaxy_role(proj, "author.web", deps=["author.common"]), "docker")
    molecule_test(galaxy_role(proj, "author.common"))
    playbook(proj, "    - first\n    - author.web\n")
    assert packer_test_files(proj) == ["roles/first/molecule/default/tests/test_role.py"]
    (proj / "bakery.yml").write_text("images:\n  img:\n    verify: {role_tests: [author.common, author.web]}\n")
    assert packer_test_files(proj) == ["roles/first/molecule/default/tests/test_role.py",
                                       ".bakery/galaxy/roles/author.common/molecule/default/tests/test_role.py",
                                       ".bakery/galaxy/roles/author.web/molecule/docker/tests/test_role.py"]


def test_the_bundle_ships_installed_roles_and_the_collections_the_layers_use(proj, monkeypatch, tmp_path):
    bundled = tmp_path / "site-packages"
    collection_role(bundled, "community.sops.install")
    monkeypatch.setattr(role_paths, "bundled_collection_roots", lambda: (bundled / "ansible_collections",))
    web = galaxy_role(proj, "author.web", deps=["acme.tools.thing"])
    (web / "meta" / ".galaxy_install_info").write_text("install_date: today\n")
    installed_collection_role(proj, "acme.tools.thing")
    plugins = proj / ".bakery/galaxy/collections/ansible_collections/acme/tools/plugins/modules"
    plugins.mkdir(parents=True)
    (plugins / "gadget.py").write_text("# a module\n")
    installed_collection_role(proj, "other.unused.r")
    role(proj / "roles" / "uses_locked", tasks="- lockedns.coll.mod: {}\n")
    lockedns = proj / ".bakery/galaxy/collections/ansible_collections/lockedns/coll"
    (lockedns / "plugins" / "modules").mkdir(parents=True)
    (lockedns / "plugins" / "modules" / "mod.py").write_text("# locked module\n")
    (proj / "requirements.lock").write_text(
        f"format: 1\nroles: {{}}\ncollections:\n  lockedns.coll: {{type: galaxy, version: 1.0.0, digest: '{D1}'}}\n")
    playbook(proj, "    - first\n    - author.web\n    - community.sops.install\n    - uses_locked\n")
    project = Project(proj)
    names = set(bundle_sources(project, project.image("img")))
    assert {"roles/first/tasks/main.yml", "roles/author.web/tasks/main.yml", "roles/author.web/meta/main.yml",
            "roles/uses_locked/tasks/main.yml",
            "collections/ansible_collections/acme/tools/roles/thing/tasks/main.yml",
            "collections/ansible_collections/acme/tools/plugins/modules/gadget.py",
            "collections/ansible_collections/acme/tools/MANIFEST.json",
            "collections/ansible_collections/community/sops/roles/install/tasks/main.yml",
            "collections/ansible_collections/lockedns/coll/plugins/modules/mod.py"} <= names
    assert not any(n.startswith(("roles/acme.", "roles/community.", "collections/ansible_collections/other/"))
                   for n in names)
    assert "roles/author.web/meta/.galaxy_install_info" not in names
    bundle = build_bundle(project, project.image("img"), {}, {})
    (web / "meta" / ".galaxy_install_info").write_text("install_date: tomorrow\n")
    assert build_bundle(project, project.image("img"), {}, {}).sha256 == bundle.sha256
    with tarfile.open(fileobj=io.BytesIO(bundle.data)) as tar:
        assert "collections/ansible_collections/acme/tools/roles/thing/tasks/main.yml" in tar.getnames()


def test_the_image_builder_component_finds_the_shipped_collections():
    component = (Path(__file__).parents[2] / "bakery/aws/templates/imagebuilder-component.yml").read_text()
    assert 'ANSIBLE_COLLECTIONS_PATH="$PWD/collections"' in component


@pytest.mark.parametrize("version", ["feature#42", "v1 \"quoted\" $HOME `x` back\\slash", "1.0.0+" + "x" * 5000])
def test_the_release_file_keeps_every_requirement_whole_as_the_label_does(version):
    p = provenance(requirements={"author.web": f"{version} {D1}", "acme.tools": f"2.0.1 {D2}"})
    label = p.labels()["io.bakery.requirements"]
    assert parse_release_file(p.release_file())["REQUIREMENTS"] == label
    assert parse_requirements(label)["acme.tools"] == f"2.0.1 {D2}"
