"""Releases of an environment on any target: deploy, rollback, promote, config, down, status.

The target-agnostic half of a rollout: validate, apply the verification gate,
record the release in the catalog, let the environment's fleet run the refresh,
close the release with its outcome. A refresh left unfinished by a process that
died (kill -9, power loss) is finished or rolled back by the next command that
touches the environment, before anything else happens to it.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery.catalog import ROLLOUT_KINDS, Catalog
from bakery.config import PROJECT_FILE, Project
from bakery.environments import Environment, load_environment
from bakery.errors import BakeryError, ConfigError, Interrupted, OperationError
from bakery.files import write_atomically
from bakery.fleets import get_fleet
from bakery.fleets.base import Fleet, Goal, RefreshOutcome, RefreshRequest
from bakery.gate import require_verified
from bakery.progress import Progress
from bakery.provenance import sha256_json
from bakery.refresh import effective_preferences
from bakery.runs import Run
from bakery.signals import Cancellation, cancellable

# Releases that put a version with a config on an environment: what a rollback can return to.


@dataclass
class Session:
    project: Project
    catalog: Catalog
    progress: Progress


@dataclass
class ReleaseResult:
    env: str
    kind: str
    image: str
    from_version: str | None
    to_version: str
    result: str  # succeeded, rolled_back, failed
    replaced: int
    total: int
    seconds: float
    reason: str | None
    release_id: int | None
    endpoint: str | None
    forced: bool = False
    config_digest: str | None = None
    resumed: list[dict[str, Any]] = field(default_factory=list)  # unfinished releases this command finished first

    @property
    def ok(self) -> bool:
        return self.result == "succeeded"

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "kind": self.kind, "image": self.image, "from": self.from_version, "to": self.to_version,
                "result": self.result, "replaced": self.replaced, "total": self.total, "duration": self.seconds,
                "reason": self.reason, "release": self.release_id, "endpoint": self.endpoint, "forced": self.forced,
                "config_digest": self.config_digest, "resumed": self.resumed}


def open_fleet(session: Session, env: Environment) -> Fleet:
    return get_fleet(env.target)(session.project, session.catalog, env, session.progress)


def deploy_file(env: Environment) -> Path:
    return env.path / "group_vars" / "all" / "deploy.yml"


def _adopt_on_aws(session: Session, env: Environment, version: str | None, kind: str) -> None:
    """On aws the AMI tags are the record and this checkout's catalog a cache of them: a version it lacks (a fresh CI container)
    is recorded from its AMI, with the builder's tagged verification, before versions are resolved and the gate applied."""
    if env.target == "aws":
        open_fleet(session, env).adopt(version, f"{kind}-{os.getpid()}")


def _check_image(env: Environment, image: str) -> None:
    if image != env.image:
        raise ConfigError(f"{deploy_file(env)}: environment '{env.name}' deploys image '{env.image}', not '{image}'")


# ---------------------------------------------------------------- releases in the catalog


def _release(catalog: Catalog, env: str, release_id: int) -> dict[str, Any] | None:
    return next((r for r in catalog.releases(env, limit=1000) if r["id"] == release_id), None)


def _finish(catalog: Catalog, release_id: int, outcome: RefreshOutcome) -> None:
    catalog.finish_release(release_id, outcome.status, reason=outcome.reason,
                           details={"replaced": outcome.replaced, "total": outcome.total, "refresh_seconds": outcome.seconds,
                                    **outcome.details})


def _result(env: Environment, fleet: Fleet, kind: str, goal: Goal, from_version: str | None, outcome: RefreshOutcome,
            release_id: int, forced: bool) -> ReleaseResult:
    endpoint = fleet.status().endpoint
    return ReleaseResult(env=env.name, kind=kind, image=goal.image, from_version=from_version, to_version=goal.version,
                         result=outcome.status, replaced=outcome.replaced, total=outcome.total, seconds=outcome.seconds,
                         reason=outcome.reason, release_id=release_id, endpoint=endpoint, forced=forced,
                         config_digest=goal.config_digest)


def recover(session: Session, fleet: Fleet, cancel: Cancellation) -> list[dict[str, Any]]:
    """Finish what a dead process left (call while holding the environment's lock). Returns the releases finished."""
    env, catalog = fleet.env, session.catalog
    finished: list[dict[str, Any]] = []
    handled: set[int] = set()
    data = fleet.interrupted()
    if data:
        release_id = data["release_id"]
        row = _release(catalog, env.name, release_id)
        if row is None or row["status"] != "in_progress":
            fleet.forget_interrupted()  # the release was closed; only the state file was left
        else:
            handled.add(release_id)
            goal = Goal.from_dict(data["goal"])
            session.progress.note(f"{env.name}: release #{release_id} ({data['kind']} to {goal.version}) was left unfinished by "
                                  f"pid {data.get('pid')}; {'rolling it back' if data.get('phase') == 'rollback' else 'finishing it'}")
            run = Run.start(session.project.state_dir, "resume")
            _, outcome = fleet.resume(cancel, on_done=lambda o: _finish(catalog, release_id, o))
            run.write_result({"release": release_id, "env": env.name, **outcome.to_dict()})
            finished.append({"release": release_id, "kind": data["kind"], "to": goal.version, "result": outcome.status,
                             "reason": outcome.reason})
    for row in catalog.releases(env.name, limit=100):
        if row["status"] == "in_progress" and row["id"] not in handled:
            # Holding the lock, no live process is rolling this environment out: that process died before its refresh began.
            catalog.finish_release(row["id"], "abandoned", reason=f"the {row['kind']} process (pid {row['pid']}) ended before its refresh began")
    return finished


def _rollout(session: Session, fleet: Fleet, goal: Goal, overrides: dict[str, Any] | None, kind: str, forced: bool,
             cancel: Cancellation, resumed: list[dict[str, Any]], replace_running: bool = False) -> ReleaseResult:
    env, catalog = fleet.env, session.catalog
    prefs = effective_preferences(env.refresh, overrides or {})
    current = fleet.current()
    run = Run.start(session.project.state_dir, kind)
    release_id = catalog.start_release(
        env.name, goal.image, goal.version, previous_version=current.version if current else None, kind=kind,
        user=getpass.getuser(), forced=forced, run_id=run.id, pid=os.getpid(), config_digest=goal.config_digest,
        details={"runtime": goal.runtime, "preferences": dataclasses.asdict(prefs), "instances": env.instances,
                 "previous_config_digest": current.config_digest if current else None})
    was = f"{current.image}:{current.version}" if current else "nothing"
    session.progress.note(f"{env.name}: release #{release_id}: {kind} {goal.image}:{goal.version} (config {goal.config_digest[7:19]}), "
                          f"replacing {was}" + (" (verification gate forced open)" if forced else ""))
    request = RefreshRequest(release_id=release_id, kind=kind, goal=goal, previous=current, preferences=prefs, run_id=run.id,
                             replace_running=replace_running)
    try:
        outcome = fleet.refresh(request, cancel, on_done=lambda o: _finish(catalog, release_id, o))
    except (Interrupted, KeyboardInterrupt):
        run.write_result({"status": "interrupted", "release": release_id, "env": env.name})
        session.progress.note(f"{env.name}: stopped where it was; the next ./bake.py deploy or ./bake.py status --env {env.name} "
                              f"finishes release #{release_id}")
        raise
    except BakeryError as exc:
        run.write_result({"status": "error", "release": release_id, "env": env.name, "error": str(exc)})
        session.progress.note(f"{env.name}: release #{release_id} stopped on an error; the next ./bake.py deploy or "
                              f"./bake.py status --env {env.name} resumes it")
        raise
    result = _result(env, fleet, kind, goal, current.version if current else None, outcome, release_id, forced)
    result.resumed = resumed
    run.write_result(result.to_dict())
    return result


# ---------------------------------------------------------------- commands


def deploy(session: Session, env: Environment, image: str, version: str | None, *, overrides: dict[str, Any] | None = None,
           force: bool = False, replace_running: bool = False) -> ReleaseResult:
    """Roll IMAGE:VERSION out to ENV (gate first); blocks until it succeeded, rolled back or failed.

    replace_running: a refresh the target runs already (aws) is cancelled instead of waited for."""
    _check_image(env, image)
    _adopt_on_aws(session, env, version, "deploy")
    version = session.catalog.resolve(image, version)["version"]
    effective_preferences(env.refresh, overrides or {})  # bad flags fail before anything happens
    fleet = open_fleet(session, env)
    goal = fleet.goal_for(version, sha256_json(env.runtime), env.runtime)
    fleet.check_goal(goal)
    forced = require_verified(session.catalog, image, version, required=env.require_verified, force=force, env=env.name)
    with cancellable() as cancel, fleet.lock():
        if replace_running:
            fleet.stop_live_refresh("cancel", cancel)  # an interrupted release's refresh ends Cancelled; recover records that
        resumed = recover(session, fleet, cancel)
        return _rollout(session, fleet, goal, overrides, "deploy", forced, cancel, resumed, replace_running)


def rollback(session: Session, env: Environment, *, overrides: dict[str, Any] | None = None) -> ReleaseResult:
    """Back to the newest successful release whose version or config differs from what runs now."""
    effective_preferences(env.refresh, overrides or {})
    fleet = open_fleet(session, env)
    with cancellable() as cancel:
        stopped = fleet.stop_live_refresh("rollback", cancel)
        if stopped is not None:
            return _rolled_back_live(session, fleet, stopped, cancel)
    with cancellable() as cancel, fleet.lock():
        resumed = recover(session, fleet, cancel)
        current = fleet.current()
        if current is None:
            raise OperationError(f"environment '{env.name}' has no instances to roll back; deploy one with: ./bake.py deploy {env.image}:VERSION "
                                 f"--env {env.name}")
        target = next((r for r in session.catalog.releases(env.name, limit=500)
                       if r["status"] == "succeeded" and r["kind"] in ROLLOUT_KINDS
                       and (r["version"], r["config_digest"]) != (current.version, current.config_digest)), None)
        if target is None and env.target == "aws":  # released from another checkout or CI: the SSM release history knows
            goal = fleet.release_before(current, f"rollback-{os.getpid()}")
            if goal is not None:
                fleet.check_goal(goal)
                session.progress.note(f"{env.name}: rolling back to {goal.image}:{goal.version}, the release before "
                                      f"{current.version} in SSM (this catalog has no earlier release)")
                return _rollout(session, fleet, goal, overrides, "rollback", False, cancel, resumed)
        if target is None:
            raise OperationError(f"environment '{env.name}' has no earlier successful release to roll back to (it runs {current.version})")
        runtime = (target.get("details") or {}).get("runtime")
        if runtime is None:
            runtime = fleet.known_runtime(target["config_digest"] or "")
        goal = fleet.goal_for(target["version"], target["config_digest"], runtime) if runtime is not None else None
        if goal is None:
            raise OperationError(f"release #{target['id']} ({env.image}:{target['version']}) cannot be relaunched: its version or runtime "
                                 "config is no longer known")
        fleet.check_goal(goal)
        session.progress.note(f"{env.name}: rolling back to release #{target['id']} ({goal.image}:{goal.version})")
        return _rollout(session, fleet, goal, overrides, "rollback", False, cancel, resumed)


def _rolled_back_live(session: Session, fleet: Fleet, stopped: dict[str, Any], cancel: Cancellation) -> ReleaseResult:
    """The target rolled its running refresh back; the release it belonged to is closed by the bake.py waiting on it, or here."""
    env = fleet.env
    resumed: list[dict[str, Any]] = []
    with fleet.try_lock() as free:
        if free:  # no bake.py waits on that refresh any more: record its end now
            resumed = recover(session, fleet, cancel)
    now = fleet.current()
    ok = stopped["status"] == "RollbackSuccessful"
    reason = None if ok else f"refresh {stopped['id']} ended {stopped['status']}" + (f": {stopped['reason']}" if stopped.get("reason") else "")
    result = ReleaseResult(env=env.name, kind="rollback", image=env.image, from_version=stopped.get("from"),
                           to_version=now.version if now else "-", result="succeeded" if ok else "failed", replaced=0, total=0, seconds=0.0,
                           reason=reason, release_id=stopped.get("release_id"), endpoint=None, resumed=resumed)
    Run.start(session.project.state_dir, "rollback").write_result({**result.to_dict(), "instance_refresh": stopped})
    return result


def promote(session: Session, env: Environment, image: str, version: str | None, *, overrides: dict[str, Any] | None = None) -> ReleaseResult:
    """The same image version (never a rebuild) to ENV, once verified and healthy in ENV's promote_from environment."""
    _check_image(env, image)
    if not env.promote_from:
        raise ConfigError(f"{deploy_file(env)}: environment '{env.name}' has no promote_from; deploy to it with ./bake.py deploy")
    source = load_environment(session.project, env.promote_from)
    source_fleet = open_fleet(session, source)
    if version is None:
        current = source_fleet.current()
        if current is None:
            raise OperationError(f"nothing to promote: environment '{source.name}' has no instances")
        version = current.version
    _adopt_on_aws(session, env, version, "promote")
    version = session.catalog.resolve(image, version)["version"]
    effective_preferences(env.refresh, overrides or {})
    require_verified(session.catalog, image, version, required=True, force=False, env=env.name)
    _require_healthy_in(source_fleet, source, image, version)
    fleet = open_fleet(session, env)
    goal = fleet.goal_for(version, sha256_json(env.runtime), env.runtime)
    fleet.check_goal(goal)
    with cancellable() as cancel, fleet.lock():
        resumed = recover(session, fleet, cancel)
        return _rollout(session, fleet, goal, overrides, "promote", False, cancel, resumed)


def _require_healthy_in(fleet: Fleet, source: Environment, image: str, version: str) -> None:
    status = fleet.status()
    where = f"{image}:{version} is not healthy in '{source.name}'"
    if status.refresh:
        raise OperationError(f"{where}: a refresh of '{source.name}' is in progress (release #{status.refresh.get('release')}); "
                             "promote once it finished")
    if not status.instances or not status.lb_running:
        raise OperationError(f"{where}: environment '{source.name}' is down; deploy it there first")
    others = sorted({i.version or "?" for i in status.instances if i.version != version})
    if others:
        raise OperationError(f"{where}: '{source.name}' runs {', '.join(others)}; deploy {image}:{version} there first")
    sick = [i for i in status.instances if not i.in_service]
    if sick or len(status.instances) < source.instances:
        if sick:
            detail = f"{sick[0].name} is {sick[0].health} ({sick[0].check})"
        else:
            detail = f"only {len(status.instances)} of {source.instances} instances run"
        raise OperationError(f"{where}: {detail}")


def down(session: Session, env: Environment) -> dict[str, Any]:
    """Desired capacity 0: drain and remove every instance, stop the load balancer; releases and data volumes stay."""
    fleet = open_fleet(session, env)
    catalog = session.catalog
    with cancellable() as cancel, fleet.lock():
        data = fleet.interrupted()
        if data:
            row = _release(catalog, env.name, data["release_id"])
            if row and row["status"] == "in_progress":
                catalog.finish_release(row["id"], "abandoned", reason="the environment was taken down before the refresh finished")
            fleet.forget_interrupted()
        recover(session, fleet, cancel)
        status = fleet.status()
        if not status.instances and not status.lb_running:
            return {"env": env.name, "result": "already down", "removed": 0, "release": None}
        current = fleet.current()
        run = Run.start(session.project.state_dir, "down")
        version = current.version if current else "-"
        release_id = catalog.start_release(env.name, env.image, version, previous_version=current.version if current else None,
                                           kind="down", user=getpass.getuser(), forced=False, run_id=run.id, pid=os.getpid(),
                                           config_digest=current.config_digest if current else None,
                                           details={"instances": [i.name for i in status.instances]})
        try:
            removed = fleet.down(cancel)
        except BaseException as exc:
            catalog.finish_release(release_id, "failed", reason=f"stopped before every instance was removed: {exc or type(exc).__name__}")
            raise
        catalog.finish_release(release_id, "succeeded", details={"removed": removed})
        result = {"env": env.name, "result": "down", "removed": removed, "release": release_id}
        run.write_result(result)
        return result


def status(session: Session, env: Environment, *, resume: bool = True) -> dict[str, Any]:
    """The environment now; an unfinished refresh whose process died is finished first (resume=True)."""
    fleet = open_fleet(session, env)
    resumed: list[dict[str, Any]] = []
    with fleet.try_lock() as free:
        if resume and free and (fleet.interrupted() or any(r["status"] == "in_progress" for r in session.catalog.releases(env.name, 20))):
            with cancellable() as cancel:
                resumed = recover(session, fleet, cancel)
        state = fleet.status()
    data = state.to_dict()
    data["lb_address"] = f"http://127.0.0.1:{env.lb_port}" if env.target == "local" else state.endpoint
    data["resumed"] = resumed
    data["releases"] = [{k: r[k] for k in ("id", "kind", "image", "version", "previous_version", "status", "started", "finished",
                                           "seconds", "user", "forced", "config_digest", "reason")}
                        for r in session.catalog.releases(env.name, limit=10)]
    return data


# ---------------------------------------------------------------- runtime config


RUNTIME_HEADER = re.compile(r"^bakery_runtime\s*:\s*(#.*)?$")
PAIR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


def parse_pairs(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        match = PAIR.match(pair)
        if not match:
            raise ConfigError(f"'{pair}' is not KEY=VALUE (an upper-case variable name, '=', the value)")
        values[match.group(1)] = match.group(2)
    if not values:
        raise ConfigError("give at least one KEY=VALUE to set")
    return values


def edit_runtime_yaml(text: str | None, values: dict[str, str]) -> str:
    """runtime.yml with `values` set under bakery_runtime; other lines and comments stay as they are."""
    lines = (text or "---\nbakery_runtime:\n").splitlines()
    start = next((i for i, line in enumerate(lines) if RUNTIME_HEADER.match(line)), None)
    if start is None:  # no block form to edit in place (flow style, or no bakery_runtime): rewrite the mapping
        data = load_yaml_text(text) or {}
        runtime = dict(data.get("bakery_runtime") or {}) if isinstance(data, dict) else {}
        runtime.update(values)
        body = "".join(f"  {key}: {json.dumps(str(value))}\n" for key, value in runtime.items())
        return "---\nbakery_runtime:\n" + body
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][:1] in (" ", "\t") or lines[end].lstrip().startswith("#")):
        end += 1
    block = lines[start + 1:end]
    indent = next((re.match(r"^(\s+)", line).group(1) for line in block if line.strip() and not line.lstrip().startswith("#")), "  ")
    last_key = max((i for i, line in enumerate(block) if line.strip() and not line.lstrip().startswith("#")), default=-1)
    for key, value in values.items():
        rendered = f"{indent}{key}: {json.dumps(value)}"
        pattern = re.compile(rf"^{re.escape(indent)}{re.escape(key)}\s*:")
        index = next((i for i, line in enumerate(block) if pattern.match(line)), None)
        if index is None:
            last_key += 1
            block.insert(last_key, rendered)
        else:
            block[index] = rendered
    return "\n".join(lines[:start + 1] + block + lines[end:]) + "\n"


def load_yaml_text(text: str | None) -> Any:
    import yaml

    try:
        return yaml.safe_load(text or "")
    except yaml.YAMLError:
        return None


def runtime_path(env: Environment) -> Path:
    return env.path / "group_vars" / "all" / "runtime.yml"


def validate_runtime(project: Project, env_name: str, text: str) -> Environment:
    """Load the environment as it would be with this runtime.yml, without touching the real file."""
    real = project.root / "inventories" / env_name / "group_vars" / "all"
    with tempfile.TemporaryDirectory(prefix="bakery-config-") as tmp:
        shadow = Path(tmp)
        shutil.copy(project.root / PROJECT_FILE, shadow / PROJECT_FILE)
        folder = shadow / "inventories" / env_name / "group_vars" / "all"
        folder.mkdir(parents=True)
        shutil.copy(real / "deploy.yml", folder / "deploy.yml")
        (folder / "runtime.yml").write_text(text, encoding="utf-8")
        env = load_environment(Project(shadow), env_name, check_promotion=False)
    env.path = project.root / "inventories" / env_name
    return env


def config_get(session: Session, env: Environment, key: str | None) -> dict[str, str]:
    if key is None:
        return dict(sorted(env.runtime.items()))
    if key not in env.runtime:
        raise OperationError(f"{runtime_path(env)}: bakery_runtime has no key '{key}' (keys: {', '.join(sorted(env.runtime)) or 'none'})")
    return {key: env.runtime[key]}


def config_set(session: Session, env: Environment, pairs: tuple[str, ...] | list[str], *,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the runtime config and roll it out: same image version, new instances (a new config digest)."""
    values = parse_pairs(pairs)
    effective_preferences(env.refresh, overrides or {})
    path = runtime_path(env)
    fleet = open_fleet(session, env)
    with cancellable() as cancel, fleet.lock():
        old_text = path.read_text(encoding="utf-8") if path.is_file() else None
        new_text = edit_runtime_yaml(old_text, values)
        new_env = validate_runtime(session.project, env.name, new_text)  # ConfigError: exit 2, file untouched
        summary: dict[str, Any] = {"env": env.name, "file": str(path), "set": values, "config_digest": new_env.config_digest()}
        resumed = recover(session, fleet, cancel)
        if new_env.runtime == env.runtime:
            session.progress.note(f"{env.name}: runtime config unchanged")
            return {**summary, "result": "unchanged", "release": None, "resumed": resumed}
        write_atomically(path, new_text)
        session.progress.note(f"{env.name}: wrote {path}")
        fleet.env = new_env  # same instances and load balancer; only the runtime config differs
        current = fleet.current()
        if current is None:
            session.progress.note(f"{env.name}: the environment is down; the new config applies at the next deploy")
            return {**summary, "result": "written", "release": None, "resumed": resumed}
        goal = fleet.goal_for(current.version, new_env.config_digest(), new_env.runtime)
        fleet.check_goal(goal)
        result = _rollout(session, fleet, goal, overrides, "config", False, cancel, resumed)
        if not result.ok:
            if old_text is None:
                path.unlink(missing_ok=True)
            else:
                write_atomically(path, old_text)
            session.progress.note(f"{env.name}: restored the previous {path.name}: the new config did not roll out")
        return {**summary, **result.to_dict(), "file_restored": not result.ok}
