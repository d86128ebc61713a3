"""`ansible-playbook --tags <role>_<concern>` runs exactly that concern of a role, nothing more and nothing less.

Every role's tasks/main.yml dispatches one task file per concern, each behind a switch and a tag. A tag reaches
the tasks of the file only through a static `import_tasks`: on a dynamic `include_tasks` it stays on the include,
so `--tags hardening_ssh` would select none of ssh.yml's tasks (what the role READMEs promised for a while).
These tests ask ansible-playbook itself, with `--list-tasks` (no host is contacted, no podman): the expected
tasks are read from the concern's task file. With the old include_tasks dispatch the listings show the include
tasks instead of the file's tasks, and every test here fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ROLES_DIR = ROOT / "roles"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
ROLES = sorted(main.parent.parent.name for main in ROLES_DIR.glob("*/tasks/main.yml"))
# Every tag is checked through the full listing (each task shows the tags it is selected by). These selections
# also run for real with --tags (one ansible-playbook run each, ~2 s of CPU, so not one per tag): the README's
# example, then in one run a file with a meta task and registered results, one with a block, and one tag of each
# other role.
SELECTIONS = [
    ("hardening_ssh",),
    ("base_packages", "hardening_auditd", "cloudwatch_agent_install", "webapp_install"),
]
# "<role> : <task name>\tTAGS: [<tag>, ...]" in the output of --list-tasks
LISTED_TASK = re.compile(r"^\s+(?P<role>\w+) : (?P<name>.*)\tTAGS: \[(?P<tags>[^\]]*)\]$")


def _task_names(tasks: list[dict]) -> list[str]:
    """The names of the tasks of a task file in run order, tasks inside blocks included (blocks are not listed)."""
    names = []
    for task in tasks or []:
        if "block" in task:
            for part in ("block", "rescue", "always"):
                names += _task_names(task.get(part, []))
        else:
            names.append(task["name"])
    return names


def concerns(role: str) -> list[tuple[str, list[str]]]:
    """(tag, names of the tasks of its file) for each concern of tasks/main.yml, in dispatch order."""
    tasks_dir = ROLES_DIR / role / "tasks"
    result = []
    for entry in yaml.safe_load((tasks_dir / "main.yml").read_text()):
        task_file = entry.get("ansible.builtin.import_tasks") or entry.get("ansible.builtin.include_tasks")
        assert task_file, f"roles/{role}/tasks/main.yml: {entry.get('name')!r} dispatches no task file"
        tags = entry.get("tags") or []
        assert len(tags) == 1, f"roles/{role}/tasks/main.yml: {entry.get('name')!r} needs exactly one tag, has {tags}"
        result.append((tags[0], _task_names(yaml.safe_load((tasks_dir / task_file).read_text()))))
    return result


def _list_tasks(playbook: Path, tags: tuple[str, ...]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(role, task name, tags) of every task ansible-playbook lists, tasks tagged `always` left out.

    `always` marks only the argument-spec validation ansible adds to each role; it runs whatever the tags.
    """
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
        "ANSIBLE_NOCOLOR": "1",
    }
    command = [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "--list-tasks", str(playbook)]
    if tags:
        command += ["--tags", ",".join(tags)]
    done = subprocess.run(command, env=env, cwd=playbook.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    listed = []
    for line in done.stdout.splitlines():
        match = LISTED_TASK.match(line)
        if match:
            tags = tuple(t.strip() for t in match["tags"].split(",") if t.strip())
            if "always" not in tags:
                listed.append((match["role"], match["name"], tags))
    return listed


@pytest.fixture(scope="module")
def listings(tmp_path_factory) -> dict[tuple[str, ...], list[tuple[str, str, tuple[str, ...]]]]:
    """The listings of a play applying every role: untagged (key ()) and for each of SELECTIONS, run in parallel."""
    playbook = tmp_path_factory.mktemp("role_tags") / "all_roles.yml"
    play = {"name": "Apply every role", "hosts": "localhost", "gather_facts": False, "roles": ROLES}
    playbook.write_text(yaml.safe_dump([play], sort_keys=False))
    keys = [(), *SELECTIONS]
    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        results = list(pool.map(lambda tags: _list_tasks(playbook, tags), keys))
    return dict(zip(keys, results, strict=True))


def test_the_roles_and_the_selected_tags_are_there():
    assert {"base", "hardening", "webapp"} <= set(ROLES)
    all_tags = {tag for role in ROLES for tag, _ in concerns(role)}
    assert {tag for selection in SELECTIONS for tag in selection} <= all_tags


@pytest.mark.parametrize("role", ROLES)
def test_every_task_of_a_concern_carries_its_tag_and_no_other(listings, role):
    """The full listing is every concern file's tasks, in dispatch order, each tagged with its concern only.

    `--tags T` selects a task by exactly these tags, so each tag selects exactly its concern's tasks.
    """
    expected = [(name, (tag,)) for tag, names in concerns(role) for name in names]
    listed = [(name, tags) for listed_role, name, tags in listings[()] if listed_role == role]
    assert listed == expected


@pytest.mark.parametrize("selection", SELECTIONS, ids=",".join)
def test_tags_select_exactly_their_concerns(listings, selection):
    """`--tags` lists the tasks of the selected concerns' files, in play order, and no task of any other concern."""
    expected = [
        (role, name) for role in ROLES for tag, names in concerns(role) if tag in selection for name in names
    ]
    assert [(role, name) for role, name, _ in listings[selection]] == expected
