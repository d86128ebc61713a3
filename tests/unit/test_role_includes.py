"""Roles a role's tasks pull in with include_role/import_role are part of its layer key and of the AWS bundle."""

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


def test_an_included_role_that_is_nowhere_is_one_line_naming_the_file(proj):
    role(proj / "roles" / "uses", tasks="- ansible.builtin.include_role: {name: author.gone}\n")
    playbook(proj, "    - uses\n")
    with pytest.raises(ConfigError, match=r"roles/uses/tasks/main.yml: role 'author.gone' is not installed"):
        Project(proj).image("img")


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
