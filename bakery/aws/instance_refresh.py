"""EC2 Auto Scaling instance refresh: start one with the environment's preferences, and wait for it (AWS has no waiter).

The preferences are the environment's `bakery_deploy.refresh`, one to one, so
a refresh behaves the same on the local target and on AWS (standby_instances and
scale_in_protected_instances only matter on AWS: held_back says, before the
refresh, what it will do with such instances). The wait polls
DescribeInstanceRefreshes with backoff and reports each change (status,
percentage, instances left, AWS's status reason) until the refresh ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bakery.environments import RefreshPreferences
from bakery.errors import ConfigError, OperationError

ACTIVE = ("Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking")
ROLLBACK_ALLOWED = ("Pending", "InProgress", "Baking")
ENDED = ("Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed")
MAX_POLL_SECONDS = 60.0


def preferences(prefs: RefreshPreferences, alarms: list[str]) -> dict[str, Any]:
    """StartInstanceRefresh Preferences from the environment's refresh preferences (ConfigError where AWS would
    refuse them)."""
    if prefs.max_healthy_percentage - prefs.min_healthy_percentage > 100:
        raise ConfigError(f"instance refresh: max healthy percentage {prefs.max_healthy_percentage} may be at most "
                          f"100 above min healthy percentage {prefs.min_healthy_percentage} on AWS; "
                          "raise --min-healthy-percentage or lower --max-healthy-percentage")
    result: dict[str, Any] = {
        "MinHealthyPercentage": prefs.min_healthy_percentage,
        "MaxHealthyPercentage": prefs.max_healthy_percentage,
        "InstanceWarmup": prefs.instance_warmup,
        "SkipMatching": prefs.skip_matching,
        "AutoRollback": prefs.auto_rollback,
        "BakeTime": prefs.bake_time,
        "StandbyInstances": prefs.standby_instances,
        "ScaleInProtectedInstances": prefs.scale_in_protected_instances,
    }
    if prefs.checkpoint_percentages:
        result["CheckpointPercentages"] = list(prefs.checkpoint_percentages)
        result["CheckpointDelay"] = prefs.checkpoint_delay
    if alarms:
        result["AlarmSpecification"] = {"Alarms": list(alarms)}
    return result


# What a refresh does with an instance someone held back on purpose, per preference value (AWS's "Wait" is an hour).
HELD_BACK = {
    ("ScaleInProtectedInstances", "Wait"): "AWS waits up to an hour for {its} protection to be removed, then fails the "
                                           "refresh (scale_in_protected_instances: Wait; Ignore leaves {it}, Refresh "
                                           "replaces {it})",
    ("ScaleInProtectedInstances", "Ignore"): "the refresh leaves {it} on {its} current launch template version "
                                             "(scale_in_protected_instances: Ignore; Refresh replaces {it})",
    ("ScaleInProtectedInstances", "Refresh"): "the refresh replaces {it} all the same (scale_in_protected_instances: "
                                              "Refresh)",
    ("StandbyInstances", "Wait"): "AWS waits up to an hour for {it} to return to service, then fails the refresh "
                                  "(standby_instances: Wait; Ignore leaves {it}, Terminate terminates {it})",
    ("StandbyInstances", "Ignore"): "the refresh leaves {it} on {its} current launch template version "
                                    "(standby_instances: Ignore; Terminate terminates {it})",
    ("StandbyInstances", "Terminate"): "the refresh terminates {it} (standby_instances: Terminate)",
}


def held_back(instances: list[dict[str, Any]], prefs: dict[str, Any]) -> list[str]:
    """One line per kind of instance held back on purpose (scale-in protected, in Standby) saying what this refresh
    will do with them, so nobody is surprised by an hour's wait, a skipped instance or a terminated one."""
    protected = [i["InstanceId"] for i in instances if i.get("ProtectedFromScaleIn")]
    standby = [i["InstanceId"] for i in instances if i.get("LifecycleState", "") in ("Standby", "EnteringStandby")]
    lines = []
    for names, what, preference in ((protected, "protected from scale in", "ScaleInProtectedInstances"),
                                    (standby, "in Standby", "StandbyInstances")):
        if not names:
            continue
        one = len(names) == 1
        words = {"it": "it" if one else "them", "its": "its" if one else "their"}
        text = HELD_BACK[(preference, prefs.get(preference, "Wait"))].format(**words)
        subject = f"instance {names[0]} is" if one else f"instances {', '.join(names)} are"
        lines.append(f"{subject} {what}: {text}")
    return lines


def desired_configuration(template_id: str, version: int) -> dict[str, Any]:
    return {"LaunchTemplate": {"LaunchTemplateId": template_id, "Version": str(version)}}


def start(client: Any, group: str, template_id: str, version: int, prefs: dict[str, Any]) -> str:
    answer = client.start_instance_refresh(AutoScalingGroupName=group, Strategy="Rolling",
                                           DesiredConfiguration=desired_configuration(template_id, version),
                                           Preferences=prefs)
    return answer["InstanceRefreshId"]


def active(client: Any, group: str) -> dict[str, Any] | None:
    """The group's refresh that has not ended yet, if any (AWS runs one at a time)."""
    refreshes = client.describe_instance_refreshes(AutoScalingGroupName=group)["InstanceRefreshes"]
    return next((r for r in refreshes if r["Status"] in ACTIVE), None)


def describe(client: Any, group: str, refresh_id: str) -> dict[str, Any]:
    found = client.describe_instance_refreshes(AutoScalingGroupName=group,
                                               InstanceRefreshIds=[refresh_id])["InstanceRefreshes"]
    if not found:
        raise OperationError(f"instance refresh {refresh_id} of Auto Scaling group {group} is unknown to AWS "
                             "(older than its history?)")
    return found[0]


def cancel(client: Any, group: str) -> str:
    return client.cancel_instance_refresh(AutoScalingGroupName=group)["InstanceRefreshId"]


def rollback(client: Any, group: str) -> str:
    return client.rollback_instance_refresh(AutoScalingGroupName=group)["InstanceRefreshId"]


def summary(refresh: dict[str, Any]) -> str:
    """One progress line: status, percentage, instances left, AWS's reason."""
    parts = [refresh["Status"]]
    if "PercentageComplete" in refresh:
        parts.append(f"{refresh['PercentageComplete']}%")
    if "InstancesToUpdate" in refresh:
        parts.append(f"{refresh['InstancesToUpdate']} instances to update")
    text = " ".join(parts[:2]) + (f" ({parts[2]})" if len(parts) > 2 else "")
    reason = refresh.get("StatusReason")
    return text + (f": {reason}" if reason else "")


def wait(client: Any, group: str, refresh_id: str, *, report: Callable[[str], None], check: Callable[[], None],
         poll_seconds: float) -> dict[str, Any]:
    """Block until the refresh ended; report every change. `check` raises to stop waiting (the refresh goes on
    at AWS)."""
    delay, last = poll_seconds, None
    while True:
        check()
        refresh = describe(client, group, refresh_id)
        line = summary(refresh)
        if line != last:
            report(line)
            last = line
            delay = poll_seconds  # something moved: look again soon
        if refresh["Status"] in ENDED:
            return refresh
        time.sleep(delay)
        delay = min(delay * 1.5, max(poll_seconds, MAX_POLL_SECONDS))
