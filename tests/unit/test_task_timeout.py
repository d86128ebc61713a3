"""Every bake's Ansible run has a task timeout unless the project or the caller chose one: a task that never
returns must not hold a bake (and the CI job around it) for ever."""

from __future__ import annotations

import pytest

from bakery.ansible import DEFAULT_TASK_TIMEOUT, ansible_env

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_caller_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("ANSIBLE_TASK_TIMEOUT", raising=False)
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.ansible.cfg of whoever runs the tests
    monkeypatch.chdir(tmp_path)


def test_without_a_setting_a_task_gets_an_hour(tmp_path):
    assert ansible_env(tmp_path)["ANSIBLE_TASK_TIMEOUT"] == str(DEFAULT_TASK_TIMEOUT) == "3600"
    (tmp_path / "ansible.cfg").write_text("[defaults]\nroles_path = roles\n[ssh_connection]\ntask_timeout = 5\n")
    assert ansible_env(tmp_path)["ANSIBLE_TASK_TIMEOUT"] == "3600"  # only [defaults] is Ansible's setting


@pytest.mark.parametrize("setting", ["task_timeout = 120", "task_timeout=0 ; none at all", "TASK_TIMEOUT = 7"])
def test_the_projects_ansible_cfg_decides_when_it_sets_one(tmp_path, setting):
    (tmp_path / "ansible.cfg").write_text(f"# project settings\n[defaults]\nnocolor = true\n{setting}\n")
    env = ansible_env(tmp_path)
    assert "ANSIBLE_TASK_TIMEOUT" not in env and env["ANSIBLE_CONFIG"] == str(tmp_path / "ansible.cfg")


def test_the_callers_environment_decides_when_it_sets_one(tmp_path, monkeypatch):
    monkeypatch.setenv("ANSIBLE_TASK_TIMEOUT", "30")
    assert "ANSIBLE_TASK_TIMEOUT" not in ansible_env(tmp_path)  # ansible-runner passes the caller's environment on


def test_a_config_file_the_caller_names_decides_when_it_sets_one(tmp_path, monkeypatch):
    (tmp_path / "ci.cfg").write_text("[defaults]\ntask_timeout = 7\n")
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("ANSIBLE_CONFIG", str(tmp_path / "ci.cfg"))
    assert "ANSIBLE_TASK_TIMEOUT" not in ansible_env(project)  # the variable would override the file


def test_an_ansible_cfg_ansible_cannot_parse_leaves_the_default(tmp_path):
    (tmp_path / "ansible.cfg").write_text("task_timeout = 5\n[defaults\n")  # no section header: Ansible says so itself
    assert ansible_env(tmp_path)["ANSIBLE_TASK_TIMEOUT"] == "3600"


def test_a_timed_out_task_says_where_its_limit_is_set():
    from bakery.ansible import _failure_message

    res = {"failed": True, "msg": "Timed out after 3600 second(s).", "timedout": {"frame": "...", "period": 3600}}
    assert _failure_message(res) == (
        "Timed out after 3600 second(s). (the task's time limit is 3600 s: bakery's default of 3600 s unless the "
        "task's `timeout:`, ANSIBLE_TASK_TIMEOUT or [defaults] task_timeout in ansible.cfg sets another, 0 for none)")
    assert _failure_message({"failed": True, "msg": "boom"}) == "boom"
