"""A locked collection's digest is in the key of exactly the layers that can use it, and of the layers after them."""

from pathlib import Path

import pytest

from bakery import layer_collections as layer_collections_module
from bakery import layers as layers_module
from bakery.config import Project
from bakery.layer_collections import layer_bundled, layer_collections
from bakery.layers import plan_layers
from tests.conftest import REPO
from tests.unit.test_role_paths import galaxy_role, installed_collection_role, no_bundled_collections, playbook, role

__all__ = ["no_bundled_collections"]  # the fixture

pytestmark = pytest.mark.unit

BASE = "sha256:base"
V1, V2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def image(proj: Path):
    """Layers: first (project role), uses_tools (names acme.tools.thing), author.web (Galaxy role, names nothing)."""
    role(proj / "roles" / "uses_tools", tasks="- name: do the thing\n  acme.tools.thing: {state: present}\n")
    galaxy_role(proj, "author.web")
    playbook(proj, "    - first\n    - uses_tools\n    - author.web\n")
    return Project(proj).image("img")


def first_layer_collections(proj: Path, locked: dict[str, str]) -> dict[str, str]:
    definition = Project(proj).image("img")
    return layer_collections(definition.layers[0], locked)


def keys(definition, collections):
    return [p.key for p in plan_layers(definition, BASE, {}, collections=collections)]


def test_bumping_a_collection_rebakes_from_the_first_layer_that_uses_it_and_no_earlier(proj):
    definition = image(proj)
    before = keys(definition, {"acme.tools": V1, "other.coll": V1})
    after = keys(definition, {"acme.tools": V2, "other.coll": V1})
    assert after[0] == before[0]
    assert after[1] != before[1] and after[2] != before[2]
    assert keys(definition, {"acme.tools": V1, "other.coll": V2}) == before  # used by no layer


def test_a_role_naming_a_collections_module_uses_it_and_a_role_that_does_not_does_not(proj):
    definition = image(proj)
    locked = {"acme.tools": V1, "acme.toolbox": V2}
    assert [layer_collections(layer, locked) for layer in definition.layers] == [{}, {"acme.tools": V1}, {}]


@pytest.mark.parametrize("text", ["- xacme.tools.thing: {}\n", "- acme.toolsmith.thing: {}\n",
                                  "- debug: {msg: 'acme_tools'}\n"])
def test_near_misses_do_not_count(proj, text):
    role(proj / "roles" / "near", tasks=text)
    playbook(proj, "    - near\n")
    assert first_layer_collections(proj, {"acme.tools": V1}) == {}


@pytest.mark.parametrize("where", ["collections keyword", "include_role", "play header", "dependency"])
def test_every_way_of_naming_a_collection_counts(proj, where):
    tasks = {"collections keyword": "- thing: {}\n", "include_role": "- include_role: {name: acme.tools.thing}\n"}
    role(proj / "roles" / "r", tasks=tasks.get(where, "- debug: {msg: hi}\n"),
         deps=["author.dep"] if where == "dependency" else None)
    if where == "collections keyword":
        (proj / "roles" / "r" / "meta").mkdir()
        (proj / "roles" / "r" / "meta" / "main.yml").write_text("collections:\n  - acme.tools\n")
    galaxy_role(proj, "author.dep", tasks="- acme.tools.thing: {}\n")
    if where == "include_role":  # an included role must be installed (bakery.role_includes)
        installed_collection_role(proj, "acme.tools.thing")
    header = "  collections: [acme.tools]\n" if where == "play header" else ""
    (proj / "playbooks" / "img.yml").write_text(f"- hosts: all\n{header}  roles: [r]\n")
    assert first_layer_collections(proj, {"acme.tools": V1}) == {"acme.tools": V1}


def test_a_collection_role_uses_its_own_collection_also_as_a_dependency(proj):
    installed_collection_role(proj, "acme.tools.thing")
    role(proj / "roles" / "wrapper", deps=["acme.tools.thing"])
    playbook(proj, "    - first\n    - wrapper\n")
    definition = Project(proj).image("img")
    assert [layer_collections(layer, {"acme.tools": V1}) for layer in definition.layers] == [{}, {"acme.tools": V1}]
    assert [layer_collections(layer, {}) for layer in definition.layers] == [{}, {}]  # not locked: not in the key


def write_lock(proj: Path, digest: str) -> None:
    (proj / "requirements.lock").write_text(
        "# written by bake.py deps\nformat: 1\nroles: {}\ncollections:\n"
        f"  acme.tools: {{source: acme.tools, type: galaxy, version: 1.0.0, digest: '{digest}'}}\n")


def test_the_lock_beside_the_project_is_read_by_default(proj):
    definition = image(proj)
    without = keys(definition, {})
    assert [p.key for p in plan_layers(definition, BASE, {})] == without  # no lock: keys as they always were
    write_lock(proj, V1)
    first = [p.key for p in plan_layers(definition, BASE, {})]
    assert first == keys(definition, {"acme.tools": V1})
    assert first[0] == without[0] and first[1] != without[1]
    write_lock(proj, V2)
    second = [p.key for p in plan_layers(definition, BASE, {})]
    assert second[0] == first[0] and second[1:] != first[1:]


def key_payloads(monkeypatch, definition, collections=None) -> list[dict]:
    """What each layer key is the digest of."""
    seen: list[dict] = []
    real = layers_module.sha256_json

    def spy(data):
        if isinstance(data, dict) and "parent" in data:
            seen.append(data)
        return real(data)

    monkeypatch.setattr(layers_module, "sha256_json", spy)
    plan_layers(definition, BASE, {}, collections=collections)
    monkeypatch.undo()
    return seen


def test_keys_of_layers_that_use_no_locked_collection_have_no_collections_field(monkeypatch, proj):
    definition = image(proj)
    payloads = key_payloads(monkeypatch, definition, {"acme.tools": V1})
    assert ["collections" in p for p in payloads] == [False, True, False]
    assert payloads[1]["collections"] == {"acme.tools": V1}


def test_the_example_projects_layer_keys_are_unchanged(monkeypatch):
    """No collection field where a layer uses none: the example project's cached layers stay valid."""
    project = Project(REPO)
    for name in project.image_names():
        definition = project.image(name)
        payloads = key_payloads(monkeypatch, definition)
        locked = layers_module.locked_collections(definition)
        for layer, payload in zip(definition.layers, payloads, strict=True):
            assert ("collections" in payload) == bool(layer_collections(layer, locked))
        if not locked:
            assert not any("collections" in p for p in payloads)
            assert [p.key for p in plan_layers(definition, BASE, {})] == keys(definition, {})


def per_layer(proj: Path, locked: dict[str, str]) -> list[dict[str, str]]:
    definition = Project(proj).image("img")
    return [layer_collections(layer, locked) for layer in definition.layers]


@pytest.mark.parametrize("where", ["group_vars/all.yml", "host_vars/default/main.yml", "vars/extra.yml"])
def test_a_collection_named_in_bake_vars_or_vars_files_is_used_by_every_layer(proj, where):
    image(proj)
    (proj / "playbooks" / where).parent.mkdir(parents=True)
    (proj / "playbooks" / where).write_text("filter_of_choice: \"{{ x | other.coll.pick }}\"\n")
    if where.startswith("vars/"):
        (proj / "playbooks" / "img.yml").write_text(
            "- hosts: all\n  vars_files: [vars/extra.yml]\n  roles: [first, uses_tools, author.web]\n")
    locked = {"acme.tools": V1, "other.coll": V2}
    assert per_layer(proj, locked) == [{"other.coll": V2}, {"acme.tools": V1, "other.coll": V2}, {"other.coll": V2}]


@pytest.mark.parametrize("where", ["meta/runtime.yml", "plugins/modules/thing.py", "roles/thing/tasks/main.yml"])
def test_a_collection_that_a_used_collection_names_is_used_too(proj, where):
    coll = installed_collection_role(proj, "acme.tools.thing").parent.parent
    (coll / where).parent.mkdir(parents=True, exist_ok=True)
    (coll / where).write_text("plugin_routing: {modules: {old: {redirect: deep.dep.new}}}\n")
    deep = installed_collection_role(proj, "deep.dep.unused").parent.parent
    (deep / "meta").mkdir()
    (deep / "meta" / "runtime.yml").write_text("requires_ansible: '>=2.15' # see deeper.dep.x\n")
    image(proj)
    locked = {"acme.tools": V1, "deep.dep": V1, "deeper.dep": V2, "lone.coll": V2}
    both = {"acme.tools": V1, "deep.dep": V1, "deeper.dep": V2}
    assert per_layer(proj, locked) == [{}, both, {}]


def test_a_locked_collection_that_ansible_routes_short_names_to_is_used_by_every_layer(proj):
    role(proj / "roles" / "firewall", tasks="- ufw: {state: enabled}\n")
    playbook(proj, "    - first\n    - firewall\n")
    locked = {"community.general": V1, "acme.tools": V2}
    assert per_layer(proj, locked) == [{"community.general": V1}, {"community.general": V1}]


def test_a_python_import_of_a_collections_module_utils_uses_it(proj):
    role(proj / "roles" / "py", tasks="- ansible.builtin.debug: {msg: hi}\n")
    (proj / "roles" / "py" / "library").mkdir()
    (proj / "roles" / "py" / "library" / "mine.py").write_text(
        "from ansible_collections.acme.tools.plugins.module_utils.net import x\n")
    playbook(proj, "    - py\n")
    assert first_layer_collections(proj, {"acme.tools": V1}) == {"acme.tools": V1}


def bundled_collection(root: Path, fqcn: str, version: str) -> None:
    coll = root / "ansible_collections" / fqcn.replace(".", "/")
    coll.mkdir(parents=True, exist_ok=True)
    (coll / "MANIFEST.json").write_text(f'{{"collection_info": {{"version": "{version}"}}}}\n')


def test_a_bundled_collection_a_layer_names_is_in_its_key_with_its_version(monkeypatch, proj,
                                                                           no_bundled_collections):
    bundled_collection(no_bundled_collections, "community.general", "9.1.0")
    bundled_collection(no_bundled_collections, "ansible.posix", "1.5.4")
    role(proj / "roles" / "gen", tasks="- community.general.ufw: {state: enabled}\n")
    playbook(proj, "    - first\n    - gen\n")
    definition = Project(proj).image("img")
    before = keys(definition, {})
    bundled_collection(no_bundled_collections, "community.general", "9.2.0")
    after = keys(definition, {})
    assert after[0] == before[0] and after[1] != before[1]
    # a locked collection of the same name is the one used: its digest is the key, not the bundled version
    bundled = layer_collections_module.bundled_versions()
    assert layer_bundled(definition.layers[1], bundled, {}) == {"community.general": "9.2.0"}
    assert layer_bundled(definition.layers[1], bundled, {"community.general": V1}) == {}
    payloads = key_payloads(monkeypatch, definition, {})  # last: it undoes the fixture's monkeypatch
    assert "bundled_collections" not in payloads[0]
    assert payloads[1]["bundled_collections"] == {"community.general": "9.2.0"}
