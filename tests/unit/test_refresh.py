"""The rolling refresh's planning math (Auto Scaling instance refresh semantics) and its engine on a simulated group."""

from __future__ import annotations

import itertools

import pytest

from bakery.environments import RefreshPreferences
from bakery.errors import ConfigError
from bakery.fleets.base import Goal
from bakery.fleets.instance_group import InstanceGroup, Member
from bakery.fleets.planning import (
    Batch,
    capacity,
    checkpoint_counts,
    effective_preferences,
    next_batch,
    parse_percentages,
    plan,
)
from bakery.fleets.rolling import RefreshState, RollingRefresh
from bakery.progress import Progress
from bakery.signals import Cancellation

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- capacity


def test_four_instances_75_125_replace_two_at_a_time_one_of_them_by_surge():
    cap = capacity(4, 75, 125)
    assert (cap.min_healthy, cap.max_total, cap.batch, cap.surge) == (3, 5, 2, 1)
    # Each batch: one old goes first (3 stay in service), two new start (5 running), one more old goes once they serve.
    assert plan(cap, old=4) == [Batch(2, 1, 1), Batch(2, 1, 1)]


def test_min_100_max_110_on_four_instances_still_makes_progress_one_by_one_launching_first():
    cap = capacity(4, 100, 110)  # 110 % of 4 rounds down to 4: no room, so one surge instance like Auto Scaling
    assert (cap.min_healthy, cap.max_total, cap.batch) == (4, 5, 1)
    assert plan(cap, old=4) == [Batch(1, 0, 1)] * 4


def test_min_0_replaces_everything_at_once():
    cap = capacity(4, 0, 100)
    assert (cap.min_healthy, cap.max_total, cap.batch) == (0, 4, 4)
    assert plan(cap, old=4) == [Batch(4, 4, 0)]


def test_default_90_100_rounds_min_up_and_terminates_first_one_at_a_time():
    cap = capacity(4, 90, 100)  # 90 % of 4 = 3.6, rounded up to 4: no room, so one is terminated first
    assert (cap.min_healthy, cap.max_total, cap.batch) == (3, 4, 1)
    assert plan(cap, old=4) == [Batch(1, 1, 0)] * 4


def test_ten_instances_90_120_replace_three_at_a_time():
    cap = capacity(10, 90, 120)
    assert (cap.min_healthy, cap.max_total, cap.batch) == (9, 12, 3)
    first = plan(cap, old=10)[0]
    assert first == Batch(3, 1, 2)


def test_exclusive_data_volume_never_surges():
    cap = capacity(1, 0, 200, exclusive=True)
    assert (cap.min_healthy, cap.max_total) == (0, 1)
    assert plan(cap, old=1) == [Batch(1, 1, 0)]


def test_first_deploy_launches_the_whole_capacity():
    assert plan(capacity(4, 75, 125), old=0) == [Batch(4, 0, 0)]


def test_kept_matching_instances_count_as_done():
    assert plan(capacity(4, 75, 125), old=1, new=3) == [Batch(1, 0, 1)]


def test_scale_in_removes_the_extra_old_instances():
    batches = plan(capacity(2, 50, 100), old=4)
    assert sum(b.launch for b in batches) == 2
    assert sum(b.terminate_before + b.terminate_after for b in batches) == 4


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_counts_round_up_and_merge():
    assert checkpoint_counts(4, [25, 50, 100]) == [(1, 25), (2, 50), (4, 100)]
    assert checkpoint_counts(3, [50, 100]) == [(2, 50), (3, 100)]
    assert checkpoint_counts(2, [10, 20, 100]) == [(1, 10), (2, 100)]


def test_batches_stop_exactly_at_checkpoints():
    batches = plan(capacity(4, 75, 125), old=4, checkpoints=[25, 50, 100])
    assert [b.launch for b in batches] == [1, 1, 2]
    assert [b.checkpoint for b in batches] == [25, 50, 100]
    batches = plan(capacity(4, 75, 125), old=4, checkpoints=[50, 100])
    assert [(b.launch, b.checkpoint) for b in batches] == [(2, 50), (2, 100)]


# ---------------------------------------------------------------- invariants over many preferences


@pytest.mark.parametrize("desired", [1, 2, 3, 4, 5, 7, 10])
def test_every_plan_keeps_min_healthy_and_max_running_and_ends_on_the_new_version(desired):
    checkpoint_sets = ([], [50, 100], [20, 60, 100])
    for min_pct, max_pct, checkpoints in itertools.product(range(0, 101, 10), range(100, 201, 25), checkpoint_sets):
        if max_pct < min_pct or (min_pct == 100 and max_pct == 100):
            continue
        cap = capacity(desired, min_pct, max_pct)
        old, new = desired, 0
        for batch in plan(cap, old=old, checkpoints=checkpoints):
            in_service = old + new - batch.terminate_before
            assert in_service >= cap.min_healthy, (desired, min_pct, max_pct, batch)
            assert in_service + batch.launch <= cap.max_total, (desired, min_pct, max_pct, batch)
            old -= batch.terminate_before + batch.terminate_after
            new += batch.launch
            assert old + new >= cap.min_healthy
        assert (old, new) == (0, desired)


def test_next_batch_never_terminates_when_already_below_the_minimum():
    cap = capacity(4, 75, 125)
    batch = next_batch(cap, old=2, new=0, remaining=4)  # two instances died on their own
    assert batch.terminate_before == 0 and batch.launch >= 1


# ---------------------------------------------------------------- preferences from flags


def test_flags_override_and_are_validated():
    base = RefreshPreferences(min_healthy_percentage=90, max_healthy_percentage=100)
    prefs = effective_preferences(base, {"min_healthy_percentage": 50, "max_healthy_percentage": 150, "bake_time": None,
                                         "checkpoint_percentages": parse_percentages("50,100")})
    chosen = (prefs.min_healthy_percentage, prefs.max_healthy_percentage, prefs.checkpoint_percentages)
    assert chosen == (50, 150, [50, 100])
    with pytest.raises(ConfigError, match="--checkpoint-percentages"):
        effective_preferences(base, {"checkpoint_percentages": [50, 90]})
    with pytest.raises(ConfigError, match="needs --max-healthy-percentage above 100"):
        effective_preferences(base, {"min_healthy_percentage": 100, "max_healthy_percentage": 100})
    with pytest.raises(ConfigError, match="--max-healthy-percentage must be from 100 to 200"):
        effective_preferences(base, {"max_healthy_percentage": 250})
    with pytest.raises(ConfigError, match="integers"):
        parse_percentages("50,all")


# ---------------------------------------------------------------- the engine on a simulated group


class FakeGroup(InstanceGroup):
    """Instances that pass their health checks unless their version is broken; records in-service counts."""

    def __init__(self, desired: int, broken: set[str] = frozenset()):
        self.desired = desired
        self.broken = broken
        self.members: dict[str, Member] = {}
        self.counter = itertools.count(1)
        self.min_seen = None
        self.max_running = 0
        self.events: list[str] = []

    def add(self, version: str, digest: str = "c1") -> None:
        name = self.new_name()
        self.members[name] = Member(name, version, digest, True, True, True, True, "L7OK 200",
                                    float(next(self.counter)))

    def _track(self) -> None:
        in_service = sum(1 for m in self.members.values() if m.in_service)
        self.min_seen = in_service if self.min_seen is None else min(self.min_seen, in_service)
        self.max_running = max(self.max_running, len(self.members))

    def observe(self):
        self._track()
        return [Member(**vars(m)) for m in self.members.values()]

    def new_name(self):
        return f"i{next(self.counter)}"

    def launch(self, goal, name):
        self.members[name] = Member(name, goal.version, goal.config_digest, True, False, False, False, "INI",
                                    float(next(self.counter)))
        self.events.append(f"launch {name} {goal.version}")
        self._track()

    def register(self, name):
        self.members[name].registered = True
        self.members[name].check_passed = self.members[name].version not in self.broken
        broken = self.members[name].version in self.broken
        self.members[name].check = "L4CON Connection refused" if broken else "L7OK 200"

    def probe(self, name):
        ok = self.members[name].version not in self.broken
        return ok, "status 200" if ok else "connection refused"

    def enable(self, name):
        assert self.members[name].version not in self.broken, "a broken instance must never take traffic"
        self.members[name].in_service = True
        self._track()

    def retire(self, name, graceful):
        self.events.append(f"retire {name} {'graceful' if graceful else 'at once'}")
        self.members[name].in_service = False
        self._track()
        del self.members[name]

    def probe_through_lb(self, requests):
        return any(m.in_service for m in self.members.values()), "ok"

    def versions(self):
        return sorted(m.version for m in self.members.values())


def goal(version: str, digest: str = "c1") -> Goal:
    return Goal(image="webapp", version=version, image_ref=f"localhost/bakery/webapp:{version}", config_digest=digest)


def run_refresh(group, target, previous, saved=None, **prefs):
    preferences = RefreshPreferences(**{"min_healthy_percentage": 75, "max_healthy_percentage": 125,
                                        "instance_warmup": 0, "health_check_grace": 1, **prefs})
    state = RefreshState(release_id=1, kind="deploy", env="t", run_id="r", pid=1, goal=goal(target),
                         previous=goal(previous) if previous else None, preferences=vars(preferences),
                         desired=group.desired)
    saves = saved if saved is not None else []
    return RollingRefresh(group, state, Progress(stream=open("/dev/null", "w")), Cancellation(),
                          lambda s: saves.append(s.to_dict())).run()


def test_engine_replaces_everything_without_going_below_the_minimum():
    group = FakeGroup(4)
    for _ in range(4):
        group.add("v1")
    outcome = run_refresh(group, "v2", "v1")
    assert outcome.status == "succeeded" and outcome.replaced == 4 and outcome.total == 4
    assert group.versions() == ["v2"] * 4
    assert group.min_seen >= 3 and group.max_running <= 5
    assert all("graceful" in e for e in group.events if e.startswith("retire"))


def test_engine_rolls_back_a_broken_version_that_never_took_traffic():
    group = FakeGroup(4, broken={"v2"})
    for _ in range(4):
        group.add("v1")
    outcome = run_refresh(group, "v2", "v1")
    assert outcome.status == "rolled_back"
    assert "failed its health check GET /health" in outcome.reason and "connection refused" in outcome.reason
    assert group.versions() == ["v1"] * 4 and group.min_seen >= 3
    assert any(e.endswith("at once") for e in group.events), "the broken instances are removed without a graceful stop"


def test_engine_without_auto_rollback_fails_and_removes_only_unserved_instances():
    group = FakeGroup(4, broken={"v2"})
    for _ in range(4):
        group.add("v1")
    outcome = run_refresh(group, "v2", "v1", auto_rollback=False)
    assert outcome.status == "failed" and "auto rollback is off" in outcome.reason
    assert "v2" not in group.versions() and group.min_seen >= 3


def test_engine_resumes_from_any_saved_state():
    """Kill the refresh after every save, resume from the saved state: it always ends on v2, never below the minimum."""
    first = FakeGroup(4)
    for _ in range(4):
        first.add("v1")
    saves: list[dict] = []
    run_refresh(first, "v2", "v1", saved=saves)
    for cut in range(len(saves)):
        group = FakeGroup(4)
        for _ in range(4):
            group.add("v1")

        class Killed(Exception):
            pass

        count = itertools.count()

        def save(state, cut=cut, count=count):
            if next(count) == cut:
                raise Killed

        prefs = RefreshPreferences(min_healthy_percentage=75, max_healthy_percentage=125, instance_warmup=0,
                                   health_check_grace=1)
        state = RefreshState(release_id=1, kind="deploy", env="t", run_id="r", pid=1, goal=goal("v2"),
                             previous=goal("v1"), preferences=vars(prefs), desired=4)
        devnull = Progress(stream=open("/dev/null", "w"))
        with pytest.raises(Killed):
            RollingRefresh(group, state, devnull, Cancellation(), save).run()
        resumed = RefreshState.from_dict(state.to_dict())
        outcome = RollingRefresh(group, resumed, devnull, Cancellation(), lambda s: None).run()
        assert outcome.status == "succeeded", cut
        assert group.versions() == ["v2"] * 4 and group.min_seen >= 3, cut


def test_engine_replaces_matching_instances_when_skip_matching_is_off():
    group = FakeGroup(2)
    group.add("v2")
    group.add("v2")
    outcome = run_refresh(group, "v2", "v2", skip_matching=False, min_healthy_percentage=50, max_healthy_percentage=100)
    assert outcome.status == "succeeded"
    assert sum(1 for e in group.events if e.startswith("launch")) == 2


def test_engine_keeps_matching_instances_by_default():
    group = FakeGroup(2)
    group.add("v2")
    group.add("v2")
    outcome = run_refresh(group, "v2", "v2")
    assert outcome.status == "succeeded" and not group.events


def test_matching_instances_out_of_service_from_before_are_replaced_not_waited_for():
    """Instances on the goal that are out of the load balancer and dead (e.g. their processes went with a host
    restart while the container state still says running) are replaced like old ones, not brought in."""
    group = FakeGroup(2)
    group.add("v2")
    group.add("v2")
    for m in group.members.values():
        m.in_service, m.check_passed, m.check = False, False, "L4CON Connection refused"
    dead = set(group.members)
    group.probe = lambda name: (name not in dead, "connection refused" if name in dead else "status 200")
    outcome = run_refresh(group, "v2", "v2", min_healthy_percentage=50, max_healthy_percentage=100)
    assert outcome.status == "succeeded", outcome.reason
    assert not dead & set(group.members) and len(group.members) == 2
    assert all(m.in_service for m in group.members.values())


def test_a_new_config_digest_is_not_matching():
    group = FakeGroup(2)
    group.add("v2", "old-config")
    group.add("v2", "old-config")
    run_refresh(group, "v2", "v2", min_healthy_percentage=50, max_healthy_percentage=100)
    assert {m.config_digest for m in group.members.values()} == {"c1"}


def test_a_launch_that_fails_rolls_back():
    class NoCapacity(FakeGroup):
        def launch(self, goal, name):
            if goal.version == "v2":
                from bakery.errors import OperationError

                raise OperationError("'podman run -d' failed: no space left on device")
            super().launch(goal, name)

    group = NoCapacity(4)
    for _ in range(4):
        group.add("v1")
    outcome = run_refresh(group, "v2", "v1")
    assert outcome.status == "rolled_back"
    assert "could not be launched" in outcome.reason and "no space left" in outcome.reason
    assert group.versions() == ["v1"] * 4 and group.min_seen >= 3
