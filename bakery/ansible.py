"""ansible-runner wrapper: one playbook run against one container, events in, a result out.

ansible-runner keeps every run's artifacts (stdout, job events, rc) under the
run's private data dir, which is the run directory of the bake.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery.deps.paths import collections_path, roles_path
from bakery.processes import command_lines
from bakery.progress import Progress

log = logging.getLogger("bakery.ansible")

RESULT_EVENTS = {"runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable"}


@dataclass
class PlaybookResult:
    """What one ansible-runner run did, as data."""

    status: str
    rc: int
    artifact_dir: Path
    tasks: int = 0
    changed: int = 0
    failed_task: str | None = None
    failure: str | None = None
    changed_tasks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0


MITOGEN_SETTING = "BAKERY_MITOGEN"


def _mitogen_plugins() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("ansible_mitogen")
    return Path(spec.origin).parent / "plugins" / "strategy" if spec and spec.origin else None


def mitogen_wanted() -> bool:
    """Local bakes use mitogen when it is installed (make setup does), unless BAKERY_MITOGEN=0.

    The containers.podman connection cannot pipeline: every task costs several `podman exec`s, which
    dominate a bake on a busy host; mitogen keeps one interpreter in the container instead (bench/ measures it).
    """
    if os.environ.get(MITOGEN_SETTING, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _mitogen_plugins() is not None


def mitogen_env() -> dict[str, str]:
    """Ansible settings for mitogen's linear strategy."""
    plugins = _mitogen_plugins()
    if plugins is None:
        from bakery.errors import ConfigError

        raise ConfigError("mitogen is not installed in the project's virtual environment; "
                          "run: make setup (or set BAKERY_MITOGEN=0)")
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear"}


def podman_inventory(container: str, groups: list[str], mitogen: bool = False, address: str = "") -> dict[str, Any]:
    """An inventory reaching one podman container (host `container`, at `address`: its name unless given)
    through the containers.podman connection.

    Under mitogen the connection is named `podman`: mitogen replaces only the connections it knows by that name.
    """
    host_vars = {
        "ansible_connection": "podman" if mitogen else "containers.podman.podman",
        "ansible_host": address or container,
        "ansible_python_interpreter": "/usr/bin/python3",
        # The connection is already root; `become` in a play must not need sudo in a minimal base.
        "ansible_become_method": "su",
    }
    return {"all": {"children": {group: {"hosts": {container: host_vars}} for group in groups}}}


def ansible_env(project_root: Path) -> dict[str, str]:
    """Settings every bake runs with; the project's ansible.cfg (if any) still applies.

    Roles and collections are found where bakery.role_paths resolved them: the project's roles/ first, then what
    `bake.py deps` installed (bakery.deps.paths); the `ansible` package's own collections after those.
    """
    env = {
        "ANSIBLE_ROLES_PATH": os.pathsep.join(str(p) for p in roles_path(project_root)),
        "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(str(p) for p in collections_path(project_root)),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    cfg = project_root / "ansible.cfg"
    if cfg.is_file():
        env["ANSIBLE_CONFIG"] = str(cfg)
    if not _task_timeout_set(cfg):
        env["ANSIBLE_TASK_TIMEOUT"] = str(DEFAULT_TASK_TIMEOUT)
    return env


# A role task that never returns (an apt lock held forever, a service that never comes up, a command waiting for
# input) would otherwise hold the bake, its build container and the CI job around it until something outside kills
# them. An hour is far beyond any task of an image bake; whatever sets Ansible's task_timeout (the environment, the
# project's ansible.cfg, the caller's ANSIBLE_CONFIG, ~/.ansible.cfg) decides instead, 0 meaning none.
DEFAULT_TASK_TIMEOUT = 3600


def _task_timeout_set(cfg: Path) -> bool:
    """Whether anything Ansible reads sets task_timeout, asked of Ansible itself (the same precedence, files and
    parsing); the variable alone would override every file."""
    from ansible.config.manager import ConfigManager  # type: ignore[import-untyped]

    try:
        _, origin = ConfigManager(str(cfg) if cfg.is_file() else None).get_config_value_and_origin("TASK_TIMEOUT")
    except Exception:  # noqa: BLE001 - a config Ansible cannot read: ansible-playbook reports it in its own words
        return False
    return origin != "default"


def run_playbook(
    *,
    playbook: Path,
    inventory: dict[str, Any] | Path,
    private_data_dir: Path,
    ident: str,
    envvars: dict[str, str],
    extravars: dict[str, Any],
    progress: Progress,
    step: str | Callable[[], str],
    cancelled: Callable[[], bool],
    observe: Callable[[dict[str, Any]], None] | None = None,
) -> PlaybookResult:
    """Run a playbook through ansible-runner, reporting each task result to progress under `step` (a function
    when one run has several steps: one per play); `observe` sees every event first."""
    import ansible_runner  # heavy: imported only when a bake runs

    _without_env_files(private_data_dir)
    result = PlaybookResult(status="unstarted", rc=-1, artifact_dir=private_data_dir / "artifacts" / ident)

    def on_event(event: dict[str, Any]) -> bool:
        if observe is not None:
            observe(event)
        counted, changed = event_counts(event)
        if not counted:
            return True
        kind = event.get("event")
        data = event.get("event_data", {})
        task = data.get("task", "?")
        result.tasks += 1
        if changed:
            result.changed += 1
            result.changed_tasks.append(task)
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            result.failed_task = task
            result.failure = _failure_message(data.get("res") or {})
        progress.task_done(step if isinstance(step, str) else step(), task, bool(changed))
        return True

    runner = ansible_runner.run(
        private_data_dir=str(private_data_dir),
        playbook=str(playbook),
        inventory=str(inventory) if isinstance(inventory, Path) else inventory,
        ident=ident,
        envvars=envvars,
        extravars=extravars,
        quiet=True,
        event_handler=on_event,
        cancel_callback=cancelled,
        settings={"suppress_ansible_output": True},
    )
    stop_leftovers(private_data_dir)
    result.status = runner.status
    result.rc = runner.rc if runner.rc is not None else -1
    if not result.ok and not result.failure:
        result.failure = _tail(runner)
    log.info("playbook %s: status=%s rc=%s tasks=%s changed=%s", playbook.name, result.status, result.rc, result.tasks,
             result.changed)
    return result


# What ansible-runner writes into <private data dir>/env/ (extra vars stay out of the command line that way).
RUNNER_ENV_FILES = ("envvars", "extravars", "passwords", "settings")
META_ACTIONS = ("meta", "ansible.builtin.meta", "ansible.legacy.meta")


def event_counts(event: dict[str, Any]) -> tuple[int, int]:
    """Whether an ansible-runner event is a task result (1 or 0), and whether it changed something."""
    kind = event.get("event")
    data = event.get("event_data", {})
    if kind not in RESULT_EVENTS or data.get("task_action") in META_ACTIONS:  # flow control, not work
        return 0, 0
    res = data.get("res") or {}
    return 1, int(bool(res.get("changed")) and kind == "runner_on_ok")


def _failure_message(res: dict[str, Any]) -> str:
    for module in (res.get("failed_modules") or {}).values():
        if isinstance(module, dict) and (module.get("module_stderr") or module.get("msg")):
            res = module
            break
    message = (res.get("module_stderr") or res.get("msg") or res.get("stderr") or res.get("module_stderr")
               or res.get("reason") or "task failed")
    text = " ".join(str(message).split())[:500]
    if isinstance(res.get("timedout"), dict):
        text += (f" (the task's time limit is {res['timedout'].get('period')} s: bakery's default of "
                 f"{DEFAULT_TASK_TIMEOUT} s unless the task's `timeout:`, ANSIBLE_TASK_TIMEOUT or [defaults] "
                 "task_timeout in ansible.cfg sets another, 0 for none)")
    return text


def _without_env_files(private_data_dir: Path) -> None:
    """ansible-runner keeps an existing env file over what it is given: a later run in the same directory must
    not get an earlier one's settings (another layer plan)."""
    private_data_dir.mkdir(parents=True, exist_ok=True)
    for name in RUNNER_ENV_FILES:
        (private_data_dir / "env" / name).unlink(missing_ok=True)


def stop_leftovers(private_data_dir: Path) -> list[int]:
    """Kill what is left of a finished run: ansible-runner kills the process group of a cancelled run, but
    mitogen's connection multiplexer runs in a session of its own and stays (found after a SIGTERM'd bake)."""
    marker = str(private_data_dir).encode()
    killed = []
    for pid, cmdline in command_lines():
        if marker in cmdline:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue  # gone meanwhile
            killed.append(pid)
    if killed:
        log.info("killed %d process(es) left by the ansible run in %s: %s", len(killed), private_data_dir, killed)
    return killed


def _tail(runner: Any) -> str:
    """The last meaningful line ansible printed (for failures that are not task failures, e.g. syntax errors)."""
    try:
        lines = [line.strip() for line in runner.stdout.read().splitlines() if line.strip()]
    except (OSError, ValueError, AttributeError):
        return "ansible-playbook failed; see the run log"
    errors = [line for line in lines if line.startswith("ERROR!") or "[ERROR]" in line]
    return " ".join((errors or lines or ["ansible-playbook failed"])[-1].split())[:500]
