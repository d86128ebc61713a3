"""The aws target: an environment is an EC2 Auto Scaling group pinned to one launch template version.

A release creates a new launch template version (bakery.aws.launch_templates:
the version's AMI, IMDSv2, encrypted volumes, the runtime config as UserData,
release tags) and lets EC2 Auto Scaling replace the instances by an instance
refresh to that version number (its DesiredConfiguration) with the
environment's preferences (bakery.aws.instance_refresh). The group itself stays
pinned to the version it ran until the refresh ends Successful (AWS then pins
the new one; bakery confirms it): a rollback, manual or automatic, returns to
the old version, and scale-outs during the refresh never launch the untested
one. A group on `$Latest` or `$Default` is first pinned to the number that
resolves to (AWS refuses AutoRollback otherwise, and `$Latest` would launch the
new version at once). Only an empty group is pinned directly to the new version
(there is nothing to refresh). Instances held back on purpose (protected from
scale in, in Standby) are named before the refresh, with what the environment's
preferences make it do with them.
bake.py blocks until the refresh ended; only a Successful one writes the SSM
release parameters (bakery.aws.releases). The refresh runs at AWS: when bake.py
is interrupted it goes on, and .bakery/envs/<env>/refresh.json (its id, release,
goal and the version pinned before) lets the next command re-attach and record
how it ended. A version or release this checkout's catalog does not know (CI
baked or released it) is adopted from the AMI tags and the SSM release history
(bakery.fleets.aws_group reads all that). The lock and refresh.json are every
target's (bakery.fleets.state).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from bakery.aws import instance_refresh, launch_templates, releases
from bakery.data_volume_rules import check_data_volume_preferences
from bakery.environments import RefreshPreferences
from bakery.errors import OperationError
from bakery.fleets.aws_group import LOG_GROUP_KEY, AwsGroupFleet
from bakery.fleets.base import Goal, RefreshOutcome, RefreshRequest
from bakery.signals import Cancellation

CAPACITY_TIMEOUT = 900.0  # seconds a group brought up from zero may take to have every instance InService


class AwsFleet(AwsGroupFleet):
    """An environment on EC2 Auto Scaling, changed by instance refreshes that bakery starts and follows."""

    # ---- refreshes running at AWS

    def _wait_refresh(self, refresh_id: str, cancel: Cancellation) -> dict[str, Any]:
        if self.volumes is not None:
            return self._wait_handing_over(refresh_id, cancel)
        return instance_refresh.wait(self.refresh_client, self.group_name, refresh_id, check=cancel.check,
                                     poll_seconds=self.poll_seconds,
                                     report=lambda line: self._note(f"instance refresh {refresh_id[:8]}: {line}"))

    def _wait_handing_over(self, refresh_id: str, cancel: Cancellation) -> dict[str, Any]:
        """The refresh's wait with every poll a pass over the data volumes, at a steady poll: an instance in
        Pending:Wait or Terminating:Wait is the gap a single-instance environment sees, so no backoff."""
        assert self.volumes is not None
        last = None
        while True:
            self.volumes.settle(cancel.check)
            refresh = instance_refresh.describe(self.refresh_client, self.group_name, refresh_id)
            line = instance_refresh.summary(refresh)
            if line != last:
                self._note(f"instance refresh {refresh_id[:8]}: {line}")
                last = line
            if refresh["Status"] in instance_refresh.ENDED:
                return refresh
            time.sleep(self.poll_seconds)

    def _prepare_volumes(self, prefs: RefreshPreferences, cancel: Cancellation) -> None:
        """Before a refresh of an environment with a data volume: the deploy flags keep to its rules, the group has
        the lifecycle hooks, and a hand-over a dead process left is finished."""
        if self.volumes is None:
            return
        check_data_volume_preferences(prefs, self.env.instances, lambda key: "--" + key.replace("_", "-"))
        self.volumes.ensure_hooks()
        self.volumes.settle(cancel.check)

    def _settle_running(self, replace: bool, cancel: Cancellation) -> None:
        """AWS runs one refresh per group: wait for one that runs already, or cancel it (deploy --replace-running)."""
        live = instance_refresh.active(self.refresh_client, self.group_name)
        if live is None:
            return
        if replace:
            self._note(f"cancelling instance refresh {live['InstanceRefreshId']} ({live['Status']}) to start this "
                       "one (--replace-running)")
            instance_refresh.cancel(self.refresh_client, self.group_name)
        else:
            self._note(f"instance refresh {live['InstanceRefreshId']} is {live['Status']}; waiting for it to end "
                       "(deploy --replace-running cancels it instead)")
        final = self._wait_refresh(live["InstanceRefreshId"], cancel)
        self._note(f"instance refresh {live['InstanceRefreshId']} ended {final['Status']}")

    def stop_live_refresh(self, how: str, cancel: Cancellation) -> dict[str, Any] | None:
        live = instance_refresh.active(self.refresh_client, self.group_name)
        if live is None:
            return None
        refresh_id = live["InstanceRefreshId"]
        if how == "rollback":
            if live["Status"] not in instance_refresh.ROLLBACK_ALLOWED:
                raise OperationError(f"instance refresh {refresh_id} of '{self.group_name}' is {live['Status']}: "
                                     "AWS cannot roll it back now; watch it end with "
                                     f"./bake.py status --env {self.env.name}")
            self._note(f"asking AWS to roll back instance refresh {refresh_id} ({instance_refresh.summary(live)})")
            instance_refresh.rollback(self.refresh_client, self.group_name)
        else:
            self._note(f"cancelling instance refresh {refresh_id} ({instance_refresh.summary(live)})")
            instance_refresh.cancel(self.refresh_client, self.group_name)
        final = self._wait_refresh(refresh_id, cancel)
        saved = self.interrupted() or {}
        ours = saved.get("refresh_id") == refresh_id
        return {"id": refresh_id, "status": final["Status"], "reason": final.get("StatusReason"),
                "release_id": saved.get("release_id") if ours else None,
                "from": (saved.get("goal") or {}).get("version") if ours else None}

    # ---- one release

    def _up_to_date(self, group: dict[str, Any], template_id: str, pinned: str, goal: Goal) -> bool:
        running = self._goal_of_version(template_id, pinned)
        if running is None or (running.image_id, running.config_digest) != (goal.image_id, goal.config_digest):
            return False
        if self.env.aws.get("log_group") and running.runtime.get(LOG_GROUP_KEY) != self.env.aws["log_group"]:
            return False
        wanted_type = self.env.aws.get("instance_type")
        if wanted_type:
            launched_type = launch_templates.version_data(self.ec2, template_id, pinned).get("InstanceType")
            if launched_type != wanted_type:
                return False
        instances = group["Instances"]
        return 0 < group["DesiredCapacity"] == len(instances) and all(
            i["LifecycleState"] == "InService" and (i.get("LaunchTemplate") or {}).get("Version") == pinned
            for i in instances)

    def _record_release(self, goal: Goal) -> None:
        if releases.released(self.ssm, goal.image, self.env.name) != {"ami_id": goal.image_id, "version": goal.version}:
            releases.record_release(self.ssm, goal.image, self.env.name, goal.image_id, goal.version)
            self._note(f"released {goal.image}:{goal.version} ({goal.image_id}) in SSM "
                       f"{releases.parameter(goal.image, self.env.name, '*')}")

    def refresh(self, request: RefreshRequest, cancel: Cancellation,
                on_done: Callable[[RefreshOutcome], None] | None = None) -> RefreshOutcome:
        on_done = on_done or (lambda outcome: None)
        # ConfigError before any change
        prefs = instance_refresh.preferences(request.preferences, self.env.aws.get("alarms") or [])
        goal = request.goal
        self.check_goal(goal)
        self._prepare_volumes(request.preferences, cancel)
        self._settle_running(request.replace_running, cancel)
        group = self._group()
        template = self._template(group)
        template_id = template["LaunchTemplateId"]
        pinned = self._number(group["LaunchTemplate"]["Version"], template)
        self._pin_number(group, template_id, pinned)  # also when nothing changes: $Latest must not stay
        if request.preferences.skip_matching and self._up_to_date(group, template_id, pinned, goal):
            self._note(f"every instance runs {goal.image}:{goal.version} with this config already (launch template "
                       f"{self.template_name} version {pinned}); nothing to replace")
            self._record_release(goal)
            outcome = RefreshOutcome("succeeded", None, 0, len(group["Instances"]), 0.0,
                                     details={"launch_template_version": int(pinned), "ami_id": goal.image_id})
            on_done(outcome)
            return outcome
        number = self._new_version(request, template_id, pinned)
        empty = group["DesiredCapacity"] == 0 or not group["Instances"]
        for line in [] if empty else instance_refresh.held_back(group["Instances"], prefs):
            self._note(line)
        if not empty:  # the refresh's DesiredConfiguration carries the version; AWS pins the group once it succeeded
            self._note(f"launch template {self.template_name} version {number} ({goal.image_id}); Auto Scaling group "
                       f"{self.group_name} stays on version {pinned} until the instance refresh succeeds")
        state = {"release_id": request.release_id, "kind": request.kind, "env": self.env.name,
                 "run_id": request.run_id, "pid": os.getpid(), "goal": goal.to_dict(),
                 "previous": request.previous.to_dict() if request.previous else None,
                 "phase": "pin" if empty else "refresh",
                 "template_id": template_id, "version": number, "previous_version": pinned, "preferences": prefs,
                 "refresh_id": None, "empty": empty, "total": len(group["Instances"]) or self.env.instances,
                 "resumed_by": []}
        self.env_state.save_refresh(state)  # before the group changes: a kill from here on is resumed, not lost
        return self._follow(state, cancel, on_done)

    def _pin_number(self, group: dict[str, Any], template_id: str, pinned: str) -> None:
        """A group on $Latest would launch the new version on every scale-out before the refresh, and AWS refuses
        AutoRollback (and so any rollback to it) for a group on $Latest or $Default: pin the number it resolves to."""
        spec = group["LaunchTemplate"]["Version"]
        if spec == pinned:
            return
        self.autoscaling.update_auto_scaling_group(
            AutoScalingGroupName=self.group_name, LaunchTemplate={"LaunchTemplateId": template_id, "Version": pinned})
        self._note(f"Auto Scaling group {self.group_name} launched from launch template {self.template_name} {spec}; "
                   f"pinned it to version {pinned}, the one {spec} is now, so the new version goes live only through "
                   "the instance refresh (and AWS can roll it back)")

    def _new_version(self, request: RefreshRequest, template_id: str, pinned: str) -> int:
        """A launch template version for the release, made from the one the group is pinned to."""
        goal = request.goal
        image = self._images.get(goal.image_id) or self._ami_of(goal.version)
        if image is None:
            raise OperationError(f"no AMI of {goal.image}:{goal.version} in {self.ec2.meta.region_name}; "
                                 f"bake it with: ./bake.py build {goal.image} --target aws")
        source = launch_templates.version_data(self.ec2, template_id, pinned)
        grown = launch_templates.grown_volumes(image, source.get("BlockDeviceMappings", []))
        for device, (size, snapshot) in grown.items():
            self._note(f"{device}: the template's {size} GiB is smaller than the snapshot of {image['ImageId']} "
                       f"({snapshot} GiB); the new version uses {snapshot} GiB")
        data = launch_templates.launch_data(
            image=image, source=source, goal=goal, env_name=self.env.name,
            env_text=self._env_text(goal.runtime), instance_type=self.env.aws.get("instance_type", ""),
            release_id=request.release_id, kms_key_id=self._volume_key())
        return launch_templates.create_version(
            self.ec2, template_id, pinned, data,
            f"bakery release #{request.release_id}: {request.kind} {goal.image}:{goal.version}")

    def _pin_empty(self, group: dict[str, Any], template_id: str, number: int, pinned: str, goal: Goal) -> None:
        """Nothing to refresh: new instances launch from the pinned version."""
        update: dict[str, Any] = {"AutoScalingGroupName": self.group_name,
                                  "LaunchTemplate": {"LaunchTemplateId": template_id, "Version": str(number)}}
        if group["DesiredCapacity"] == 0 and self.env.instances:
            update["DesiredCapacity"] = self.env.instances
        self.autoscaling.update_auto_scaling_group(**update)
        self._note(f"launch template {self.template_name} version {number} ({goal.image_id}); the Auto Scaling "
                   f"group {self.group_name} was empty, pinned it to that version (was version {pinned})")

    def resume(self, cancel: Cancellation,
               on_done: Callable[[RefreshOutcome], None] | None = None) -> tuple[dict[str, Any], RefreshOutcome]:
        data = self.interrupted()
        if data is None:
            raise OperationError(f"environment '{self.env.name}' has no unfinished refresh")
        data["resumed_by"].append(os.getpid())
        self.env_state.save_refresh(data)
        self._note(f"re-attaching to release #{data['release_id']}'s instance refresh "
                   f"{data.get('refresh_id') or '(not started yet)'}")
        return data, self._follow(data, cancel, on_done or (lambda outcome: None))

    def _follow(self, state: dict[str, Any], cancel: Cancellation,
                on_done: Callable[[RefreshOutcome], None]) -> RefreshOutcome:
        """Start the refresh if the dead process did not get to it, wait for its end, record it, forget the
        state."""
        started = time.monotonic()
        goal = Goal.from_dict(state["goal"])
        if state["empty"]:
            if state.get("phase") == "pin":  # again when a dead process made the call: the same call, harmless
                self._pin_empty(self._group(), state["template_id"], state["version"], state["previous_version"],
                                goal)
                state["phase"] = "refresh"
                self.env_state.save_refresh(state)
            outcome = self._wait_capacity(goal, state, cancel, started)
        else:
            if not state["refresh_id"]:
                state["refresh_id"] = instance_refresh.start(self.refresh_client, self.group_name,
                                                             state["template_id"], state["version"],
                                                             state["preferences"])
                self.env_state.save_refresh(state)
                self._note(f"instance refresh {state['refresh_id']} started on {self.group_name}")
            final = self._wait_refresh(state["refresh_id"], cancel)
            outcome = self._outcome(goal, state, final, time.monotonic() - started)
        on_done(outcome)  # the release is closed first: a kill right here leaves a state file the next run drops
        self.forget_interrupted()
        return outcome

    def _outcome(self, goal: Goal, state: dict[str, Any], final: dict[str, Any], seconds: float) -> RefreshOutcome:
        status, reason = final["Status"], final.get("StatusReason")
        total = state["total"]
        left = final.get("InstancesToUpdate", 0 if status == "Successful" else total)
        details = {"instance_refresh_id": state["refresh_id"], "aws_status": status,
                   "launch_template_version": state["version"],
                   "previous_launch_template_version": state["previous_version"], "ami_id": goal.image_id}
        if status == "Successful":
            self._confirm_pin(state["template_id"], state["version"])
            self._record_release(goal)
            return RefreshOutcome("succeeded", None, total - left, total, seconds, details)
        pinned = self._pinned_version()  # AWS left the group's configuration alone: it is the version pinned before
        if status == "RollbackSuccessful":
            self._note(f"Auto Scaling group {self.group_name} runs launch template version {pinned} again")
            return RefreshOutcome("rolled_back", reason or f"AWS rolled instance refresh {state['refresh_id']} back",
                                  total - left, total, seconds, details)
        if total - left:
            where = (f"; the group stays on launch template version {pinned}; instances it replaced already run "
                     f"version {state['version']} until the next deploy or ./bake.py rollback")
        else:
            where = f"; the group stays on launch template version {pinned}"
        why = f"instance refresh {state['refresh_id']} ended {status}" + (f": {reason}" if reason else "")
        return RefreshOutcome("failed", why + where, total - left, total, seconds, details)

    def _pinned_version(self) -> str:
        return str((self._group().get("LaunchTemplate") or {}).get("Version", "?"))

    def _confirm_pin(self, template_id: str, version: int) -> None:
        """After a Successful refresh AWS has pinned the group to its DesiredConfiguration; pin the exact number
        where it did not."""
        if self._pinned_version() != str(version):
            self.autoscaling.update_auto_scaling_group(
                AutoScalingGroupName=self.group_name,
                LaunchTemplate={"LaunchTemplateId": template_id, "Version": str(version)})
        self._note(f"Auto Scaling group {self.group_name} is pinned to launch template version {version}")

    # ---- capacity changes without a refresh

    def _wait_for_group(self, done: Callable[[dict[str, Any]], bool], cancel: Cancellation,
                        timeout: float) -> dict[str, Any]:
        deadline, delay = time.monotonic() + timeout, self.poll_seconds
        while True:
            cancel.check()
            if self.volumes is not None:  # launches from zero wait for their volumes; a scale to zero lets them go
                self.volumes.settle(cancel.check)
            group = self._group()
            if done(group) or time.monotonic() > deadline:
                return group
            time.sleep(delay)
            delay = min(delay * 1.5, max(self.poll_seconds, instance_refresh.MAX_POLL_SECONDS))

    def _wait_capacity(self, goal: Goal, state: dict[str, Any], cancel: Cancellation,
                       started: float) -> RefreshOutcome:
        """A group brought up from zero needs no refresh: its new instances launch from the pinned version."""
        wanted, version = self.env.instances, str(state["version"])

        def ready(group: dict[str, Any]) -> list[dict[str, Any]]:
            return [i for i in group["Instances"] if i["LifecycleState"] == "InService"
                    and i["HealthStatus"] == "Healthy" and (i.get("LaunchTemplate") or {}).get("Version") == version]

        self._note(f"the group was empty: waiting for {wanted} instances of launch template version {version} to be "
                   "InService")
        group = self._wait_for_group(lambda g: len(ready(g)) >= wanted, cancel, CAPACITY_TIMEOUT)
        count = len(ready(group))
        details = {"launch_template_version": state["version"],
                   "previous_launch_template_version": state["previous_version"], "ami_id": goal.image_id}
        seconds = time.monotonic() - started
        if count >= wanted:
            self._record_release(goal)
            return RefreshOutcome("succeeded", None, count, wanted, seconds, details)
        return RefreshOutcome("failed", f"only {count} of {wanted} instances InService and Healthy after "
                              f"{CAPACITY_TIMEOUT:.0f} s", count, wanted, seconds, details)

    def down(self, cancel: Cancellation) -> int:
        """Desired capacity 0 (and minimum 0): EC2 Auto Scaling drains and terminates every instance
        (deregistering it from the group's load balancer target groups first). The launch template versions and
        SSM release parameters stay; the next deploy sets the desired capacity back to the environment's
        `instances`. Returns how many instances were terminated."""
        group = self._group()
        count = len(group["Instances"])
        self._note(f"setting Auto Scaling group {self.group_name} to desired capacity 0; AWS drains and terminates "
                   f"its {count} instances")
        self.autoscaling.update_auto_scaling_group(AutoScalingGroupName=self.group_name, MinSize=0, DesiredCapacity=0)
        group = self._wait_for_group(lambda g: not g["Instances"], cancel, CAPACITY_TIMEOUT)
        if group["Instances"]:
            raise OperationError(f"Auto Scaling group {self.group_name} still has {len(group['Instances'])} "
                                 f"instances after {CAPACITY_TIMEOUT:.0f} s; look at its activity history in the "
                                 "EC2 console")
        return count
