"""Roles a role's tasks pull in with include_role/import_role are part of its layer key and of the AWS bundle."""

import time
from pathlib import Path

import pytest

from bakery.aws.bundle import bundle_sources
from bakery.config import Project
from bakery.errors import ConfigError
from bakery.layers import plan_layers
from tests.unit.test_role_paths import galaxy_role, playbook, role

pytestmark = pytest.mark.unit

BASE = "sha256:base"
INCLUDES = {
    "fqcn": "- ansible.builtin.include_role: {name: helper}\n",
    "short": "- import_role:\n    name: helper\n",
    "free-form": "- include_role: name=helper\n",
    "block": "- block:\n  - ansible.builtin.debug: {msg: x}\n  rescue:\n  - always: []\n    block:\n"
             "    - ansible.legacy.import_role: {name: helper, tasks_from: main}\n",
    "tagged": "- ansible.builtin.include_role: {name: helper}\n  vars: {secret: !unsafe '{{ x }}'}\n",
}


def keys(proj: Path) -> list[str]:
    return [p.key for p in plan_layers(Project(proj).image("img"), BASE, {}, collections={})]


@pytest.mark.parametrize("task", INCLUDES.values(), ids=INCLUDES.keys())
def test_a_role_a_task_includes_is_in_the_layer_key_and_the_bundle(proj, task):
    role(proj / "roles" / "uses", tasks=task)
    helper = role(proj / "roles" / "helper")
    playbook(proj, "    - first\n    - uses\n")
    before = keys(proj)
    (helper / "tasks" / "main.yml").write_text("---\n- ansible.builtin.debug: {msg: changed}\n")
    after = keys(proj)
    assert after[0] == before[0] and after[1] != before[1]
    project = Project(proj)
    assert "roles/helper/tasks/main.yml" in bundle_sources(project, project.image("img"))


def test_a_handler_including_an_installed_role_counts_too(proj):
    uses = role(proj / "roles" / "uses")
    (uses / "handlers").mkdir()
    (uses / "handlers" / "main.yml").write_text("- name: again\n  ansible.builtin.import_role: {name: author.web}\n")
    web = galaxy_role(proj, "author.web")
    playbook(proj, "    - uses\n")
    before = keys(proj)
    (web / "tasks" / "main.yml").write_text("---\n- ansible.builtin.debug: {msg: tampered}\n")
    assert keys(proj) != before
    project = Project(proj)
    assert "roles/author.web/tasks/main.yml" in bundle_sources(project, project.image("img"))


GUARDED = ("- ansible.builtin.include_role: {name: geerlingguy.repo-epel}\n"
           "  when: ansible_os_family == 'RedHat'\n")
UNRESOLVED = {"not installed": ("geerlingguy.repo-epel", GUARDED),
              "path-style": ("../helper", "- include_role: {name: ../helper}\n")}


@pytest.mark.parametrize(("name", "task"), UNRESOLVED.values(), ids=UNRESOLVED.keys())
def test_an_include_that_does_not_resolve_warns_and_counts_every_role(proj, caplog, name, task):
    """A guarded include of a role for another OS (often in a third-party role) must not stop the bake."""
    role(proj / "roles" / "uses", tasks=task)
    other = role(proj / "roles" / "other")
    playbook(proj, "    - uses\n")
    with caplog.at_level("WARNING", logger="bakery.role_includes"):
        before = keys(proj)
    assert f"include_role of '{name}' in roles/uses/tasks/main.yml: not installed; the layer key counts every role" \
        in caplog.text
    (other / "tasks" / "main.yml").write_text("---\n- ansible.builtin.debug: {msg: changed}\n")
    assert keys(proj) != before


def test_a_missing_role_in_a_meta_dependency_is_still_an_error(proj):
    role(proj / "roles" / "uses", deps=["author.gone"])
    playbook(proj, "    - uses\n")
    with pytest.raises(ConfigError, match=r"roles/uses/meta/main.yml: role 'author.gone' is not installed"):
        Project(proj).image("img")


def diamond(proj: Path, depth: int) -> None:
    """Roles l<i>a and l<i>b each include both l<i+1>a and l<i+1>b: 2**depth paths to the last level."""
    for level in range(depth):
        below = "".join(f"- include_role: {{name: l{level + 1}{s}}}\n" for s in "ab") if level < depth - 1 else ""
        for side in "ab":
            role(proj / "roles" / f"l{level}{side}", tasks=below or "- ansible.builtin.debug: {msg: leaf}\n")


def test_a_deep_diamond_of_includes_resolves_quickly(proj):
    """A guard against exponential work per path through the include graph, not a benchmark."""
    diamond(proj, 12)
    playbook(proj, "    - l0a\n")
    started = time.monotonic()
    assert len(keys(proj)) == 1
    assert time.monotonic() - started < 2


def test_task_files_without_an_include_are_not_parsed(proj, monkeypatch):
    """Most task files include no role: reading their text is enough, parsing them is the slow part."""
    import yaml

    big = role(proj / "roles" / "big")
    for n in range(200):
        (big / "tasks" / f"t{n}.yml").write_text(f"- ansible.builtin.debug: {{msg: {n}}}\n")
    playbook(proj, "    - big\n")
    calls = []
    real = yaml.load
    monkeypatch.setattr(yaml, "load", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    keys(proj)
    assert len(calls) < 10


def test_an_include_in_a_file_is_seen_again_after_the_file_changes(proj):
    uses = role(proj / "roles" / "uses")
    role(proj / "roles" / "helper")
    playbook(proj, "    - uses\n")
    assert [r.name for r in Project(proj).image("img").layers[0].role.includes] == []
    (uses / "tasks" / "main.yml").write_text("---\n- include_role: {name: helper}\n")
    assert [r.name for r in Project(proj).image("img").layers[0].role.includes] == ["helper"]


def test_a_templated_include_counts_every_role_of_the_project_and_the_installed_ones(proj):
    role(proj / "roles" / "uses", tasks="- ansible.builtin.include_role: {name: '{{ which }}'}\n")
    other = role(proj / "roles" / "other")
    web = galaxy_role(proj, "author.web")
    playbook(proj, "    - uses\n")
    before = keys(proj)
    (other / "tasks" / "main.yml").write_text("---\n- ansible.builtin.debug: {msg: changed}\n")
    middle = keys(proj)
    (web / "tasks" / "main.yml").write_text("---\n- ansible.builtin.debug: {msg: changed}\n")
    assert len({before[0], middle[0], keys(proj)[0]}) == 3
    project = Project(proj)
    assert {"roles/other/tasks/main.yml", "roles/author.web/tasks/main.yml"} <= set(
        bundle_sources(project, project.image("img")))


def test_a_role_including_itself_or_its_includer_is_no_cycle_error(proj):
    role(proj / "roles" / "uses", tasks="- include_role: {name: helper}\n- include_role: {name: uses}\n")
    role(proj / "roles" / "helper", tasks="- include_role: {name: uses}\n")
    playbook(proj, "    - uses\n")
    assert len(keys(proj)) == 1


def test_roles_without_includes_keep_their_keys(proj, monkeypatch):
    """Only a role that includes another gets the new field, so other roles' digests stay what they were."""
    from bakery import layers

    role(proj / "roles" / "plain")
    playbook(proj, "    - plain\n")
    seen = []
    real = layers.sha256_json
    monkeypatch.setattr(layers, "sha256_json", lambda data: seen.append(data) or real(data))
    keys(proj)
    assert [sorted(d) for d in seen if "files" in d] == [["dependencies", "files"]]
