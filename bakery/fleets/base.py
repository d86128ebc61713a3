"""What every fleet target offers: the running instances of one environment, replaced by a rolling refresh.

A fleet is one environment on one target. The local target keeps N podman
instances behind its own HAProxy and runs the refresh itself (bakery.fleets.rolling);
the aws target keeps an Auto Scaling group and lets EC2 Auto Scaling run the
same refresh (StartInstanceRefresh with the same preferences). Everything the
commands need is here; release bookkeeping (catalog, gate) is target-agnostic
and lives in bakery.fleets.operations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

from bakery.catalog import Catalog
from bakery.config import Project
from bakery.environments import Environment, RefreshPreferences
from bakery.fleets.state import EnvironmentState, environment_folder
from bakery.progress import Progress
from bakery.signals import Cancellation


@dataclass(frozen=True)
class Goal:
    """What every instance of the environment should run: one image version with one runtime config."""

    image: str
    version: str
    image_ref: str
    config_digest: str
    runtime: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    git_commit: str = ""
    git_message: str = ""
    image_id: str = ""  # launch by id: a tag can be moved by another bake, the id is exactly the version baked

    def matches(self, version: str | None, config_digest: str | None) -> bool:
        return version == self.version and config_digest == self.config_digest

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Goal:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class InstanceStatus:
    """One instance as `status` shows it."""

    name: str
    version: str | None
    config_digest: str | None
    state: str  # the instance itself: running, exited, created, ... (EC2: pending, running, ...)
    health: str  # the load balancer's view: UP, DOWN, DRAIN, MAINT, absent
    lb_state: str  # ready, drain, maint, absent
    in_service: bool
    address: str | None  # where it answers directly (local: 127.0.0.1:PORT)
    check: str = ""  # the last health check: 'L7OK 200', 'L4CON Connection refused'
    created: str | None = None
    git_commit: str | None = None
    # the parameters it resolved: key -> {ref, version, refresh, checked}, never a value (bakery.params.report);
    # None when it does not say (aws, an image from before parameters)
    params: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FleetStatus:
    env: str
    target: str
    state: str  # up, degraded, down, refreshing (a live refresh holds the environment), interrupted
    endpoint: str | None
    lb_running: bool
    desired: int
    instances: list[InstanceStatus]
    refresh: dict[str, Any] | None = None  # the refresh in progress, if any

    def versions(self) -> set[tuple[str | None, str | None]]:
        return {(i.version, i.config_digest) for i in self.instances}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["instances"] = [i.to_dict() for i in self.instances]
        return data


@dataclass
class RefreshRequest:
    """One rollout: move every instance to `goal` with these preferences; `previous` is what a rollback returns to."""

    release_id: int
    kind: str  # deploy, rollback, promote, config
    goal: Goal
    previous: Goal | None
    preferences: RefreshPreferences
    run_id: str
    # a refresh the target runs already is cancelled instead of waited for (aws; deploy --replace-running)
    replace_running: bool = False


@dataclass
class RefreshOutcome:
    """Results are data: what happened, never printed here."""

    status: str  # succeeded, rolled_back, failed
    reason: str | None
    replaced: int
    total: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Fleet(ABC):
    """One environment's instances on one target. The lock and the saved refresh are the same on every target:
    files on this host (bakery.fleets.state), so they are implemented here once."""

    target: str = ""

    def __init__(self, project: Project, catalog: Catalog, env: Environment, progress: Progress):
        self.project = project
        self.catalog = catalog
        self.env = env
        self.progress = progress
        self.folder = environment_folder(project.state_dir, env.name)
        self.env_state = EnvironmentState(self.folder, env.name)

    # ---- what every target shares: the environment's lock and its saved refresh

    def lock(self) -> AbstractContextManager[None]:
        """Exclusive hold on the environment for one changing command; fails at once, clearly, when another
        holds it."""
        return self.env_state.lock()

    def try_lock(self) -> AbstractContextManager[bool]:
        """Like lock() but yields False instead of failing when another command holds the environment."""
        return self.env_state.try_lock()

    def holder(self) -> int | None:
        """The pid of the bake.py holding the environment."""
        return self.env_state.holder()

    def interrupted(self) -> dict[str, Any] | None:
        """The saved state of a refresh whose process is gone (call while holding the lock)."""
        return self.env_state.read_refresh()

    def forget_interrupted(self) -> None:
        """Drop an interrupted refresh's state (its release was closed, or the environment is being taken down)."""
        self.env_state.forget_refresh()

    # ---- what each target implements

    @abstractmethod
    def check_goal(self, goal: Goal) -> None:
        """Raise ConfigError when the goal cannot be launched on this target (image missing, wrong image)."""

    @abstractmethod
    def status(self) -> FleetStatus:
        """Instances, their health in the load balancer, the endpoint."""

    @abstractmethod
    def current(self) -> Goal | None:
        """What the instances in service run now when they agree on it (the majority otherwise); None when
        there are none."""

    @abstractmethod
    def refresh(self, request: RefreshRequest, cancel: Cancellation,
                on_done: Callable[[RefreshOutcome], None]) -> RefreshOutcome:
        """Replace every instance not matching request.goal, blocking until done, rolled back or failed.
        on_done(outcome) records the release before the fleet forgets the refresh's state."""

    @abstractmethod
    def resume(self, cancel: Cancellation,
               on_done: Callable[[RefreshOutcome], None]) -> tuple[dict[str, Any], RefreshOutcome]:
        """Finish (or roll back) the interrupted refresh; returns its saved state and the outcome."""

    def stop_live_refresh(self, how: str, cancel: Cancellation) -> dict[str, Any] | None:
        """When the target itself runs a refresh of this environment (EC2 Auto Scaling does; a local refresh
        lives only in the bake.py holding the lock), ask it to 'cancel' or 'rollback' and wait until it ended.
        Returns what ended, else None."""
        return None

    def known_runtime(self, config_digest: str) -> dict[str, str] | None:
        """The runtime config deployed under this digest before, when the target kept it."""
        return None

    def adopt(self, version: str | None, run_id: str) -> None:
        """Record in the catalog a version the target knows but this checkout does not (aws: from AMI tags).
        Locally the catalog is the only record, so there is nothing to adopt."""
        return None

    def release_before(self, current: Goal, run_id: str) -> Goal | None:
        """The release before `current` as the target remembers it, when the catalog has none (aws: SSM history)."""
        return None

    @abstractmethod
    def goal_for(self, version: str | None, digest: str | None, runtime: dict[str, str] | None = None) -> Goal | None:
        """A goal for a version of the environment's image with a config (runtime looked up by digest when not
        given)."""

    @abstractmethod
    def down(self, cancel: Cancellation) -> int:
        """Desired capacity 0: drain and remove every instance, stop the load balancer. Returns how many were
        removed."""

    def instances_of(self, version: str) -> Iterator[InstanceStatus]:
        return (i for i in self.status().instances if i.version == version)
