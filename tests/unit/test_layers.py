
import pytest

from bakery.config import Project
from bakery.layers import input_digest, plan_layers

pytestmark = pytest.mark.unit

BASE = "sha256:base"



def keys(root, extra=None, base=BASE):
    planned = plan_layers(Project(root).image("sample"), base, extra or {})
    return [p.key for p in planned]


def test_keys_are_stable(proj):
    assert keys(proj) == keys(proj)


@pytest.mark.parametrize("path, content", [
    ("roles/second/templates/color.j2", "colour={{ second_color }}\n"),   # changed template
    ("roles/second/defaults/main.yml", "---\nsecond_color: red\n"),       # changed variable
    ("roles/second/files/payload.txt", "payload version 2\n"),            # changed file
    ("roles/second/files/extra.txt", "new file\n"),                       # added file
])
def test_a_change_in_the_last_role_changes_only_its_key(proj, path, content):
    before = keys(proj)
    (proj / path).write_text(content)
    after = keys(proj)
    assert after[0] == before[0]
    assert after[1] != before[1]


def test_a_change_in_the_first_role_changes_every_later_key(proj):
    before = keys(proj)
    (proj / "roles/first/defaults/main.yml").write_text("---\nfirst_greeting: hi\n")
    after = keys(proj)
    assert after[0] != before[0] and after[1] != before[1]


def test_extra_vars_play_vars_and_base_are_in_every_key(proj):
    before = keys(proj)
    assert keys(proj, {"x": 1})[0] != before[0]
    assert keys(proj, base="sha256:other")[0] != before[0]
    text = (proj / "playbooks/sample.yml").read_text().replace("gather_facts: false",
                                                               "gather_facts: false\n  vars: {x: 2}")
    (proj / "playbooks/sample.yml").write_text(text)
    assert keys(proj)[0] != before[0]


def test_group_vars_beside_the_playbook_are_in_the_key(proj):
    before = keys(proj)
    (proj / "playbooks/group_vars").mkdir()
    (proj / "playbooks/group_vars/all.yml").write_text("second_color: green\n")
    assert keys(proj)[1] != before[1]


def test_vars_files_contents_are_in_the_key(proj):
    (proj / "playbooks/vars.yml").write_text("second_color: green\n")
    text = (proj / "playbooks/sample.yml").read_text().replace("gather_facts: false",
                                                               "gather_facts: false\n  vars_files: [vars.yml]")
    (proj / "playbooks/sample.yml").write_text(text)
    before = keys(proj)
    (proj / "playbooks/vars.yml").write_text("second_color: yellow\n")
    assert keys(proj)[0] != before[0]


def test_a_dependency_change_changes_the_dependent_role_key(proj):
    (proj / "roles/boom/meta").mkdir()
    (proj / "roles/second/meta").mkdir()
    (proj / "roles/second/meta/main.yml").write_text("dependencies: [boom]\n")
    before = keys(proj)
    (proj / "roles/boom/tasks/main.yml").write_text("---\n- name: changed\n  ansible.builtin.meta: noop\n")
    after = keys(proj)
    assert after[0] == before[0] and after[1] != before[1]


def test_molecule_changes_do_not_rebake(proj):
    before = keys(proj)
    (proj / "roles/second/molecule/default").mkdir(parents=True)
    (proj / "roles/second/molecule/default/verify.yml").write_text("---\n")
    assert keys(proj) == before


def test_input_digest_is_the_last_key(proj):
    planned = plan_layers(Project(proj).image("sample"), BASE, {})
    assert input_digest(planned, BASE) == planned[-1].key


def test_role_inputs_invalidate_only_that_role_and_later(proj):
    definition = Project(proj).image("sample")
    before = [p.key for p in plan_layers(definition, BASE, {}, {"second": {"sha256": "a" * 64}})]
    after = [p.key for p in plan_layers(definition, BASE, {}, {"second": {"sha256": "b" * 64}})]
    assert before[0] == after[0] and before[1] != after[1]
    first_changed = [p.key for p in plan_layers(definition, BASE, {},
                                                {"first": {"sha256": "b" * 64}, "second": {"sha256": "a" * 64}})]
    assert first_changed[0] != before[0] and first_changed[1] != before[1]
