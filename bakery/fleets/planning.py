"""Rolling-refresh planning, pure: the semantics of EC2 Auto Scaling instance refresh as arithmetic.

`capacity()` turns the refresh preferences into instance counts (MinHealthyPercentage
rounded up, MaxHealthyPercentage rounded down, always room to make progress),
`next_batch()` decides the next step from the counts observed now, and `plan()`
simulates the whole refresh with it (for progress, tests and dry runs). The rolling
engine (bakery.fleets.rolling) asks `next_batch()` at every step; nothing here
touches an instance, so all of it is unit-tested.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from bakery.data_volume_rules import check_data_volume_preferences
from bakery.environments import Environment, RefreshPreferences, check_preferences
from bakery.errors import ConfigError


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


def capacity(desired: int, min_healthy_percentage: int, max_healthy_percentage: int,
             exclusive: bool = False) -> Capacity:
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


def checkpoint_room(thresholds: list[tuple[int, int]], new: int) -> int | None:
    """New instances allowed before the next checkpoint (None: no checkpoint ahead)."""
    return next((count - new for count, _ in thresholds if count > new), None)


def plan(cap: Capacity, old: int, new: int = 0, checkpoints: list[int] | None = None) -> list[Batch]:
    """Every batch of a refresh that goes as planned, from `old` instances to replace and `new` ones kept."""
    thresholds = checkpoint_counts(cap.desired, checkpoints or [])
    batches: list[Batch] = []
    while old > 0 or new < cap.desired:
        batch = next_batch(cap, old, new, max(0, cap.desired - new), checkpoint_room(thresholds, new))
        if batch.launch == 0 and batch.terminate_before + batch.terminate_after == 0:
            raise AssertionError(f"no progress possible: {cap}, old={old}, new={new}")
        old -= batch.terminate_before + batch.terminate_after
        new += batch.launch
        reached = next((pct for count, pct in thresholds if count == new and batch.launch), None)
        batches.append(dataclasses.replace(batch, checkpoint=reached))
        if len(batches) > 1000:
            raise AssertionError("plan does not converge")
    return batches


def flag_name(field: str) -> str:
    """A refresh preference as its command-line flag: min_healthy_percentage -> --min-healthy-percentage."""
    return "--" + field.replace("_", "-")


def effective_preferences(base: RefreshPreferences, overrides: dict[str, Any]) -> RefreshPreferences:
    """The environment's preferences with command-line overrides, checked by the rules the file follows
    (environments.check_preferences); a ConfigError names the flag."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return check_preferences(dataclasses.replace(base, **values), flag_name)


def env_preferences(env: Environment, overrides: dict[str, Any] | None) -> RefreshPreferences:
    """effective_preferences for one environment: on aws with a data volume the flags must also keep the hand-over
    rules (terminate before launch, one slot at a time), refused before a release is recorded."""
    prefs = effective_preferences(env.refresh, overrides or {})
    if env.target == "aws" and env.data_volume is not None:
        check_data_volume_preferences(prefs, env.instances, flag_name)
    return prefs


def parse_percentages(text: str | None) -> list[int] | None:
    """'25,50,100' -> [25, 50, 100]; ConfigError on anything else."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag_name('checkpoint_percentages')} must be integers separated by commas, e.g. 50,100; "
                          f"got '{text}'") from None
