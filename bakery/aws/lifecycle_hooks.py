"""The Auto Scaling lifecycle hooks that let a data volume move between instances of a group.

A launching instance waits in Pending:Wait until its slot's volume is attached
(DefaultResult ABANDON: an instance that never got its volume is terminated,
never put in service without its state); a terminating instance waits in
Terminating:Wait until its application stopped and the volume was detached
(DefaultResult CONTINUE: an instance is never kept forever). bakery completes
each action itself (bakery.fleets.aws_volumes) as soon as the volume moved: in the
deploy's follow loop, and in every `bake.py status`, which a schedule runs for the
launches and terminations Auto Scaling starts by itself. The heartbeat timeout is
only the fallback when nobody does.
"""

from __future__ import annotations

from typing import Any

LAUNCHING = "bakery-data-volume-launching"
TERMINATING = "bakery-data-volume-terminating"
HEARTBEAT_SECONDS = 3600
# The image's bakery-data-volume unit waits this long for the volume (roles/base/files/bakery-data-volume, a unit test
# keeps the two equal): the heartbeat less a margin, so the unit still waits whenever the hook does.
INSTANCE_WAIT_SECONDS = HEARTBEAT_SECONDS - 300
# A launch older than this is abandoned, never attached: its unit may give up before the volume is in and mounted.
ATTACH_BY_SECONDS = INSTANCE_WAIT_SECONDS - 120
HOOKS = {  # name -> (transition, default result)
    LAUNCHING: ("autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON"),
    TERMINATING: ("autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE"),
}
PENDING_WAIT, TERMINATING_WAIT = "Pending:Wait", "Terminating:Wait"


def ensure(client: Any, group: str) -> list[str]:
    """Put bakery's hooks on the group where missing or set otherwise; returns the names of the hooks put."""
    found = {h["LifecycleHookName"]: h
             for h in client.describe_lifecycle_hooks(AutoScalingGroupName=group)["LifecycleHooks"]}
    put = []
    for name, (transition, result) in HOOKS.items():
        hook = found.get(name, {})
        if (hook.get("LifecycleTransition"), hook.get("DefaultResult"), hook.get("HeartbeatTimeout")) == (
                transition, result, HEARTBEAT_SECONDS):
            continue
        client.put_lifecycle_hook(AutoScalingGroupName=group, LifecycleHookName=name, LifecycleTransition=transition,
                                  HeartbeatTimeout=HEARTBEAT_SECONDS, DefaultResult=result)
        put.append(name)
    return put


def complete(client: Any, group: str, hook: str, instance_id: str, result: str = "CONTINUE") -> bool:
    """Let the instance go on (CONTINUE), or end its launch (ABANDON). False when the hook holds no action for it
    (completed already by a run that died before it could say so, or the heartbeat ran out): the same end."""
    try:
        client.complete_lifecycle_action(LifecycleHookName=hook, AutoScalingGroupName=group,
                                         LifecycleActionResult=result, InstanceId=instance_id)
    except client.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "No active Lifecycle Action" in error.get("Message", ""):
            return False
        raise
    return True
