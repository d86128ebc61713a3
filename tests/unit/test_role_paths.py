"""Role names as users write them: project roles, Galaxy/git roles and collection roles, resolved offline.

Installed roles and collections are plain directories laid out as `bake.py deps` (ansible-galaxy) leaves them.
"""

from pathlib import Path

import pytest

from bakery import role_paths
from bakery.config import Project
from bakery.errors import ConfigError
from bakery.layers import plan_layers

pytestmark = pytest.mark.unit

BASE = "sha256:base"


def role(path: Path, tasks: str = "- ansible.builtin.debug: {msg: hi}\n", deps: list | None = None) -> Path:
    (path / "tasks").mkdir(parents=True)
    (path / "tasks" / "main.yml").write_text("---\n" + tasks)
    if deps is not None:
        (path / "meta").mkdir()
        (path / "meta" / "main.yml").write_text(f"galaxy_info: {{author: someone}}\ndependencies: {deps!r}\n")
    return path


def galaxy_role(root: Path, name: str, **kw) -> Path:
    return role(root / ".bakery" / "galaxy" / "roles" / name, **kw)


def collection_role(base: Path, fqcn: str, **kw) -> Path:
    namespace, collection, name = fqcn.split(".")
    coll = base / "ansible_collections" / namespace / collection
    if not (coll / "MANIFEST.json").exists():
        coll.mkdir(parents=True)
        (coll / "MANIFEST.json").write_text('{"collection_info": {"version": "1.0.0"}}\n')
    return role(coll / "roles" / name, **kw)


def installed_collection_role(root: Path, fqcn: str, **kw) -> Path:
    return collection_role(root / ".bakery" / "galaxy" / "collections", fqcn, **kw)


def playbook(root: Path, roles: str, name: str = "img") -> None:
    (root / "playbooks" / f"{name}.yml").write_text(f"- hosts: all\n  gather_facts: false\n  roles:\n{roles}")


@pytest.fixture
def no_bundled_collections(monkeypatch, tmp_path):
    """The `ansible` package's collections: an empty directory unless a test installs something there."""
    bundled = tmp_path / "site-packages" / "ansible_collections"
    bundled.mkdir(parents=True)
    monkeypatch.setattr(role_paths, "bundled_collection_roots", lambda: (bundled,))
    return bundled.parent


def test_galaxy_and_collection_role_names_resolve_to_their_installed_directories(proj):
    galaxy_role(proj, "author.web")
    installed_collection_role(proj, "acme.tools.thing")
    playbook(proj, "    - first\n    - author.web\n    - acme.tools.thing\n")
    layers = Project(proj).image("img").layers
    assert [(layer.role.name, layer.role.third_party) for layer in layers] == [
        ("first", False), ("author.web", True), ("acme.tools.thing", True)]
    assert layers[1].role.path == proj.resolve() / ".bakery/galaxy/roles/author.web"
    assert layers[2].role.path == (proj.resolve() / ".bakery/galaxy/collections/ansible_collections/acme/tools/"
                                   "roles/thing")


def test_a_git_role_installed_under_its_short_name_resolves_after_the_project_roles(proj):
    galaxy_role(proj, "ansible-role-web")
    playbook(proj, "    - ansible-role-web\n")
    ref = Project(proj).image("img").layers[0].role
    assert ref.third_party and ref.path.parent.name == "roles" and ref.path.parent.parent.name == "galaxy"


def test_a_project_role_shadows_an_installed_role_of_the_same_name(proj):
    galaxy_role(proj, "first")
    galaxy_role(proj, "author.web")
    role(proj / "roles" / "author.web")
    playbook(proj, "    - first\n    - author.web\n")
    layers = Project(proj).image("img").layers
    assert [layer.role.path for layer in layers] == [proj.resolve() / "roles/first",
                                                     proj.resolve() / "roles/author.web"]
    assert not any(layer.role.third_party for layer in layers)


def test_roles_shipped_with_the_ansible_package_resolve_after_installed_collections(proj, no_bundled_collections):
    bundled = collection_role(no_bundled_collections, "community.sops.install")
    playbook(proj, "    - community.sops.install\n")
    ref = Project(proj).image("img").layers[0].role
    assert ref.path == bundled and ref.third_party
    installed = installed_collection_role(proj, "community.sops.install")
    assert Project(proj).image("img").layers[0].role.path == installed.resolve()


def test_the_real_ansible_package_collections_are_found():
    roots = role_paths.bundled_collection_roots()
    assert any((r / "community" / "general" / "MANIFEST.json").is_file() for r in roots)
    assert role_paths.find_role(Path("/nonexistent"), "community.sops.install") is not None


@pytest.mark.parametrize("name", ["author.missing", "acme.tools.missing"])
def test_a_dotted_role_that_is_not_installed_says_to_add_it_to_requirements(proj, name):
    playbook(proj, f"    - first\n    - {name}\n")
    with pytest.raises(ConfigError) as info:
        Project(proj).image("img")
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"playbooks/img.yml: play 1: role '{name}' is not installed; add it to requirements.yml "
                       "and run: bake.py deps")


@pytest.mark.parametrize("name", ["a.b.c.d", "acme-x.tools.role", "../escape", "a..b"])
def test_names_that_are_no_role_name_are_refused_in_one_line(proj, name):
    playbook(proj, f"    - role: '{name}'\n")
    with pytest.raises(ConfigError, match=r"role '.*' is not a role name: use a role under roles/") as info:
        Project(proj).image("img")
    assert "\n" not in str(info.value)


def test_role_entries_keep_vars_tags_when_and_become_and_they_enter_the_key(proj):
    galaxy_role(proj, "author.web")
    entry = ("    - role: author.web\n      vars: {web_port: 8080}\n      tags: [web]\n      when: true\n"
             "      become: true\n")
    playbook(proj, entry)
    definition = Project(proj).image("img")
    ref = definition.layers[0].role
    assert ref.name == "author.web"
    assert ref.entry == {"role": "author.web", "vars": {"web_port": 8080}, "tags": ["web"], "when": True,
                         "become": True}
    before = plan_layers(definition, BASE, {}, collections={})[0].key
    playbook(proj, entry.replace("8080", "8081"))
    assert plan_layers(Project(proj).image("img"), BASE, {}, collections={})[0].key != before
    playbook(proj, entry.replace("[web]", "[web, nginx]"))
    assert plan_layers(Project(proj).image("img"), BASE, {}, collections={})[0].key != before


def test_meta_dependencies_on_a_galaxy_role_and_on_a_collection_role_resolve(proj):
    (proj / "roles" / "first" / "meta").mkdir()
    (proj / "roles" / "first" / "meta" / "main.yml").write_text(
        "dependencies:\n  - author.common\n  - role: acme.tools.thing\n    vars: {x: 1}\n")
    galaxy_role(proj, "author.common", deps=[])
    installed_collection_role(proj, "acme.tools.thing")
    deps = Project(proj).image("sample").layers[0].role.dependencies
    assert [(d.name, d.third_party) for d in deps] == [("author.common", True), ("acme.tools.thing", True)]
    assert deps[1].entry == {"role": "acme.tools.thing", "vars": {"x": 1}}


def test_a_missing_meta_dependency_of_a_galaxy_role_names_its_meta_file(proj):
    galaxy_role(proj, "author.web", deps=["author.common"])
    playbook(proj, "    - author.web\n")
    with pytest.raises(ConfigError, match=r"^\.bakery/galaxy/roles/author\.web/meta/main\.yml: role 'author\.common' "
                                          r"is not installed; add it to requirements\.yml and run: bake\.py deps$"):
        Project(proj).image("img")


def test_a_galaxy_roles_meta_main_yaml_is_read_too(proj):
    path = galaxy_role(proj, "author.web")
    (path / "meta").mkdir()
    (path / "meta" / "main.yaml").write_text("dependencies: [second]\n")
    playbook(proj, "    - author.web\n")
    assert [d.name for d in Project(proj).image("img").layers[0].role.dependencies] == ["second"]


def test_a_short_dependency_inside_a_collection_role_resolves_within_that_collection_first(proj):
    installed_collection_role(proj, "acme.tools.thing", deps=["helper", "second"])
    helper = installed_collection_role(proj, "acme.tools.helper")
    role(proj / "roles" / "helper")  # a project role of the same name is not what the collection means
    playbook(proj, "    - acme.tools.thing\n")
    deps = Project(proj).image("img").layers[0].role.dependencies
    assert [(d.name, d.path) for d in deps] == [("acme.tools.helper", helper.resolve()),
                                                ("second", proj.resolve() / "roles/second")]


def test_dependency_cycles_through_installed_roles_are_refused(proj):
    galaxy_role(proj, "author.a", deps=["author.b"])
    galaxy_role(proj, "author.b", deps=["author.a"])
    playbook(proj, "    - author.a\n")
    with pytest.raises(ConfigError, match="role dependency cycle: author.a -> author.b -> author.a"):
        Project(proj).image("img")


def write_settings(proj: Path, verify: str) -> None:
    (proj / "bakery.yml").write_text(f"default_base: bookworm\nimages:\n  img:\n    verify: {verify}\n")


def test_role_tests_name_roles_the_image_bakes_as_a_layer_or_a_dependency(proj):
    galaxy_role(proj, "author.web", deps=["author.common"])
    galaxy_role(proj, "author.common")
    playbook(proj, "    - first\n    - author.web\n")
    write_settings(proj, "{role_tests: [author.web, author.common]}")
    assert Project(proj).image("img").role_tests == ["author.web", "author.common"]
    write_settings(proj, "{}")
    assert Project(proj).image("img").role_tests == []


@pytest.mark.parametrize("verify, message", [
    ("{role_tests: [author.other]}", "bakery.yml: images.img.verify.role_tests names role 'author.other', which "
                                     "playbooks/img.yml does not bake"),
    ("{role_tests: author.web}", "bakery.yml: images.img.verify.role_tests must be a list of role names"),
    ("{roles_tests: [author.web]}", "bakery.yml: images.img.verify must be a mapping with only role_tests"),
])
def test_bad_role_tests_are_one_line(proj, verify, message):
    galaxy_role(proj, "author.web")
    playbook(proj, "    - author.web\n")
    write_settings(proj, verify)
    with pytest.raises(ConfigError) as info:
        Project(proj).image("img")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["roles", "collections"])
def test_roles_or_collections_beside_the_playbook_are_refused_as_they_would_shadow_ours(proj, kind):
    role(proj / "roles" / "motd")
    playbook(proj, "    - motd\n")
    (proj / "playbooks" / kind / "x").mkdir(parents=True)
    with pytest.raises(ConfigError) as err:
        Project(proj).image("img")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"playbooks/{kind}/ would shadow")
    assert "ansible searches beside the playbook first" in message


def test_a_plays_collections_are_searched_for_a_short_role_name_before_the_roles_paths(proj):
    installed_collection_role(proj, "acme.tools.motd")
    role(proj / "roles" / "motd")  # ansible still picks the collection's
    role(proj / "roles" / "plain")
    (proj / "playbooks" / "img.yml").write_text("- hosts: all\n  collections: [acme.tools]\n  roles: [motd, plain]\n")
    layers = Project(proj).image("img").layers
    assert [(layer.role.name, layer.role.third_party) for layer in layers] == [("acme.tools.motd", True),
                                                                                ("plain", False)]
    assert layers[0].role.path == proj / ".bakery/galaxy/collections/ansible_collections/acme/tools/roles/motd"


def test_a_roles_own_meta_collections_are_searched_for_its_short_dependencies_first(proj):
    installed_collection_role(proj, "acme.tools.motd")
    role(proj / "roles" / "motd")
    role(proj / "roles" / "r", deps=["motd"])
    (proj / "roles" / "r" / "meta" / "main.yml").write_text("collections: [acme.tools]\ndependencies: [motd]\n")
    playbook(proj, "    - r\n")
    assert [dep.name for dep in Project(proj).image("img").layers[0].role.dependencies] == ["acme.tools.motd"]


def test_play_collections_do_not_reach_a_roles_dependencies(proj):
    installed_collection_role(proj, "acme.tools.motd")
    role(proj / "roles" / "motd")
    role(proj / "roles" / "r", deps=["motd"])
    (proj / "playbooks" / "img.yml").write_text("- hosts: all\n  collections: [acme.tools]\n  roles: [r]\n")
    assert [dep.name for dep in Project(proj).image("img").layers[0].role.dependencies] == ["motd"]


@pytest.mark.parametrize("value", ["{a: b}", "[1]"])
def test_a_malformed_collections_keyword_is_one_line(proj, value):
    role(proj / "roles" / "plain")
    (proj / "playbooks" / "img.yml").write_text(f"- hosts: all\n  collections: {value}\n  roles: [plain]\n")
    with pytest.raises(ConfigError, match="collections.*list of collection names"):
        Project(proj).image("img")
