"""The rolling refresh, with the semantics of EC2 Auto Scaling instance refresh.

Planning is pure and unit-tested: `capacity()` turns the refresh preferences into
instance counts (MinHealthyPercentage rounded up, MaxHealthyPercentage rounded down,
always room to make progress), `next_batch()` decides the next step from the counts
observed now, and `plan()` simulates the whole refresh with it (for progress, tests
and dry runs).

Execution (`RollingRefresh`) works on an `InstanceGroup`: the primitives of a target
that does not refresh by itself (the local target; on AWS, Auto Scaling runs the same
semantics). It is written to be killed at any moment: every step starts from what it
observes (instances, the load balancer's view), so the next run picks up where the
last one stopped, and an instance is only ever taken out of service while at least
the minimum healthy capacity stays in service.

One batch: (1) drain and retire `terminate_before` old instances (only as far as the
minimum healthy capacity allows), (2) launch `launch` new ones, registered in the
load balancer with health checks but no traffic, (3) each takes traffic once its own
direct probe and the load balancer's checks pass, then warms up for InstanceWarmup
seconds while it must stay healthy, (4) drain and retire `terminate_after` old ones.
A checkpoint pauses CheckpointDelay seconds and probes the whole environment through
the load balancer; BakeTime watches it after the last batch. A failure rolls back to
the previous version with the same care when AutoRollback is on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from bakery.environments import RefreshPreferences
from bakery.errors import BakeryError, ConfigError
from bakery.fleets.base import Goal, RefreshOutcome
from bakery.progress import Progress
from bakery.signals import Cancellation

log = logging.getLogger("bakery.refresh")

POLL = 0.2


# ---------------------------------------------------------------- planning (pure)


@dataclass(frozen=True)
class Capacity:
    """Instance counts of one refresh, derived from the preferences like Auto Scaling does."""

    desired: int
    min_healthy: int  # must stay in service at every moment (MinHealthyPercentage, rounded up)
    max_total: int  # may exist at once, in service or pending (MaxHealthyPercentage, rounded down)

    @property
    def batch(self) -> int:
        """How many instances are replaced at the same time."""
        return max(1, self.max_total - self.min_healthy)

    @property
    def surge(self) -> int:
        """How many new instances may run beside the old ones before any old one goes."""
        return self.max_total - self.desired


def capacity(desired: int, min_healthy_percentage: int, max_healthy_percentage: int, exclusive: bool = False) -> Capacity:
    """Counts for a group of `desired` instances. `exclusive`: an instance's data volume can be attached to one
    instance only, so the old one must be gone before its replacement starts (no surge, nothing kept in service)."""
    min_healthy = math.ceil(desired * min_healthy_percentage / 100)
    max_total = max(desired, desired * max_healthy_percentage // 100)
    if desired > 0 and max_total - min_healthy < 1:
        # Rounding left no room to replace anything: like Auto Scaling, still replace one at a time,
        # launching first when a surge was asked for (max > 100), terminating first otherwise.
        if max_healthy_percentage > 100:
            max_total = min_healthy + 1
        else:
            min_healthy = max_total - 1
    if exclusive:
        max_total = desired
        min_healthy = min(min_healthy, max(desired - 1, 0))
    return Capacity(desired, min_healthy, max_total)


def checkpoint_counts(desired: int, percentages: list[int]) -> list[tuple[int, int]]:
    """(instances on the new version, percentage) at which a refresh pauses, ascending, one per count."""
    result: dict[int, int] = {}
    for pct in sorted(percentages):
        count = math.ceil(desired * pct / 100)
        if count > 0:
            result.setdefault(count, pct)
    return sorted(result.items())


@dataclass(frozen=True)
class Batch:
    launch: int  # new instances started in this batch
    terminate_before: int  # old instances retired before the new ones start (terminate-and-launch)
    terminate_after: int  # old instances retired once the new ones are in service (launch-before-terminating)
    checkpoint: int | None = None  # percentage reached after this batch, when it is a checkpoint


def next_batch(cap: Capacity, old: int, new: int, remaining: int, checkpoint_room: int | None = None) -> Batch:
    """The next step given what is in service now: `old` instances to replace, `new` ones on the target,
    `remaining` new ones still to launch; `checkpoint_room`: new ones allowed before the next checkpoint."""
    total = old + new
    launch = min(remaining, max(cap.batch, cap.desired - total))
    if checkpoint_room is not None:
        launch = min(launch, checkpoint_room)
    if remaining > 0:
        launch = max(launch, 1)
    floor = min(cap.min_healthy, total)  # never go below the minimum (or below what is left, when already under it)
    while True:
        terminate_before = min(old, max(0, total + launch - cap.max_total))
        if total - terminate_before >= floor or launch <= 1:
            break
        launch -= 1
    if total - terminate_before < floor:
        terminate_before = max(0, total - floor)
    after = total - terminate_before + launch
    terminate_after = min(old - terminate_before, max(0, after - cap.desired))
    return Batch(launch, terminate_before, terminate_after)


def plan(cap: Capacity, old: int, new: int = 0, checkpoints: list[int] | None = None) -> list[Batch]:
    """Every batch of a refresh that goes as planned, from `old` instances to replace and `new` ones kept."""
    thresholds = checkpoint_counts(cap.desired, checkpoints or [])
    batches: list[Batch] = []
    while old > 0 or new < cap.desired:
        room = next((count - new for count, _ in thresholds if count > new), None)
        batch = next_batch(cap, old, new, max(0, cap.desired - new), room)
        if batch.launch == 0 and batch.terminate_before + batch.terminate_after == 0:
            raise AssertionError(f"no progress possible: {cap}, old={old}, new={new}")
        old -= batch.terminate_before + batch.terminate_after
        new += batch.launch
        reached = next((pct for count, pct in thresholds if count == new and batch.launch), None)
        batches.append(dataclasses.replace(batch, checkpoint=reached))
        if len(batches) > 1000:
            raise AssertionError("plan does not converge")
    return batches


def effective_preferences(base: RefreshPreferences, overrides: dict[str, Any]) -> RefreshPreferences:
    """The environment's preferences with command-line overrides, validated like the file (ConfigError names the flag)."""
    values = {k: v for k, v in overrides.items() if v is not None}
    prefs = dataclasses.replace(base, **values)
    flag = {k: "--" + k.replace("_", "-") for k in RefreshPreferences.__dataclass_fields__}
    if not 0 <= prefs.min_healthy_percentage <= 100:
        raise ConfigError(f"{flag['min_healthy_percentage']} must be from 0 to 100, got {prefs.min_healthy_percentage}")
    if not 100 <= prefs.max_healthy_percentage <= 200:
        raise ConfigError(f"{flag['max_healthy_percentage']} must be from 100 to 200, got {prefs.max_healthy_percentage}")
    if prefs.max_healthy_percentage < prefs.min_healthy_percentage:
        raise ConfigError("max healthy percentage must not be below min healthy percentage "
                          f"(got {prefs.min_healthy_percentage} and {prefs.max_healthy_percentage})")
    if prefs.min_healthy_percentage == 100 and prefs.max_healthy_percentage == 100:
        raise ConfigError("min healthy percentage 100 needs --max-healthy-percentage above 100 to make progress")
    cps = prefs.checkpoint_percentages
    if cps != sorted(set(cps)) or any(not 1 <= c <= 100 for c in cps) or (cps and cps[-1] != 100):
        raise ConfigError(f"{flag['checkpoint_percentages']} must rise strictly from 1 to 100 and end at 100, got {','.join(map(str, cps))}")
    return prefs


def parse_percentages(text: str | None) -> list[int] | None:
    """'25,50,100' -> [25, 50, 100]; ConfigError on anything else."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--checkpoint-percentages must be integers separated by commas, e.g. 50,100; got '{text}'") from None


# ---------------------------------------------------------------- execution


class RefreshFailed(Exception):
    """A health check or checkpoint failed; the message says which instance, check and last answer."""


@dataclass
class Member:
    """One instance of the group, as observed now."""

    name: str
    version: str | None
    config_digest: str | None
    running: bool
    registered: bool  # known to the load balancer
    in_service: bool  # takes new requests
    check_passed: bool  # the load balancer's last health check passed
    check: str  # the load balancer's last check, for messages
    created: float
    address: str | None = None


class InstanceGroup(ABC):
    """The primitives of a target whose refresh bakery runs itself."""

    desired: int
    exclusive: bool = False  # one instance per data volume: retire before launch
    health_path: str = "/health"

    @abstractmethod
    def observe(self) -> list[Member]: ...

    @abstractmethod
    def new_name(self) -> str: ...

    @abstractmethod
    def launch(self, goal: Goal, name: str) -> None:
        """Start an instance of goal; it takes no traffic yet."""

    @abstractmethod
    def register(self, name: str) -> None:
        """Put it behind the load balancer with health checks on and no traffic (idempotent)."""

    @abstractmethod
    def probe(self, name: str) -> tuple[bool, str]:
        """Probe the instance's health check directly: (passed, what it answered)."""

    @abstractmethod
    def enable(self, name: str) -> None:
        """Let it take traffic."""

    @abstractmethod
    def retire(self, name: str, graceful: bool) -> None:
        """Take it out for good. graceful: drain, wait for requests in flight, stop cleanly, remove.
        Otherwise (it never served): out of the load balancer and removed at once."""

    @abstractmethod
    def probe_through_lb(self, requests: int) -> tuple[bool, str]:
        """Send `requests` health checks through the load balancer: (all passed, the first failure)."""


@dataclass
class RefreshState:
    """Everything a refresh needs to be resumed by another process; saved after every decision."""

    release_id: int
    kind: str
    env: str
    run_id: str
    pid: int
    goal: Goal
    previous: Goal | None
    preferences: dict[str, Any]
    desired: int
    total: int = 0  # new instances the refresh puts in service (desired minus those kept)
    phase: str = "forward"  # forward, rollback
    replace: list[str] = field(default_factory=list)  # present at the start and replaced even though they match (skip_matching off)
    launched: dict[str, str] = field(default_factory=dict)  # name -> phase it was launched in
    enabled: list[str] = field(default_factory=list)  # launched and put in service
    checkpoints_done: list[int] = field(default_factory=list)
    failure: str | None = None
    started: float = field(default_factory=time.time)
    resumed_by: list[int] = field(default_factory=list)

    @property
    def prefs(self) -> RefreshPreferences:
        return RefreshPreferences(**self.preferences)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["goal"] = self.goal.to_dict()
        data["previous"] = self.previous.to_dict() if self.previous else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefreshState:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["goal"] = Goal.from_dict(data["goal"])
        values["previous"] = Goal.from_dict(data["previous"]) if data.get("previous") else None
        return cls(**values)

    def replaced(self) -> int:
        return sum(1 for name in self.enabled if self.launched.get(name) == "forward")


class RollingRefresh:
    """Runs one refresh (and its rollback) to the end; resumable from its saved state."""

    def __init__(self, group: InstanceGroup, state: RefreshState, progress: Progress, cancel: Cancellation, save):
        self.group = group
        self.state = state
        self.progress = progress
        self.cancel = cancel
        self._save = save

    def save(self) -> None:
        self._save(self.state)

    def note(self, message: str) -> None:
        log.info("%s", message)
        self.progress.note(f"{self.state.env}: {message}")

    # ---- the whole refresh

    def run(self) -> RefreshOutcome:
        state = self.state
        prefs = state.prefs
        if state.phase == "forward":
            try:
                self._converge(state.goal, prefs, rollback=False)
                self._watch(state.goal, prefs.bake_time, "bake time")
                self.note(f"all {state.desired} instances on {state.goal.image}:{state.goal.version} and healthy")
                return self._outcome("succeeded", None)
            except RefreshFailed as failure:
                state.failure = str(failure)
                self.save()
                self.note(f"refresh failed: {failure}")
                if not prefs.auto_rollback or state.previous is None:
                    self._discard_unserved(state.goal)
                    why = "auto rollback is off" if state.previous else "there is no previous version to return to"
                    return self._outcome("failed", f"{failure} ({why})")
                state.phase = "rollback"
                self.save()
        previous = state.previous
        assert previous is not None
        self.note(f"rolling back to {previous.image}:{previous.version}")
        back = dataclasses.replace(prefs, checkpoint_percentages=[], checkpoint_delay=0, bake_time=0, skip_matching=True)
        try:
            self._converge(previous, back, rollback=True)
        except RefreshFailed as again:
            return self._outcome("failed", f"{state.failure}; the rollback failed too: {again}")
        self.note(f"rolled back: all {state.desired} instances on {previous.image}:{previous.version}")
        return self._outcome("rolled_back", state.failure)

    def _outcome(self, status: str, reason: str | None) -> RefreshOutcome:
        return RefreshOutcome(status=status, reason=reason, replaced=self.state.replaced(), total=self.state.total,
                              seconds=round(time.time() - self.state.started, 1),
                              details={"phase": self.state.phase, "launched": sorted(self.state.launched),
                                       "resumed_by": self.state.resumed_by, "failure": self.state.failure})

    # ---- converging on one goal

    def _split(self, members: list[Member], goal: Goal, skip_matching: bool, rollback: bool) -> tuple[list[Member], list[Member]]:
        """(new, old): instances on the goal that stay, and the ones to replace."""
        replace = set() if rollback else set(self.state.replace)
        new, old = [], []
        for m in members:
            matches = goal.matches(m.version, m.config_digest)
            launched_here = m.name in self.state.launched
            if matches and m.name not in replace and (skip_matching or launched_here or rollback):
                new.append(m)
            else:
                old.append(m)
        return new, old

    def _converge(self, goal: Goal, prefs: RefreshPreferences, rollback: bool) -> None:
        group, state = self.group, self.state
        cap = capacity(state.desired, prefs.min_healthy_percentage, prefs.max_healthy_percentage, group.exclusive)
        thresholds = [] if rollback else checkpoint_counts(state.desired, prefs.checkpoint_percentages)
        phase = "rollback" if rollback else "forward"
        first = True
        while True:
            self.cancel.check()
            members = group.observe()
            new, old = self._split(members, goal, prefs.skip_matching, rollback)
            if first and not rollback and not state.total:
                state.total = max(0, state.desired - len(new))
                self.save()
            if first:
                self.note(f"{'rollback' if rollback else 'refresh'}: {len([m for m in new if m.in_service])} of {state.desired} instances "
                          f"already on {goal.image}:{goal.version}, {len(old)} to replace; at least {cap.min_healthy} stay in service, "
                          f"at most {cap.max_total} run at once, {cap.batch} replaced at a time")
                first = False
            # Old instances that take no traffic go first: no capacity is lost.
            for m in old:
                if not m.in_service:
                    served = m.name not in state.launched or m.name in state.enabled
                    self.note(f"removing {m.name} ({m.version}; not in service)")
                    group.retire(m.name, graceful=served and m.running)
            # New instances that stopped cannot come back: remove them. Running ones not yet in service
            # (launched by a run that was interrupted) are brought in like freshly launched ones.
            for m in new:
                if not m.running:
                    self.note(f"removing {m.name} (it stopped)")
                    group.retire(m.name, graceful=False)
            pending = [m.name for m in new if m.running and not m.in_service]
            if pending:
                self._bring_in(pending, goal, prefs)
                continue
            new_in = [m for m in new if m.in_service]
            old_in = sorted((m for m in old if m.in_service), key=lambda m: m.created)
            if len(new_in) > state.desired:  # scaled in: the newest extra instances go like old ones
                extra = sorted(new_in, key=lambda m: m.created)[state.desired:]
                self._retire_in_service(extra, cap)
                continue
            self._checkpoint_if_reached(len(new_in), thresholds, goal, prefs)
            if not old_in and len(new_in) >= state.desired:
                return
            room = next((count - len(new_in) for count, _ in thresholds if count > len(new_in)), None)
            batch = next_batch(cap, len(old_in), len(new_in), max(0, state.desired - len(new_in)), room)
            log.info("batch %s (old in service %d, new in service %d)", batch, len(old_in), len(new_in))
            self._retire_in_service(old_in[:batch.terminate_before], cap)
            names = [group.new_name() for _ in range(batch.launch)]
            for name in names:
                state.launched[name] = phase
            self.save()
            for name in names:
                self.cancel.check()
                self.note(f"launching {name} ({goal.image}:{goal.version})")
                try:
                    group.launch(goal, name)
                except BakeryError as exc:
                    raise RefreshFailed(f"instance {name} could not be launched: {exc}") from exc
            if names:
                self._bring_in(names, goal, prefs)
            if batch.terminate_after:
                still = {m.name for m in old_in[batch.terminate_before:]}
                current = [m for m in group.observe() if m.name in still and m.in_service]
                self._retire_in_service(sorted(current, key=lambda m: m.created)[:batch.terminate_after], cap)
            done, _ = self._split(group.observe(), goal, prefs.skip_matching, rollback)
            self.note(f"[{min(len([m for m in done if m.in_service]), state.desired)}/{state.desired}] instances on {goal.version}")

    def _in_service_count(self) -> int:
        return sum(1 for m in self.group.observe() if m.in_service)

    def _retire_in_service(self, members: list[Member], cap: Capacity) -> None:
        """Drain and retire, one at a time, never going below the minimum healthy capacity."""
        grace = self.state.prefs.health_check_grace
        for m in members:
            deadline = time.monotonic() + grace
            while True:
                self.cancel.check()
                count = self._in_service_count()
                if count - 1 >= cap.min_healthy:
                    break
                if time.monotonic() > deadline:
                    raise RefreshFailed(f"only {count} instances in service and at least {cap.min_healthy} must stay "
                                        f"(min_healthy_percentage); {m.name} was not taken out")
                time.sleep(POLL)
            self.note(f"draining {m.name} ({m.version}), then stopping it")
            self.group.retire(m.name, graceful=True)

    def _bring_in(self, names: list[str], goal: Goal, prefs: RefreshPreferences) -> None:
        """Each new instance takes traffic only once its direct probe and the load balancer's checks pass, then warms up."""
        group, state = self.group, self.state
        members = {m.name: m for m in group.observe()}
        for name in names:
            if name in members and members[name].running:
                group.register(name)  # idempotent: also completes a registration an interrupted run left half done
        deadline = {name: time.monotonic() + prefs.health_check_grace for name in names}
        last: dict[str, str] = {}
        pending = list(names)
        enabled_at: dict[str, float] = {}
        while pending:
            self.cancel.check()
            members = {m.name: m for m in group.observe()}
            for name in list(pending):
                m = members.get(name)
                if m is None or not m.running:
                    raise RefreshFailed(f"instance {name} stopped before passing its health check GET {group.health_path}"
                                        + (f" (last answer: {last[name]})" if name in last else ""))
                if not m.registered:
                    group.register(name)
                    continue
                ok, detail = group.probe(name)
                last[name] = detail
                if ok and m.check_passed:
                    group.enable(name)
                    enabled_at[name] = time.monotonic()
                    if name not in state.enabled:
                        state.enabled.append(name)
                        self.save()
                    pending.remove(name)
                    self.note(f"{name} passed its health checks; in service")
                elif time.monotonic() > deadline[name]:
                    raise RefreshFailed(f"instance {name} failed its health check GET {group.health_path} for "
                                        f"{prefs.health_check_grace} s: last answer {detail}; load balancer check: {m.check}")
            if pending:
                time.sleep(POLL)
        if prefs.instance_warmup and enabled_at:
            self.note(f"warming up {', '.join(names)} for {prefs.instance_warmup} s")
            until = max(enabled_at.values()) + prefs.instance_warmup
            self._watch_names(names, until, "warmup")

    def _watch_names(self, names: list[str], until: float, what: str) -> None:
        while True:
            self.cancel.check()
            members = {m.name: m for m in self.group.observe()}
            for name in names:
                m = members.get(name)
                if m is None or not m.in_service:
                    check = m.check if m else "instance gone"
                    raise RefreshFailed(f"instance {name} failed its health check GET {self.group.health_path} during {what}: "
                                        f"load balancer check: {check}")
            if time.monotonic() >= until:
                return
            time.sleep(POLL)

    def _watch(self, goal: Goal, seconds: int, what: str) -> None:
        """Every instance on the goal must stay in service for `seconds`; then the environment answers through the LB."""
        names = [m.name for m in self.group.observe() if goal.matches(m.version, m.config_digest)]
        if seconds:
            self.note(f"{what}: watching {len(names)} instances for {seconds} s")
            self._watch_names(names, time.monotonic() + seconds, what)
        if not self.state.desired:
            return
        ok, detail = self.group.probe_through_lb(max(4, 2 * self.state.desired))
        if not ok:
            raise RefreshFailed(f"{what}: GET {self.group.health_path} through the load balancer failed: {detail}")

    def _checkpoint_if_reached(self, on_goal: int, thresholds: list[tuple[int, int]], goal: Goal, prefs: RefreshPreferences) -> None:
        for count, pct in thresholds:
            if on_goal >= count and pct not in self.state.checkpoints_done:
                self.note(f"checkpoint {pct}%: {on_goal} of {self.state.desired} instances on {goal.version}"
                          + (f"; pausing {prefs.checkpoint_delay} s" if prefs.checkpoint_delay else ""))
                self._watch(goal, prefs.checkpoint_delay, f"checkpoint {pct}%")
                self.state.checkpoints_done.append(pct)
                self.save()

    def _discard_unserved(self, goal: Goal) -> None:
        """After a failure without rollback: new instances that never took traffic are removed."""
        for m in self.group.observe():
            if m.name in self.state.launched and not m.in_service:
                self.note(f"removing {m.name} (never in service)")
                self.group.retire(m.name, graceful=False)
