"""The rolling-refresh engine: EC2 Auto Scaling instance refresh, run by bakery on a target that has none.

`RollingRefresh` works on an `InstanceGroup`: the primitives of a target that does
not refresh by itself (the local target; on AWS, Auto Scaling runs the same
semantics). The counts come from the pure planning in bakery.fleets.planning. It is
written to be killed at any moment: every step starts from what it observes
(instances, the load balancer's view), so the next run picks up where the last one
stopped, and an instance is only ever taken out of service while at least the
minimum healthy capacity stays in service.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bakery.environments import RefreshPreferences
from bakery.errors import BakeryError
from bakery.fleets.base import Goal, RefreshOutcome
from bakery.fleets.instance_group import InstanceGroup, Member
from bakery.fleets.planning import Capacity, capacity, checkpoint_counts, checkpoint_room, next_batch
from bakery.progress import Progress
from bakery.signals import Cancellation

log = logging.getLogger("bakery.refresh")

POLL = 0.2


class RefreshFailed(Exception):
    """A health check or checkpoint failed; the message says which instance, check and last answer."""


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
    # present at the start and replaced even though they match (skip_matching off)
    replace: list[str] = field(default_factory=list)
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

    def __init__(self, group: InstanceGroup, state: RefreshState, progress: Progress, cancel: Cancellation,
                 save: Callable[[RefreshState], None]):
        self.group = group
        self.state = state
        self.progress = progress
        self.cancel = cancel
        self._save = save
        self._unconfirmed: list[str] = []  # launches a killed run recorded whose instance never appeared
        self._retried: set[str] = set()  # those launched again here, under the same name

    def save(self) -> None:
        self._save(self.state)

    def note(self, message: str) -> None:
        log.info("%s", message)
        self.progress.note(f"{self.state.env}: {message}")

    # ---- the whole refresh

    def run(self) -> RefreshOutcome:
        state = self.state
        prefs = state.prefs
        seen = {m.name for m in self.group.observe()}
        self._unconfirmed = [name for name in state.launched if name not in seen and name not in state.enabled]
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
        back = dataclasses.replace(prefs, checkpoint_percentages=[], checkpoint_delay=0, bake_time=0,
                                   skip_matching=True)
        try:
            self._converge(previous, back, rollback=True)
        except RefreshFailed as again:
            return self._outcome("failed", f"{state.failure}; the rollback failed too: {again}")
        self.note(f"rolled back: all {state.desired} instances on {previous.image}:{previous.version}")
        return self._outcome("rolled_back", state.failure)

    def _outcome(self, status: str, reason: str | None) -> RefreshOutcome:
        state = self.state
        return RefreshOutcome(status=status, reason=reason, replaced=state.replaced(), total=state.total,
                              seconds=round(time.time() - state.started, 1),
                              details={"phase": state.phase, "launched": sorted(state.launched),
                                       "resumed_by": state.resumed_by, "failure": state.failure})

    # ---- converging on one goal

    def _split(self, members: list[Member], goal: Goal, skip_matching: bool,
               rollback: bool) -> tuple[list[Member], list[Member]]:
        """(new, old): instances on the goal that stay, and the ones to replace."""
        replace = set() if rollback else set(self.state.replace)
        new, old = [], []
        for m in members:
            matches = goal.matches(m.version, m.config_digest)
            launched_here = m.name in self.state.launched
            # An instance from before this refresh that takes no traffic is not waited for: it may be dead
            # (a host restart leaves containers that look running), so it is replaced like an old one.
            kept = m.in_service or launched_here
            if matches and kept and m.name not in replace and (skip_matching or launched_here or rollback):
                new.append(m)
            else:
                old.append(m)
        return new, old

    def _converge(self, goal: Goal, prefs: RefreshPreferences, rollback: bool) -> None:
        """Step by step until every instance runs the goal; each step starts from what is observed now."""
        state = self.state
        cap = capacity(state.desired, prefs.min_healthy_percentage, prefs.max_healthy_percentage,
                       self.group.exclusive)
        thresholds = [] if rollback else checkpoint_counts(state.desired, prefs.checkpoint_percentages)
        first = True
        while True:
            self.cancel.check()
            new, old = self._split(self.group.observe(), goal, prefs.skip_matching, rollback)
            if first:
                self._begin(new, old, goal, cap, rollback)
                first = False
            self._remove_idle(new, old)
            pending = [m.name for m in new if m.running and not m.in_service]
            if pending:
                self._bring_in(pending, goal, prefs)
                continue
            new_in = [m for m in new if m.in_service]
            old_in = sorted((m for m in old if m.in_service), key=lambda m: m.created)
            if len(new_in) > state.desired:  # scaled in: the newest extra instances go like old ones
                self._retire_in_service(sorted(new_in, key=lambda m: m.created)[state.desired:], cap)
                continue
            self._checkpoint_if_reached(len(new_in), thresholds, goal, prefs)
            if not old_in and len(new_in) >= state.desired:
                return
            self._step(goal, prefs, cap, thresholds, old_in, len(new_in), rollback)

    def _begin(self, new: list[Member], old: list[Member], goal: Goal, cap: Capacity, rollback: bool) -> None:
        """Record how many instances the refresh puts in service, and say what it is about to do."""
        state = self.state
        if not rollback and not state.total:
            state.total = max(0, state.desired - len(new))
            self.save()
        self.note(f"{'rollback' if rollback else 'refresh'}: {len([m for m in new if m.in_service])} of "
                  f"{state.desired} instances already on {goal.image}:{goal.version}, {len(old)} to replace; "
                  f"at least {cap.min_healthy} stay in service, at most {cap.max_total} run at once, "
                  f"{cap.batch} replaced at a time")

    def _remove_idle(self, new: list[Member], old: list[Member]) -> None:
        """Instances that take no traffic go first: no capacity is lost."""
        state = self.state
        for m in old:
            if not m.in_service:
                served = m.name not in state.launched or m.name in state.enabled
                self.note(f"removing {m.name} ({m.version}; not in service)")
                self.group.retire(m.name, graceful=served and m.running)
        # New instances that stopped cannot come back: remove them. Running ones not yet in service
        # (launched by a run that was interrupted) are brought in like freshly launched ones.
        for m in new:
            if not m.running:
                self.note(f"removing {m.name} (it stopped)")
                self.group.retire(m.name, graceful=False)

    def _step(self, goal: Goal, prefs: RefreshPreferences, cap: Capacity, thresholds: list[tuple[int, int]],
              old_in: list[Member], new_count: int, rollback: bool) -> None:
        """One batch: retire old ones first as far as the minimum allows, launch, bring in, retire the rest."""
        state = self.state
        room = checkpoint_room(thresholds, new_count)
        batch = next_batch(cap, len(old_in), new_count, max(0, state.desired - new_count), room)
        log.info("batch %s (old in service %d, new in service %d)", batch, len(old_in), new_count)
        self._retire_in_service(old_in[:batch.terminate_before], cap)
        names = [self._new_name() for _ in range(batch.launch)]
        started = self._launch(names, goal, "rollback" if rollback else "forward")
        if started:
            self._bring_in(started, goal, prefs)
        if batch.terminate_after:
            still = {m.name for m in old_in[batch.terminate_before:]}
            current = [m for m in self.group.observe() if m.name in still and m.in_service]
            self._retire_in_service(sorted(current, key=lambda m: m.created)[:batch.terminate_after], cap)
        done, _ = self._split(self.group.observe(), goal, prefs.skip_matching, rollback)
        on_goal = min(len([m for m in done if m.in_service]), state.desired)
        self.note(f"[{on_goal}/{state.desired}] instances on {goal.version}")

    def _new_name(self) -> str:
        """A launch a killed run recorded but whose instance never appeared is retried under the same name: that
        run's launch may still be under way, and one name is one instance, so it can never start a second one
        beside the retry (an exclusive data volume would be held by two)."""
        if not self._unconfirmed:
            return self.group.new_name()
        name = self._unconfirmed.pop(0)
        self._retried.add(name)
        return name

    def _launch(self, names: list[str], goal: Goal, phase: str) -> list[str]:
        """Start new instances, recorded first: a run killed meanwhile knows they are the refresh's own. Returns
        the ones started here (not those a killed run's launch started meanwhile: the next step looks at them)."""
        for name in names:
            self.state.launched[name] = phase
        self.save()
        started = []
        for name in names:
            self.cancel.check()
            self.note(f"launching {name} ({goal.image}:{goal.version})")
            try:
                self.group.launch(goal, name)
            except BakeryError as exc:
                if name in self._retried and any(m.name == name for m in self.group.observe()):
                    self.note(f"{name} was started meanwhile by the launch of an interrupted run; taking it as is")
                    continue
                raise RefreshFailed(f"instance {name} could not be launched: {exc}") from exc
            started.append(name)
        return started

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

    # ---- new instances into service

    def _bring_in(self, names: list[str], goal: Goal, prefs: RefreshPreferences) -> None:
        """Each new instance takes traffic only once its direct probe and the load balancer's checks pass,
        then warms up."""
        group = self.group
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
                at = self._try_enable(name, members.get(name), deadline[name], last, prefs)
                if at is not None:
                    enabled_at[name] = at
                    pending.remove(name)
            if pending:
                time.sleep(POLL)
        if prefs.instance_warmup and enabled_at:
            self.note(f"warming up {', '.join(names)} for {prefs.instance_warmup} s")
            until = max(enabled_at.values()) + prefs.instance_warmup
            self._watch_names(names, until, "warmup")

    def _try_enable(self, name: str, m: Member | None, deadline: float, last: dict[str, str],
                    prefs: RefreshPreferences) -> float | None:
        """Put one new instance in service once both checks pass (returns when); RefreshFailed once its grace is
        over."""
        group = self.group
        if m is None or not m.running:
            raise RefreshFailed(f"instance {name} stopped before passing its health check GET {group.health_path}"
                                + (f" (last answer: {last[name]})" if name in last else ""))
        if not m.registered:
            group.register(name)
            return None
        ok, detail = group.probe(name)
        last[name] = detail
        if ok and m.check_passed:
            group.enable(name)
            enabled_at = time.monotonic()
            if name not in self.state.enabled:
                self.state.enabled.append(name)
                self.save()
            self.note(f"{name} passed its health checks; in service")
            return enabled_at
        if time.monotonic() > deadline:
            raise RefreshFailed(f"instance {name} failed its health check GET {group.health_path} for "
                                f"{prefs.health_check_grace} s: last answer {detail}; load balancer check: {m.check}")
        return None

    # ---- watching what is in service

    def _watch_names(self, names: list[str], until: float, what: str) -> None:
        while True:
            self.cancel.check()
            members = {m.name: m for m in self.group.observe()}
            for name in names:
                m = members.get(name)
                if m is None or not m.in_service:
                    check = m.check if m else "instance gone"
                    raise RefreshFailed(f"instance {name} failed its health check GET {self.group.health_path} "
                                        f"during {what}: load balancer check: {check}")
            if time.monotonic() >= until:
                return
            time.sleep(POLL)

    def _watch(self, goal: Goal, seconds: int, what: str) -> None:
        """Every instance on the goal must stay in service for `seconds`; then the environment answers
        through the LB."""
        names = [m.name for m in self.group.observe() if goal.matches(m.version, m.config_digest)]
        if seconds:
            self.note(f"{what}: watching {len(names)} instances for {seconds} s")
            self._watch_names(names, time.monotonic() + seconds, what)
        if not self.state.desired:
            return
        ok, detail = self.group.probe_through_lb(max(4, 2 * self.state.desired))
        if not ok:
            raise RefreshFailed(f"{what}: GET {self.group.health_path} through the load balancer failed: {detail}")

    def _checkpoint_if_reached(self, on_goal: int, thresholds: list[tuple[int, int]], goal: Goal,
                               prefs: RefreshPreferences) -> None:
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
