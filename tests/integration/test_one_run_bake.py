"""One ansible-playbook run per bake, a layer committed at each play boundary: real podman, real ansible-runner."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bakery import podman
from tests.conftest import BAKE, bake
from tests.integration.conftest import containers, remove_images_of, wait_for

pytestmark = pytest.mark.integration

IMAGE = "onerun"
BROKEN = """---
- name: Leave a scratch file, as a download would
  ansible.builtin.copy:
    content: "scratch\\n"
    dest: /var/tmp/flaky-scratch
    mode: "0644"
- name: Break on purpose
  ansible.builtin.fail:
    msg: flaky fails on purpose
"""
PROBE = """
- name: Show where this play connects and which boot it finds
  ansible.builtin.shell: "echo 'address={{ ansible_host }}'; cat /etc/machine-id"
  changed_when: false
"""
FIXED = """---
- name: Leave a scratch file, as a download would
  ansible.builtin.copy:
    content: "scratch\\n"
    dest: /var/tmp/flaky-scratch
    mode: "0644"
- name: Mark the fix
  ansible.builtin.copy:
    content: "fixed\\n"
    dest: /etc/flaky-fixed
    mode: "0644"
""" + PROBE


@pytest.fixture
def onerun(project):
    """The fixture project with a three-role image whose middle role fails until fixed."""
    (project / "roles" / "flaky" / "tasks").mkdir(parents=True)
    (project / "roles" / "flaky" / "tasks" / "main.yml").write_text(BROKEN)
    with (project / "roles" / "second" / "tasks" / "main.yml").open("a") as tasks:
        tasks.write(PROBE)
    (project / "playbooks" / f"{IMAGE}.yml").write_text(
        "---\n- name: Bake three roles in one run\n  hosts: all\n  become: true\n"
        "  roles:\n    - first\n    - flaky\n    - second\n")
    yield project
    remove_images_of(IMAGE)


def runs(project: Path) -> list[Path]:
    return sorted((project / ".bakery" / "runs").iterdir(), key=lambda p: p.stat().st_mtime)


def ansible_runs(run_dir: Path) -> list[str]:
    """The ansible-playbook processes of a bake: one artifacts directory (and one playbook start) each."""
    artifacts = [p for p in (run_dir / "ansible" / "artifacts").iterdir() if not p.is_symlink()]
    for path in artifacts:
        starts = [e for e in (path / "job_events").glob("*.json")
                  if json.loads(e.read_text())["event"] == "playbook_on_start"]
        assert len(starts) == 1
    return [p.name for p in artifacts]


def probes(run_dir: Path, ident: str) -> list[tuple[str, str]]:
    """(address, machine id) the PROBE task saw in each play of one ansible-playbook run, in play order."""
    events = sorted((run_dir / "ansible" / "artifacts" / ident / "job_events").glob("*.json"),
                    key=lambda e: int(e.name.split("-", 1)[0]))
    seen = []
    for path in events:
        event = json.loads(path.read_text())
        if event["event"] == "runner_on_ok" and event["event_data"]["task"].startswith("Show where this play"):
            address, machine_id = event["event_data"]["res"]["stdout"].splitlines()
            seen.append((address.removeprefix("address="), machine_id))
    return seen


def scratch(ref: str) -> str:
    """What a layer keeps of scratch files and ansible's own directories (nothing, as with one run per role)."""
    return podman.run("run", "--rm", ref, "sh", "-c",
                      "find /tmp /var/tmp -mindepth 1; ls -d /root/.ansible /root/.cache 2>/dev/null; true").stdout


def rootfs(ref: str) -> list[str]:
    return podman.image_inspect(ref)["RootFS"]["Layers"]


def test_one_run_commits_every_layer_and_a_failure_keeps_the_layers_before_it(onerun):
    failed = bake(onerun, "build", IMAGE, "--json", timeout=900)
    assert failed.rc == 1
    assert "role 'flaky'" in failed.stderr and "task 'Break on purpose'" in failed.stderr, failed.stderr
    assert "flaky fails on purpose" in failed.stderr and "Traceback" not in failed.stderr
    assert "[1/3] first: baked" in failed.stderr and "[2/3] flaky: FAILED" in failed.stderr
    run_dir = runs(onerun)[-1]
    assert ansible_runs(run_dir) == ["layers-01-03"]
    assert (run_dir / "ansible" / "artifacts" / "02-flaky" / "stdout").is_file()  # each layer's log where it was
    commits = [json.loads(line) for line in next(run_dir.glob("*.commits.jsonl")).read_text().splitlines()]
    assert [c["role"] for c in commits] == ["first"]  # the failed play is never committed
    first_layer = commits[0]["ref"]
    # the layer is as clean as a layer of its own run: no scratch, no ansible temp dirs, no machine identity
    assert scratch(first_layer) == ""
    assert podman.run("run", "--rm", first_layer, "cat", "/etc/machine-id").stdout == ""
    assert not containers(f"io.bakery.image={IMAGE}")

    (onerun / "roles" / "flaky" / "tasks" / "main.yml").write_text(FIXED)
    fixed = bake(onerun, "build", IMAGE, "--json", timeout=900)
    assert fixed.rc == 0, fixed.stderr
    layers = fixed.json["layers"]
    assert [(la["role"], la["cached"]) for la in layers] == [("first", True), ("flaky", False), ("second", False)]
    assert all(la["tasks"] >= 2 and la["seconds"] > 0 for la in layers[1:]), layers
    assert [la["changed"] for la in layers[1:]] == [2, 3]  # second: payload, color, its handler
    assert "[2/3] flaky: running" in fixed.stderr and "[3/3] second: baked" in fixed.stderr
    assert ansible_runs(runs(onerun)[-1]) == ["layers-02-03"]
    # each play reaches its own freshly booted container by that container's id, never by the name they share:
    # mitogen keys connections by address, and the same key would hand the next play the removed one's
    (flaky_at, flaky_boot), (second_at, second_boot) = probes(runs(onerun)[-1], "layers-02-03")
    assert flaky_boot != second_boot and flaky_at != second_at
    assert all(len(at) == 64 and int(at, 16) >= 0 for at in (flaky_at, second_at)), (flaky_at, second_at)
    ref = fixed.json["ref"]
    assert podman.run("run", "--rm", ref, "cat", "/etc/flaky-fixed", "/etc/second-handler").stdout == \
        "fixed\nhandler ran\n"
    assert scratch(ref) == ""
    podman.remove_image(ref)

    # every layer of the one run was recorded: a change in the last role reruns that role only
    (onerun / "roles" / "second" / "files" / "payload.txt").write_text("payload version 2\n")
    last = bake(onerun, "build", IMAGE, "--json", timeout=900)
    assert last.rc == 0, last.stderr
    assert [la["role"] for la in last.json["layers"] if not la["cached"]] == ["second"]
    podman.remove_image(last.json["ref"])


def test_sigterm_after_the_first_commit_keeps_that_layer_and_nothing_else(onerun):
    (onerun / "roles" / "flaky" / "tasks" / "main.yml").write_text(FIXED.replace(
        "- name: Mark the fix", "- name: Take a while\n  ansible.builtin.command: sleep 30\n- name: Mark the fix"))
    proc = subprocess.Popen([sys.executable, str(BAKE), "--project", str(onerun), "build", IMAGE],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: [p for p in (onerun / ".bakery" / "runs").glob("*/*.commits.jsonl") if p.read_text()],
             timeout=300)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted by SIGTERM" in stderr
    assert not containers(f"io.bakery.build.pid={proc.pid}")
    assert bake(onerun, "images", "--json").json == []
    assert not list((onerun / "playbooks").glob(".bakery-*"))
    (onerun / "roles" / "flaky" / "tasks" / "main.yml").write_text(FIXED)
    again = bake(onerun, "build", IMAGE, "--json", timeout=900)
    assert again.rc == 0, again.stderr
    assert [la["role"] for la in again.json["layers"] if not la["cached"]] == ["flaky", "second"]
    podman.remove_image(again.json["ref"])


SETTER = """---
- name: Set a fact for later tasks
  ansible.builtin.set_fact:
    setter_value: from setter
- name: Register a result
  ansible.builtin.command: echo registered
  register: setter_out
  changed_when: false
- name: Include variables
  ansible.builtin.include_vars:
    file: extra.yml
- name: Create the local facts directory
  ansible.builtin.file:
    path: /etc/ansible/facts.d
    state: directory
    mode: "0755"
- name: Leave a local fact for the next role's fact gathering
  ansible.builtin.copy:
    content: '{"mark": "set"}'
    dest: /etc/ansible/facts.d/setter.fact
    mode: "0644"
- name: Leave runtime state, which no layer holds (/run is a tmpfs)
  ansible.builtin.copy:
    content: "runtime\\n"
    dest: /run/setter-runtime
    mode: "0644"
"""
READER = """---
- name: Look for the runtime state of the role before it
  ansible.builtin.stat:
    path: /run/setter-runtime
  register: reader_runtime
- name: Write what this role sees of the role before it (version {version})
  ansible.builtin.copy:
    content: "{{{{ setter_value | default('unset') }}}} {{{{ setter_out.stdout | default('unset') }}}} \
{{{{ setter_included | default('unset') }}}} {{{{ ansible_local.setter.mark | default('no fact') }}}} \
{{{{ reader_runtime.stat.exists | ternary('runtime', 'booted') }}}}\\n"
    dest: /etc/reader-saw
    mode: "0644"
"""


@pytest.mark.parametrize("own_run", [False, True], ids=["same-run", "setter-in-a-run-of-its-own"])
def test_a_role_sees_the_same_of_the_role_before_it_whether_that_layer_ran_or_was_cached(project, own_run):
    """One cache key, one layer: no set_fact/register/include_vars crosses a play, facts are gathered per play,
    and each role bakes in a container booted from the layer before it, also where a role with plugins of its
    own makes the bake two ansible-playbook runs."""
    roles = project / "roles"
    (roles / "setter" / "tasks").mkdir(parents=True)
    (roles / "setter" / "vars").mkdir()
    if own_run:
        (roles / "setter" / "filter_plugins").mkdir()
        (roles / "setter" / "filter_plugins" / "helpers.py").write_text(FILTER.format(name="setter"))
    (roles / "setter" / "tasks" / "main.yml").write_text(SETTER)
    (roles / "setter" / "vars" / "extra.yml").write_text("---\nsetter_included: included\n")
    (roles / "reader" / "tasks").mkdir(parents=True)
    (roles / "reader" / "tasks" / "main.yml").write_text(READER.format(version=1))
    (project / "playbooks" / "handoff.yml").write_text(
        "---\n- name: Bake two roles in one run\n  hosts: all\n  become: true\n  roles:\n    - setter\n    - reader\n")
    seen = []
    try:
        for version in (1, 2):
            (roles / "reader" / "tasks" / "main.yml").write_text(READER.format(version=version))
            result = bake(project, "build", "handoff", "--json", timeout=900)
            assert result.rc == 0, result.stderr
            assert [la["cached"] for la in result.json["layers"]] == [version == 2, False]
            seen.append(podman.run("run", "--rm", result.json["ref"], "cat", "/etc/reader-saw").stdout)
            if version == 1:  # each layer holds only its own role's changes, on top of the layer before it
                commits = sorted(runs(project)[-1].glob("*.commits.jsonl"))
                assert len(commits) == (2 if own_run else 1)
                setter, reader = (rootfs(json.loads(line)["ref"]) for c in commits
                                  for line in c.read_text().splitlines())
                assert reader[:-1] == setter and len(reader) == len(setter) + 1
    finally:
        remove_images_of("handoff")
    assert seen == ["unset unset unset set booted\n"] * 2


FILTER = """def who(_value):
    return "{name}"


class FilterModule:
    def filters(self):
        return {{"who": who}}
"""
PLUG_TASKS = """---
- name: Write what this role's own filter says
  ansible.builtin.copy:
    content: "{{{{ 'x' | who }}}}\\n"
    dest: /etc/{name}-filter
    mode: "0644"
"""


def test_roles_with_plugins_of_the_same_name_each_get_their_own(project):
    """Ansible loads every role's plugins for the whole run: each role that ships plugins bakes in a run of its own."""
    for name in ("plug_a", "plug_b"):
        (project / "roles" / name / "tasks").mkdir(parents=True)
        (project / "roles" / name / "filter_plugins").mkdir()
        (project / "roles" / name / "filter_plugins" / "helpers.py").write_text(FILTER.format(name=name))
        (project / "roles" / name / "tasks" / "main.yml").write_text(PLUG_TASKS.format(name=name))
    (project / "playbooks" / "plugs.yml").write_text(
        "---\n- name: Two roles with a filter of the same name\n  hosts: all\n  become: true\n"
        "  roles:\n    - first\n    - plug_a\n    - plug_b\n")
    try:
        result = bake(project, "build", "plugs", "--json", timeout=900)
        assert result.rc == 0, result.stderr
        seen = podman.run("run", "--rm", result.json["ref"], "cat", "/etc/plug_a-filter", "/etc/plug_b-filter").stdout
        assert seen == "plug_a\nplug_b\n"
        run_dir = runs(project)[-1]
        assert sorted(p.name for p in (run_dir / "ansible" / "artifacts").iterdir() if not p.is_symlink()) == \
            ["layers-01-01", "layers-02-02", "layers-03-03"]
    finally:
        remove_images_of("plugs")


REFRESHER = """---
- name: Read the inventory again, as a role that changes it would
  ansible.builtin.meta: refresh_inventory
- name: Write the groups the host is in after the refresh
  ansible.builtin.copy:
    content: "{{ group_names | join(',') }}\\n"
    dest: /etc/refreshed
    mode: "0644"
""" + PROBE


GROUPER = """---
- name: Put the host in a group of this play's own
  ansible.builtin.group_by:
    key: grouped_by_an_earlier_role
"""


def test_a_role_that_refreshes_the_inventory_goes_on_in_its_own_container(project):
    """`meta: refresh_inventory` re-reads the run's inventory file: it names the container of the play running now,
    not the first play's (removed at the first swap), and Ansible's replay of earlier group_by/add_host results
    onto it brings back nothing of an earlier role's play."""
    for name, tasks in (("grouper", GROUPER), ("refresher", REFRESHER)):
        (project / "roles" / name / "tasks").mkdir(parents=True)
        (project / "roles" / name / "tasks" / "main.yml").write_text(tasks)
    (project / "playbooks" / "refresh.yml").write_text(
        "---\n- name: A role that refreshes the inventory after another\n  hosts: all\n  become: true\n"
        "  roles:\n    - grouper\n    - refresher\n")
    try:
        result = bake(project, "build", "refresh", "--json", "--no-cache", timeout=900)
        assert result.rc == 0, result.stderr
        run_dir = runs(project)[-1]
        assert ansible_runs(run_dir) == ["layers-01-02"]  # both plays in one run: the refresh came after a swap
        [(address, _)] = probes(run_dir, "layers-01-02")
        inventory = json.loads((run_dir / "ansible" / "inventory" / "layers-01-02.json").read_text())
        # the file names the container booted for the second play, which the refreshed play reached
        assert {host["ansible_host"] for group in inventory["all"]["children"].values()
                for host in group["hosts"].values()} == {address}
        # as in a run of its own: the inventory's groups, not the one the earlier role's group_by made
        assert podman.run("run", "--rm", result.json["ref"], "cat", "/etc/refreshed").stdout == "bakery_build,refresh\n"
    finally:
        remove_images_of("refresh")
