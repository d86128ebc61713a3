"""The environment commands on any target: deploy, rollback, promote, config get|set, down, status.

The target-agnostic half of a rollout: validate, resolve the version, apply the
verification gate, then, holding the environment's lock, finish what a dead process
left and roll the release out (bakery.fleets.rollout records it in the catalog and
lets the environment's fleet run the refresh).
"""

from __future__ import annotations

import functools
import getpass
import os
from pathlib import Path
from typing import Any

from bakery import podman
from bakery.catalog import ROLLOUT_KINDS
from bakery.environments import Environment, load_environment
from bakery.errors import ConfigError, OperationError
from bakery.files import write_atomically
from bakery.fleets import get_fleet
from bakery.fleets.base import Fleet, Goal
from bakery.fleets.config_journal import ConfigChange, find_release, restore_note
from bakery.fleets.planning import env_preferences
from bakery.fleets.rollout import ReleaseResult, Session, recover, rollout
from bakery.fleets.runtime_config import edit_runtime_yaml, parse_pairs, runtime_path, validate_runtime
from bakery.provenance import sha256_json
from bakery.runs import Run
from bakery.signals import Cancellation, cancellable
from bakery.verify.gate import require_verified


def open_fleet(session: Session, env: Environment) -> Fleet:
    return get_fleet(env.target)(session.project, session.catalog, env, session.progress)


def deploy_file(env: Environment) -> Path:
    return env.path / "group_vars" / "all" / "deploy.yml"


def _adopt_on_aws(session: Session, env: Environment, version: str | None, kind: str) -> None:
    """On aws the AMI tags are the record and this checkout's catalog a cache of them: a version it lacks (a fresh
    CI container) is recorded from its AMI, with the builder's tagged verification, before versions are resolved
    and the gate applied."""
    if env.target == "aws":
        open_fleet(session, env).adopt(version, f"{kind}-{os.getpid()}")


def _require_target(env: Environment) -> None:
    """A local environment is podman's: a broken podman is exit 2 (as deploy, logs and top say it), before the
    environment's lock or anything else is written. An aws environment's account is asked by the fleet itself."""
    if env.target == "local":
        podman.check_working()


def _launchable(fleet: Fleet, version: str, digest: str, runtime: dict[str, str]) -> Goal:
    """The goal for a version the catalog resolved, checked launchable on the fleet's target."""
    goal = fleet.goal_for(version, digest, runtime)
    if goal is None:
        raise ConfigError(f"version '{fleet.env.image}:{version}' is not in this checkout's catalog; "
                          f"list versions with: ./bake.py images {fleet.env.image}")
    fleet.check_goal(goal)
    return goal


def _settled_goal(session: Session, fleet: Fleet, goal: Goal) -> Goal:
    """The goal again from runtime.yml as it is once recover() settled what a dead config set left (hold the lock):
    the environment was loaded before the lock, and settling may have put the old file back (or a concurrent
    command may have, while it held the lock)."""
    env = load_environment(session.project, fleet.env.name)
    if env.runtime == fleet.env.runtime:  # what the goal was made from
        return goal
    session.progress.note(f"{env.name}: {runtime_path(env)} changed while the environment was settled; "
                          "rolling out the file as it is now")
    fleet.env = env
    return _launchable(fleet, goal.version, sha256_json(env.runtime), env.runtime)


def _image_checks(fleet: Fleet, goal: Goal) -> dict[str, Any]:
    """The gate's checks of the image itself (require_verified's `deployed` and `aws`). On aws the catalog says the
    version passed, not that the AMI the goal launches (found by its tags) is the one that did, so the version's
    record must name it; and the aws kind is what `verify --target aws` recorded for that very AMI. Locally the
    catalog's image id is exactly the image verify ran on: nothing to add."""
    if fleet.target != "aws":
        return {}
    from bakery.fleets.aws_group import AwsGroupFleet  # the aws target's modules load only when it is used

    if not isinstance(fleet, AwsGroupFleet):
        return {}
    return {"deployed": functools.partial(fleet.verified_ami, goal),
            "aws": functools.partial(fleet.aws_verification, goal)}


def _check_image(env: Environment, image: str) -> None:
    if image != env.image:
        raise ConfigError(f"{deploy_file(env)}: environment '{env.name}' deploys image '{env.image}', not '{image}'")


# ---------------------------------------------------------------- commands


def deploy(session: Session, env: Environment, image: str, version: str | None, *,
           overrides: dict[str, Any] | None = None, force: bool = False,
           replace_running: bool = False) -> ReleaseResult:
    """Roll IMAGE:VERSION out to ENV (gate first); blocks until it succeeded, rolled back or failed.

    replace_running: a refresh the target runs already (aws) is cancelled instead of waited for."""
    env_preferences(env, overrides)  # bad flags fail before anything happens
    _check_image(env, image)
    _adopt_on_aws(session, env, version, "deploy")
    version = session.catalog.resolve(image, version)["version"]
    fleet = open_fleet(session, env)
    goal = _launchable(fleet, version, sha256_json(env.runtime), env.runtime)
    forced = require_verified(session.catalog, image, version, required=env.require_verified, force=force,
                              env=env.name, **_image_checks(fleet, goal))
    with cancellable() as cancel, fleet.lock():
        if replace_running:
            # an interrupted release's refresh ends Cancelled; recover records that
            fleet.stop_live_refresh("cancel", cancel)
        resumed = recover(session, fleet, cancel)
        goal = _settled_goal(session, fleet, goal)
        return rollout(session, fleet, goal, overrides, "deploy", forced, cancel, resumed, replace_running)


def rollback(session: Session, env: Environment, *, overrides: dict[str, Any] | None = None) -> ReleaseResult:
    """Back to the newest successful release whose version or config differs from what runs now."""
    env_preferences(env, overrides)
    _require_target(env)
    fleet = open_fleet(session, env)
    with cancellable() as cancel:
        stopped = fleet.stop_live_refresh("rollback", cancel)
        if stopped is not None:
            return _rolled_back_live(session, fleet, stopped, cancel)
    with cancellable() as cancel, fleet.lock():
        resumed = recover(session, fleet, cancel)
        current = fleet.current()
        if current is None:
            raise OperationError(f"environment '{env.name}' has no instances to roll back; deploy one with: "
                                 f"./bake.py deploy {env.image}:VERSION --env {env.name}")
        target = next((r for r in session.catalog.releases(env.name, limit=500)
                       if r["status"] == "succeeded" and r["kind"] in ROLLOUT_KINDS
                       and (r["version"], r["config_digest"]) != (current.version, current.config_digest)), None)
        if target is None and env.target == "aws":  # released from another checkout or CI: the SSM history knows
            goal = fleet.release_before(current, f"rollback-{os.getpid()}")
            if goal is not None:
                fleet.check_goal(goal)
                session.progress.note(f"{env.name}: rolling back to {goal.image}:{goal.version}, the release before "
                                      f"{current.version} in SSM (this catalog has no earlier release)")
                return rollout(session, fleet, goal, overrides, "rollback", False, cancel, resumed)
        if target is None:
            raise OperationError(f"environment '{env.name}' has no earlier successful release to roll back to "
                                 f"(it runs {current.version})")
        runtime = (target.get("details") or {}).get("runtime")
        if runtime is None:
            runtime = fleet.known_runtime(target["config_digest"] or "")
        goal = fleet.goal_for(target["version"], target["config_digest"], runtime) if runtime is not None else None
        if goal is None:
            raise OperationError(f"release #{target['id']} ({env.image}:{target['version']}) cannot be relaunched: "
                                 "its version or runtime config is no longer known")
        fleet.check_goal(goal)
        session.progress.note(f"{env.name}: rolling back to release #{target['id']} ({goal.image}:{goal.version})")
        return rollout(session, fleet, goal, overrides, "rollback", False, cancel, resumed)


def _rolled_back_live(session: Session, fleet: Fleet, stopped: dict[str, Any],
                      cancel: Cancellation) -> ReleaseResult:
    """The target rolled its running refresh back; the release it belonged to is closed by the bake.py waiting on
    it, or here."""
    env = fleet.env
    resumed: list[dict[str, Any]] = []
    with fleet.try_lock() as free:
        if free:  # no bake.py waits on that refresh any more: record its end now
            resumed = recover(session, fleet, cancel)
    now = fleet.current()
    ok = stopped["status"] == "RollbackSuccessful"
    reason = None
    if not ok:
        reason = f"refresh {stopped['id']} ended {stopped['status']}" + (
            f": {stopped['reason']}" if stopped.get("reason") else "")
    result = ReleaseResult(env=env.name, kind="rollback", image=env.image, from_version=stopped.get("from"),
                           to_version=now.version if now else "-", result="succeeded" if ok else "failed",
                           replaced=0, total=0, seconds=0.0, reason=reason, release_id=stopped.get("release_id"),
                           endpoint=None, resumed=resumed)
    Run.start(session.project.state_dir, "rollback").write_result({**result.to_dict(), "instance_refresh": stopped})
    return result


def promote(session: Session, env: Environment, image: str, version: str | None, *,
            overrides: dict[str, Any] | None = None) -> ReleaseResult:
    """The same image version (never a rebuild) to ENV, once verified and healthy in ENV's promote_from
    environment."""
    env_preferences(env, overrides)
    _check_image(env, image)
    if not env.promote_from:
        raise ConfigError(f"{deploy_file(env)}: environment '{env.name}' has no promote_from; deploy to it with "
                          "./bake.py deploy")
    source = load_environment(session.project, env.promote_from)
    source_fleet = open_fleet(session, source)
    if version is None:
        current = source_fleet.current()
        if current is None:
            raise OperationError(f"nothing to promote: environment '{source.name}' has no instances")
        version = current.version
    _adopt_on_aws(session, env, version, "promote")
    version = session.catalog.resolve(image, version)["version"]
    require_verified(session.catalog, image, version, required=env.require_verified or True, force=False,
                     env=env.name)
    _require_healthy_in(source_fleet, source, image, version)
    fleet = open_fleet(session, env)
    goal = _launchable(fleet, version, sha256_json(env.runtime), env.runtime)
    require_verified(session.catalog, image, version, required=env.require_verified or True, force=False,
                     env=env.name, **_image_checks(fleet, goal))  # the AMI promoted, once it is chosen
    with cancellable() as cancel, fleet.lock():
        resumed = recover(session, fleet, cancel)
        goal = _settled_goal(session, fleet, goal)
        return rollout(session, fleet, goal, overrides, "promote", False, cancel, resumed)


def _require_healthy_in(fleet: Fleet, source: Environment, image: str, version: str) -> None:
    status = fleet.status()
    where = f"{image}:{version} is not healthy in '{source.name}'"
    if status.refresh:
        raise OperationError(f"{where}: a refresh of '{source.name}' is in progress "
                             f"(release #{status.refresh.get('release')}); promote once it finished")
    if not status.instances or not status.lb_running:
        raise OperationError(f"{where}: environment '{source.name}' is down; deploy it there first")
    others = sorted({i.version or "?" for i in status.instances if i.version != version})
    if others:
        raise OperationError(f"{where}: '{source.name}' runs {', '.join(others)}; deploy {image}:{version} "
                             "there first")
    sick = [i for i in status.instances if not i.in_service]
    if sick or len(status.instances) < source.instances:
        if sick:
            detail = f"{sick[0].name} is {sick[0].health} ({sick[0].check})"
        else:
            detail = f"only {len(status.instances)} of {source.instances} instances run"
        raise OperationError(f"{where}: {detail}")


def down(session: Session, env: Environment) -> dict[str, Any]:
    """Desired capacity 0: drain and remove every instance, stop the load balancer; releases and data volumes
    stay."""
    _require_target(env)
    fleet = open_fleet(session, env)
    catalog = session.catalog
    with cancellable() as cancel, fleet.lock():
        data = fleet.interrupted()
        if data:
            row = find_release(catalog, env.name, data["release_id"])
            if row and row["status"] == "in_progress":
                catalog.finish_release(row["id"], "abandoned",
                                       reason="the environment was taken down before the refresh finished")
            fleet.forget_interrupted()
        recover(session, fleet, cancel)
        status = fleet.status()
        if not status.instances and not status.lb_running:
            return {"env": env.name, "result": "already down", "removed": 0, "release": None}
        current = fleet.current()
        run = Run.start(session.project.state_dir, "down")
        version = current.version if current else "-"
        release_id = catalog.start_release(env.name, env.image, version,
                                           previous_version=current.version if current else None, kind="down",
                                           user=getpass.getuser(), forced=False, run_id=run.id, pid=os.getpid(),
                                           config_digest=current.config_digest if current else None,
                                           details={"instances": [i.name for i in status.instances]})
        try:
            removed = fleet.down(cancel)
        except BaseException as exc:
            catalog.finish_release(release_id, "failed",
                                   reason=f"stopped before every instance was removed: {exc or type(exc).__name__}")
            raise
        catalog.finish_release(release_id, "succeeded", details={"removed": removed})
        result = {"env": env.name, "result": "down", "removed": removed, "release": release_id}
        run.write_result(result)
        return result


RELEASE_FIELDS = ("id", "kind", "image", "version", "previous_version", "status", "started", "finished", "seconds",
                  "user", "forced", "config_digest", "reason")


def _in_progress(session: Session, env: Environment) -> bool:
    return any(r["status"] == "in_progress" for r in session.catalog.releases(env.name, 20))


def status(session: Session, env: Environment, *, resume: bool = True) -> dict[str, Any]:
    """The environment now; an unfinished refresh whose process died is finished first (resume=True)."""
    _require_target(env)
    fleet = open_fleet(session, env)
    resumed: list[dict[str, Any]] = []
    with fleet.try_lock() as free:
        if resume and free and (fleet.interrupted() or _in_progress(session, env)):
            with cancellable() as cancel:
                resumed = recover(session, fleet, cancel)
        state = fleet.status()
    data = state.to_dict()
    data["lb_address"] = f"http://127.0.0.1:{env.lb_port}" if env.target == "local" else state.endpoint
    data["resumed"] = resumed
    data["releases"] = [{k: r[k] for k in RELEASE_FIELDS} for r in session.catalog.releases(env.name, limit=10)]
    return data


# ---------------------------------------------------------------- runtime config


def config_get(session: Session, env: Environment, key: str | None) -> dict[str, str]:
    if key is None:
        return dict(sorted(env.runtime.items()))
    if key not in env.runtime:
        raise ConfigError(f"{runtime_path(env)}: bakery_runtime has no key '{key}' "
                          f"(keys: {', '.join(sorted(env.runtime)) or 'none'})")
    return {key: env.runtime[key]}


def _edited(session: Session, env: Environment, values: dict[str, str]) -> tuple[bytes | None, str, Environment]:
    """runtime.yml's bytes now, its text with `values` set, and the environment as that text would load
    (ConfigError, exit 2, when it would not: nothing is written)."""
    path = runtime_path(env)
    old = path.read_bytes() if path.is_file() else None
    new_text = edit_runtime_yaml(None if old is None else old.decode("utf-8"), values)
    return old, new_text, validate_runtime(session.project, env.name, new_text)


def config_set(session: Session, env: Environment, pairs: tuple[str, ...] | list[str], *,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the runtime config and roll it out: same image version, new instances (a new config digest).

    The change and its rollout are one unit: every check (the new config, the lock, the instances to replace, the
    image to relaunch) passes before runtime.yml is written, a journal written first keeps the old bytes
    (bakery.fleets.config_journal), and the old file comes back whenever the change does not roll out."""
    values = parse_pairs(pairs)
    env_preferences(env, overrides)
    _edited(session, env, values)  # bad input fails before the environment is locked or anything is written
    _require_target(env)
    path = runtime_path(env)
    fleet = open_fleet(session, env)
    with cancellable() as cancel, fleet.lock():
        resumed = recover(session, fleet, cancel)  # may settle a dead config set's journal: read the file after it
        old, new_text, new_env = _edited(session, env, values)
        summary: dict[str, Any] = {"env": env.name, "file": str(path), "set": values,
                                   "config_digest": new_env.config_digest()}
        if new_env.runtime == load_environment(session.project, env.name).runtime:
            session.progress.note(f"{env.name}: runtime config unchanged")
            return {**summary, "result": "unchanged", "release": None, "resumed": resumed}
        fleet.env = new_env  # same instances and load balancer; only the runtime config differs
        current = fleet.current()
        if current is None:
            _write_runtime(path, old, new_text)
            session.progress.note(f"{env.name}: the environment is down; the new config applies at the next deploy")
            return {**summary, "result": "written", "release": None, "resumed": resumed}
        goal = _launchable(fleet, current.version, new_env.config_digest(), new_env.runtime)
        result = _roll_out_config(session, fleet, goal, overrides, cancel, resumed, (path, old, new_text))
        return {**summary, **result.to_dict(), "file_restored": not result.ok}


def _write_runtime(path: Path, old: bytes | None, text: str) -> None:
    mode = path.stat().st_mode & 0o7777 if old is not None else 0o644
    write_atomically(path, text, mode=mode)


def _roll_out_config(session: Session, fleet: Fleet, goal: Goal, overrides: dict[str, Any] | None,
                     cancel: Cancellation, resumed: list[dict[str, Any]],
                     change: tuple[Path, bytes | None, str]) -> ReleaseResult:
    """Journal, write runtime.yml, roll out; the old bytes come back unless the change rolled out, or its refresh
    is saved for the next command to finish (the journal then follows that release's outcome)."""
    path, old, new_text = change
    env = fleet.env
    journal = ConfigChange(session.project.state_dir, env)
    journal.begin(old, new_text.encode("utf-8"))
    try:
        _write_runtime(path, old, new_text)
        session.progress.note(f"{env.name}: wrote {path}")
        result = rollout(session, fleet, goal, overrides, "config", False, cancel, resumed,
                         on_release=journal.record_release)
    except BaseException:
        if fleet.interrupted() is None:  # nothing left to finish: the change did not happen
            note = restore_note(env.name, path, journal.restore(), "config set stopped before its change rolled out")
            if note:
                session.progress.note(note)
        raise
    if result.ok:
        journal.keep()
    else:
        note = restore_note(env.name, path, journal.restore(), f"the new config did not roll out ({result.result})")
        if note:
            session.progress.note(note)
    return result
