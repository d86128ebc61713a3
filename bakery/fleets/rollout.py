"""One release of an environment, on any target: recorded in the catalog, rolled out by the environment's
fleet, closed with its outcome; and the recovery of a release whose process died.

A refresh left unfinished by a process that died (kill -9, power loss) is finished
or rolled back by the next command that touches the environment (recover), before
anything else happens to it. The commands that start releases are in
bakery.fleets.operations.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bakery.catalog import Catalog
from bakery.config import Project
from bakery.environments import Environment
from bakery.errors import BakeryError, Interrupted
from bakery.fleets.base import Fleet, Goal, RefreshOutcome, RefreshRequest
from bakery.fleets.config_journal import find_release, settle_locked
from bakery.fleets.planning import env_preferences
from bakery.progress import Progress
from bakery.runs import Run
from bakery.signals import Cancellation


@dataclass
class Session:
    """What every fleet operation works with: the project, its catalog, where progress goes."""

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
        return {"env": self.env, "kind": self.kind, "image": self.image, "from": self.from_version,
                "to": self.to_version, "result": self.result, "replaced": self.replaced, "total": self.total,
                "duration": self.seconds, "reason": self.reason, "release": self.release_id,
                "endpoint": self.endpoint, "forced": self.forced, "config_digest": self.config_digest,
                "resumed": self.resumed}


# ---------------------------------------------------------------- releases in the catalog


def close_release(catalog: Catalog, release_id: int, outcome: RefreshOutcome) -> None:
    catalog.finish_release(release_id, outcome.status, reason=outcome.reason,
                           details={"replaced": outcome.replaced, "total": outcome.total,
                                    "refresh_seconds": outcome.seconds, **outcome.details})


def _result(env: Environment, fleet: Fleet, kind: str, goal: Goal, from_version: str | None,
            outcome: RefreshOutcome, release_id: int, forced: bool) -> ReleaseResult:
    endpoint = fleet.status().endpoint
    return ReleaseResult(env=env.name, kind=kind, image=goal.image, from_version=from_version, to_version=goal.version,
                         result=outcome.status, replaced=outcome.replaced, total=outcome.total,
                         seconds=outcome.seconds, reason=outcome.reason, release_id=release_id, endpoint=endpoint,
                         forced=forced, config_digest=goal.config_digest)


def recover(session: Session, fleet: Fleet, cancel: Cancellation) -> list[dict[str, Any]]:
    """Finish what a dead process left (call while holding the environment's lock). Returns the releases
    finished."""
    env, catalog = fleet.env, session.catalog
    finished: list[dict[str, Any]] = []
    handled: set[int] = set()
    data = fleet.interrupted()
    if data:
        release_id = data["release_id"]
        row = find_release(catalog, env.name, release_id)
        if row is None or row["status"] != "in_progress":
            fleet.forget_interrupted()  # the release was closed; only the state file was left
        else:
            handled.add(release_id)
            finished.append(_resume(session, fleet, data, cancel))
    for row in catalog.releases(env.name, limit=100):
        if row["status"] == "in_progress" and row["id"] not in handled:
            # Holding the lock, no live process is rolling this environment out: that process died before its
            # refresh began.
            why = f"the {row['kind']} process (pid {row['pid']}) ended before its refresh began"
            catalog.finish_release(row["id"], "abandoned", reason=why)
    note = settle_locked(session.project.state_dir, catalog, env)  # a dead config set's runtime.yml
    if note:
        session.progress.note(note)
    return finished


def _resume(session: Session, fleet: Fleet, data: dict[str, Any], cancel: Cancellation) -> dict[str, Any]:
    """Finish (or roll back) the refresh a dead process left, and close its release."""
    env, catalog = fleet.env, session.catalog
    release_id = data["release_id"]
    goal = Goal.from_dict(data["goal"])
    session.progress.note(f"{env.name}: release #{release_id} ({data['kind']} to {goal.version}) was left unfinished "
                          f"by pid {data.get('pid')}; "
                          f"{'rolling it back' if data.get('phase') == 'rollback' else 'finishing it'}")
    run = Run.start(session.project.state_dir, "resume")
    _, outcome = fleet.resume(cancel, on_done=lambda o: close_release(catalog, release_id, o))
    run.write_result({"release": release_id, "env": env.name, **outcome.to_dict()})
    return {"release": release_id, "kind": data["kind"], "to": goal.version, "result": outcome.status,
            "reason": outcome.reason}


def rollout(session: Session, fleet: Fleet, goal: Goal, overrides: dict[str, Any] | None, kind: str, forced: bool,
            cancel: Cancellation, resumed: list[dict[str, Any]], replace_running: bool = False,
            on_release: Callable[[int, str], None] | None = None) -> ReleaseResult:
    """Record a release, let the fleet refresh to `goal`, close the release with the outcome (hold the lock).
    on_release(release_id, run_id) is told the release as soon as it is recorded (config set's journal)."""
    env, catalog = fleet.env, session.catalog
    prefs = env_preferences(env, overrides)
    current = fleet.current()
    run = Run.start(session.project.state_dir, kind)
    release_id = catalog.start_release(
        env.name, goal.image, goal.version, previous_version=current.version if current else None, kind=kind,
        user=getpass.getuser(), forced=forced, run_id=run.id, pid=os.getpid(), config_digest=goal.config_digest,
        details={"runtime": goal.runtime, "preferences": dataclasses.asdict(prefs), "instances": env.instances,
                 "previous_config_digest": current.config_digest if current else None})
    if on_release is not None:
        on_release(release_id, run.id)
    was = f"{current.image}:{current.version}" if current else "nothing"
    session.progress.note(f"{env.name}: release #{release_id}: {kind} {goal.image}:{goal.version} "
                          f"(config {goal.config_digest[7:19]}), replacing {was}"
                          + (" (verification gate forced open)" if forced else ""))
    request = RefreshRequest(release_id=release_id, kind=kind, goal=goal, previous=current, preferences=prefs,
                             run_id=run.id, replace_running=replace_running)
    try:
        outcome = fleet.refresh(request, cancel, on_done=lambda o: close_release(catalog, release_id, o))
    except (Interrupted, KeyboardInterrupt):
        run.write_result({"status": "interrupted", "release": release_id, "env": env.name})
        session.progress.note(f"{env.name}: stopped where it was; the next ./bake.py deploy or ./bake.py status "
                              f"--env {env.name} finishes release #{release_id}")
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
