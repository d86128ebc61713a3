"""The aws target: an environment is an EC2 Auto Scaling group pinned to one launch template version.

A release creates a new launch template version (bakery.aws.launch_templates:
the version's AMI, IMDSv2, encrypted volumes, the runtime config as UserData,
release tags) and lets EC2 Auto Scaling replace the instances by an instance
refresh to that version number (its DesiredConfiguration) with the
environment's preferences (bakery.aws.instance_refresh). The group itself stays
pinned to the version it ran until the refresh ends Successful (AWS then pins
the new one; bakery confirms it): a rollback, manual or automatic, returns to
the old version, and scale-outs during the refresh never launch the untested
one. Only an empty group is pinned directly (there is nothing to refresh).
bake.py blocks until the refresh ended; only a Successful one writes the SSM
release parameters (bakery.aws.releases). The refresh runs at AWS: when bake.py
is interrupted it goes on, and .bakery/envs/<env>/refresh.json (its id, release,
goal and the version pinned before) lets the next command re-attach and record
how it ended. A version or release this checkout's catalog does not know (CI
baked or released it) is adopted from the AMI tags and the SSM release history.
Locking is the local target's flock on .bakery/envs/<env>/lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

from bakery.aws import adopt, amis, instance_refresh, launch_templates, releases, tags
from bakery.aws.clients import client, resolve_region
from bakery.errors import ConfigError, OperationError
from bakery.files import write_atomically
from bakery.fleets.base import Fleet, FleetStatus, Goal, InstanceStatus, RefreshOutcome, RefreshRequest
from bakery.fleets.local import LocalFleet, parse_env_file
from bakery.provenance import sha256_json
from bakery.signals import Cancellation

POLL_SECONDS = 5.0  # first look at a refresh; backs off to instance_refresh.MAX_POLL_SECONDS while nothing changes
CAPACITY_TIMEOUT = 900.0  # seconds a group brought up from zero may take to have every instance InService
LOG_GROUP_KEY = "CLOUDWATCH_LOG_GROUP"  # the runtime key the cloudwatch_agent role names its log group from


class AwsFleet(Fleet):
    target = "aws"

    # One lock and one refresh.json for every target, the local target's: a flock on .bakery/envs/<env>/lock (one changing
    # command per environment) and the state of the refresh in progress, read back after an interruption.
    _flock = LocalFleet._flock
    holder = LocalFleet.holder
    lock = LocalFleet.lock
    try_lock = LocalFleet.try_lock
    interrupted = LocalFleet.interrupted
    _read_state = LocalFleet._read_state
    forget_interrupted = LocalFleet.forget_interrupted

    def __init__(self, project, catalog, env, progress, *, refresh_client: Any = None, poll_seconds: float = POLL_SECONDS):
        super().__init__(project, catalog, env, progress)
        self.group_name = env.aws["auto_scaling_group"]
        self.template_name = env.aws["launch_template"]
        self.region = env.aws.get("region") or project.aws.region or None
        self.folder = project.state_dir / "envs" / env.name
        self.state_file = self.folder / "refresh.json"
        self.poll_seconds = poll_seconds
        self._held = False
        self._refresh_client = refresh_client
        self._images: dict[str, dict[str, Any] | None] = {}  # AMI id -> describe_images entry
        self._version_goals: dict[tuple[str, str], Goal | None] = {}

    # ---- clients (the refresh calls use their own client: tests wrap only that one in botocore's Stubber)

    @cached_property
    def ec2(self):
        return client("ec2", self.region)

    @cached_property
    def autoscaling(self):
        return client("autoscaling", self.region)

    @cached_property
    def ssm(self):
        return client("ssm", self.region)

    @property
    def refresh_client(self):
        if self._refresh_client is None:
            self._refresh_client = client("autoscaling", self.region)
        return self._refresh_client

    def _where(self) -> str:
        return f"{self.env.path / 'group_vars' / 'all' / 'deploy.yml'}"

    def _note(self, message: str) -> None:
        self.progress.note(f"{self.env.name}: {message}")

    # ---- the group, its template, the AMIs

    def _group(self) -> dict[str, Any]:
        found = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group_name])["AutoScalingGroups"]
        if not found:
            raise ConfigError(f"{self._where()}: bakery_deploy.aws.auto_scaling_group '{self.group_name}' does not exist in "
                              f"{self.autoscaling.meta.region_name}; create it (see README 'Running on AWS') or fix the name")
        return found[0]

    def _template(self, group: dict[str, Any]) -> dict[str, Any]:
        template = launch_templates.template(self.ec2, self.template_name)
        if template is None:
            raise ConfigError(f"{self._where()}: bakery_deploy.aws.launch_template '{self.template_name}' does not exist in "
                              f"{self.ec2.meta.region_name}; create it or fix the name")
        spec = group.get("LaunchTemplate")
        if not spec:
            raise ConfigError(f"Auto Scaling group '{self.group_name}' does not launch from a launch template (a mixed instances policy or a "
                              f"launch configuration); point it at launch template '{self.template_name}' so bakery can pin its versions")
        if spec["LaunchTemplateId"] != template["LaunchTemplateId"]:
            raise ConfigError(f"{self._where()}: Auto Scaling group '{self.group_name}' launches from template '{spec.get('LaunchTemplateName')}', "
                              f"not '{self.template_name}' (bakery_deploy.aws.launch_template); make them agree")
        return template

    @staticmethod
    def _number(version: str, template: dict[str, Any]) -> str:
        """A group's launch template version as a number ($Default and $Latest resolved)."""
        if version == "$Default":
            return str(template["DefaultVersionNumber"])
        if version == "$Latest":
            return str(template["LatestVersionNumber"])
        return str(version)

    def _describe_images(self, ami_ids: list[str]) -> None:
        wanted = [a for a in dict.fromkeys(ami_ids) if a and a not in self._images]
        if not wanted:
            return
        try:
            found = self.ec2.describe_images(ImageIds=wanted)["Images"]
        except self.ec2.exceptions.ClientError as exc:
            if "InvalidAMIID" not in exc.response.get("Error", {}).get("Code", ""):
                raise
            found = []  # deregistered since: those versions are simply unknown
        for ami in wanted:
            self._images[ami] = next((i for i in found if i["ImageId"] == ami), None)

    def _ami_of(self, version: str) -> dict[str, Any] | None:
        """The AMI of a version in this environment's region, found by its bakery tags (AWS is the source of truth)."""
        images = [i for i in amis.find_amis(self.ec2, {tags.IMAGE: self.env.image, tags.VERSION: version}) if i.get("State") == "available"]
        if not images:
            return None
        record = self.catalog.version(self.env.image, version) or {}
        chosen = next((i for i in images if i["ImageId"] == record.get("image_ref")), images[0])  # else the newest
        self._images[chosen["ImageId"]] = chosen
        return chosen

    def _goal_of_version(self, template_id: str, number: str) -> Goal | None:
        """What a launch template version launches: the AMI's bakery tags, the config digest tag, the runtime from UserData."""
        key = (template_id, number)
        if key not in self._version_goals:
            data = launch_templates.version_data(self.ec2, template_id, number)
            self._describe_images([data.get("ImageId", "")])
            image = self._images.get(data.get("ImageId", "")) or {}
            ami_tags = tags.from_tag_list(image.get("Tags"))
            goal = None
            if ami_tags.get(tags.VERSION):
                goal = Goal(image=ami_tags.get(tags.IMAGE, self.env.image), version=ami_tags[tags.VERSION], image_ref=image["ImageId"],
                            config_digest=launch_templates.instance_tags(data).get(launch_templates.CONFIG_DIGEST, ""),
                            runtime=parse_env_file(launch_templates.user_data_text(data.get("UserData"))),
                            git_commit=ami_tags.get(tags.GIT_COMMIT, ""), git_message=ami_tags.get(tags.GIT_MESSAGE, ""),
                            image_id=image["ImageId"])
            self._version_goals[key] = goal
        return self._version_goals[key]

    # ---- Fleet: what runs

    def check_goal(self, goal: Goal) -> None:
        if goal.image != self.env.image:
            raise ConfigError(f"environment '{self.env.name}' runs image '{self.env.image}', not '{goal.image}'")
        if not goal.image_id:
            raise ConfigError(f"{goal.image}:{goal.version} has no AMI in {self.ec2.meta.region_name} (none tagged {tags.IMAGE}={goal.image} "
                              f"{tags.VERSION}={goal.version} owned by this account); bake it with ./bake.py build {goal.image} --target aws, "
                              "or copy it to this region with ./bake.py distribute")
        self._check_log_group()
        self._template(self._group())

    def _check_log_group(self) -> None:
        wanted, given = self.env.aws.get("log_group"), self.env.runtime.get(LOG_GROUP_KEY)
        if wanted and given is not None and given != wanted:
            raise ConfigError(f"{self.env.path / 'group_vars' / 'all' / 'runtime.yml'}: bakery_runtime.{LOG_GROUP_KEY} '{given}' disagrees with "
                              f"bakery_deploy.aws.log_group '{wanted}' in {self._where()}; remove one of them or make them equal")

    def _env_text(self, runtime: dict[str, str]) -> str:
        """The UserData env file: the runtime config, with the environment's log group for the CloudWatch agent when one is set."""
        if self.env.aws.get("log_group"):
            runtime = {**runtime, LOG_GROUP_KEY: self.env.aws["log_group"]}
        return dataclasses.replace(self.env, runtime=runtime).runtime_env_text()

    def _volume_key(self) -> str:
        """The EBS key of this environment's region: a home-region key cannot encrypt volumes elsewhere ('' = the region's default)."""
        settings = self.project.aws
        return settings.kms_key_for(self.ec2.meta.region_name, resolve_region(settings.region or None))

    def goal_for(self, version: str | None, digest: str | None, runtime: dict[str, str] | None = None) -> Goal | None:
        record = self.catalog.version(self.env.image, version) if version else None
        if record is None:
            return None
        if runtime is None:
            runtime = self.known_runtime(digest or "") or {}
        image = self._ami_of(version)
        ami = image["ImageId"] if image else ""
        provenance = record.get("provenance") or {}
        return Goal(image=self.env.image, version=version, image_ref=ami or record["image_ref"], config_digest=digest or "", runtime=runtime,
                    git_commit=provenance.get("git_commit", ""), git_message=provenance.get("git_message", ""), image_id=ami)

    def known_runtime(self, config_digest: str) -> dict[str, str] | None:
        """A config deployed before lives on in the UserData of its launch template version."""
        if not config_digest:
            return None
        template = launch_templates.template(self.ec2, self.template_name)
        for version in launch_templates.all_versions(self.ec2, template["LaunchTemplateId"]) if template else []:
            data = version["LaunchTemplateData"]
            if launch_templates.instance_tags(data).get(launch_templates.CONFIG_DIGEST) == config_digest:
                return parse_env_file(launch_templates.user_data_text(data.get("UserData")))
        return None

    # ---- versions baked elsewhere: the AMI tags are the record, this checkout's catalog a cache of them

    def adopt(self, version: str | None, run_id: str) -> None:
        """Record image:version from its AMI's tags (and the verification the builder tagged) when this checkout's catalog
        lacks it, as in a fresh CI container; with no version and no version of the image in the catalog, the newest AMI's."""
        image, region = self.env.image, self.ec2.meta.region_name
        if version is not None:
            adopt.adopt_version(self.catalog, self.ec2, image, version, region, run_id)
            return
        if self.catalog.versions(image):
            return
        found = [i for i in amis.find_amis(self.ec2, {tags.MANAGED: "true", tags.IMAGE: image})
                 if i.get("State") == "available" and tags.from_tag_list(i.get("Tags")).get(tags.VERSION)]
        if found:
            newest = max(found, key=lambda i: (tags.from_tag_list(i.get("Tags"))[tags.VERSION], i.get("CreationDate", "")))
            adopt.adopt_ami(self.catalog, newest, region, run_id)

    def release_before(self, current: Goal, run_id: str) -> Goal | None:
        """The rollback target when this catalog has no earlier release (another checkout or CI released): the previous distinct
        version in the SSM release history, adopted from its AMI, with the runtime config of the newest launch template version
        that launched it (else the environment's). None when SSM knows no other release."""
        version = next((v for v in releases.history(self.ssm, self.env.image, self.env.name) if v != current.version), None)
        if version is None:
            return None
        if adopt.adopt_version(self.catalog, self.ec2, self.env.image, version, self.ec2.meta.region_name, run_id) is None:
            raise OperationError(f"the release before {current.version} in SSM ({self.env.image}:{version}) has no AMI tagged "
                                 f"{tags.IMAGE}={self.env.image} {tags.VERSION}={version} in {self.ec2.meta.region_name} any more; "
                                 "deploy a version instead")
        runtime, digest = dict(self.env.runtime), sha256_json(self.env.runtime)
        template = launch_templates.template(self.ec2, self.template_name)
        for item in launch_templates.all_versions(self.ec2, template["LaunchTemplateId"]) if template else []:
            data = item["LaunchTemplateData"]
            launched = launch_templates.instance_tags(data)
            if launched.get(tags.VERSION) == version and launched.get(launch_templates.CONFIG_DIGEST):
                runtime = parse_env_file(launch_templates.user_data_text(data.get("UserData")))
                digest = launched[launch_templates.CONFIG_DIGEST]
                break
        return self.goal_for(version, digest, runtime)

    def current(self) -> Goal | None:
        """What the group's pinned launch template version launches (None when the group is empty or not bakery's)."""
        group = self._group()
        spec = group.get("LaunchTemplate")
        if not spec or (group["DesiredCapacity"] == 0 and not group["Instances"]):
            return None
        return self._goal_of_version(spec["LaunchTemplateId"], self._number(spec["Version"], self._template(group)))

    def status(self) -> FleetStatus:
        group = self._group()
        instances = []
        for i in sorted(group["Instances"], key=lambda i: i["InstanceId"]):
            spec = i.get("LaunchTemplate") or {}
            goal = self._goal_of_version(spec["LaunchTemplateId"], spec["Version"]) if spec.get("Version", "").isdigit() else None
            in_service = i["LifecycleState"] == "InService" and i["HealthStatus"] == "Healthy"
            instances.append(InstanceStatus(
                name=i["InstanceId"], version=goal.version if goal else None, config_digest=goal.config_digest if goal else None,
                state=i["LifecycleState"], health=i["HealthStatus"], lb_state="ready" if in_service else i["LifecycleState"].lower(),
                in_service=in_service, address=None, check=f"{i['AvailabilityZone']}, launch template version {spec.get('Version', '-')}",
                git_commit=goal.git_commit if goal else None))
        live = instance_refresh.active(self.refresh_client, self.group_name)
        saved = self.interrupted()
        desired = group["DesiredCapacity"]
        if live:
            state = "refreshing"
        elif saved:
            state = "interrupted"
        elif desired == 0 and not instances:
            state = "down"
        elif instances and all(i.in_service for i in instances) and len(instances) == desired and len(
                {(i.version, i.config_digest) for i in instances}) == 1:
            state = "up"
        else:
            state = "degraded"
        summary = None
        if live:
            ours = saved if saved and saved.get("refresh_id") == live["InstanceRefreshId"] else {}
            summary = {"release": ours.get("release_id"), "kind": ours.get("kind", "refresh"), "to": (ours.get("goal") or {}).get("version", "?"),
                       "phase": instance_refresh.summary(live), "pid": self.holder() if ours else None, "id": live["InstanceRefreshId"]}
        return FleetStatus(env=self.env.name, target=self.target, state=state, endpoint=None, lb_running=desired > 0, desired=desired,
                           instances=instances, refresh=summary)

    # ---- refresh state (refresh.json: the refresh id and what it is for)

    def _save(self, state: dict[str, Any]) -> None:
        write_atomically(self.state_file, json.dumps(state, indent=2, sort_keys=True))

    # ---- Fleet: changing it

    def _wait_refresh(self, refresh_id: str, cancel: Cancellation) -> dict[str, Any]:
        return instance_refresh.wait(self.refresh_client, self.group_name, refresh_id, check=cancel.check, poll_seconds=self.poll_seconds,
                                     report=lambda line: self._note(f"instance refresh {refresh_id[:8]}: {line}"))

    def _settle_running(self, replace: bool, cancel: Cancellation) -> None:
        """AWS runs one refresh per group: wait for one that runs already, or cancel it (deploy --replace-running)."""
        live = instance_refresh.active(self.refresh_client, self.group_name)
        if live is None:
            return
        if replace:
            self._note(f"cancelling instance refresh {live['InstanceRefreshId']} ({live['Status']}) to start this one (--replace-running)")
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
                raise OperationError(f"instance refresh {refresh_id} of '{self.group_name}' is {live['Status']}: AWS cannot roll it back now; "
                                     f"watch it end with ./bake.py status --env {self.env.name}")
            self._note(f"asking AWS to roll back instance refresh {refresh_id} ({instance_refresh.summary(live)})")
            instance_refresh.rollback(self.refresh_client, self.group_name)
        else:
            self._note(f"cancelling instance refresh {refresh_id} ({instance_refresh.summary(live)})")
            instance_refresh.cancel(self.refresh_client, self.group_name)
        final = self._wait_refresh(refresh_id, cancel)
        saved = self.interrupted() or {}
        ours = saved.get("refresh_id") == refresh_id
        return {"id": refresh_id, "status": final["Status"], "reason": final.get("StatusReason"),
                "release_id": saved.get("release_id") if ours else None, "from": (saved.get("goal") or {}).get("version") if ours else None}

    def _up_to_date(self, group: dict[str, Any], template_id: str, pinned: str, goal: Goal) -> bool:
        running = self._goal_of_version(template_id, pinned)
        if running is None or (running.image_id, running.config_digest) != (goal.image_id, goal.config_digest):
            return False
        if self.env.aws.get("log_group") and running.runtime.get(LOG_GROUP_KEY) != self.env.aws["log_group"]:
            return False
        wanted_type = self.env.aws.get("instance_type")
        if wanted_type and launch_templates.version_data(self.ec2, template_id, pinned).get("InstanceType") != wanted_type:
            return False
        instances = group["Instances"]
        return 0 < group["DesiredCapacity"] == len(instances) and all(
            i["LifecycleState"] == "InService" and (i.get("LaunchTemplate") or {}).get("Version") == pinned for i in instances)

    def _record_release(self, goal: Goal) -> None:
        if releases.released(self.ssm, goal.image, self.env.name) != {"ami_id": goal.image_id, "version": goal.version}:
            releases.record_release(self.ssm, goal.image, self.env.name, goal.image_id, goal.version)
            self._note(f"released {goal.image}:{goal.version} ({goal.image_id}) in SSM {releases.parameter(goal.image, self.env.name, '*')}")

    def refresh(self, request: RefreshRequest, cancel: Cancellation, on_done: Callable[[RefreshOutcome], None] | None = None) -> RefreshOutcome:
        on_done = on_done or (lambda outcome: None)
        prefs = instance_refresh.preferences(request.preferences, self.env.aws.get("alarms") or [])  # ConfigError before any change
        goal = request.goal
        self.check_goal(goal)
        self._settle_running(request.replace_running, cancel)
        group = self._group()
        template = self._template(group)
        template_id = template["LaunchTemplateId"]
        pinned = self._number(group["LaunchTemplate"]["Version"], template)
        if request.preferences.skip_matching and self._up_to_date(group, template_id, pinned, goal):
            self._note(f"every instance runs {goal.image}:{goal.version} with this config already (launch template "
                       f"{self.template_name} version {pinned}); nothing to replace")
            self._record_release(goal)
            outcome = RefreshOutcome("succeeded", None, 0, len(group["Instances"]), 0.0,
                                     details={"launch_template_version": int(pinned), "ami_id": goal.image_id})
            on_done(outcome)
            return outcome
        data = launch_templates.launch_data(
            image=self._images.get(goal.image_id) or self._ami_of(goal.version), source=launch_templates.version_data(self.ec2, template_id, pinned),
            goal=goal, env_name=self.env.name, env_text=self._env_text(goal.runtime),
            instance_type=self.env.aws.get("instance_type", ""), release_id=request.release_id, kms_key_id=self._volume_key())
        number = launch_templates.create_version(self.ec2, template_id, pinned, data,
                                                 f"bakery release #{request.release_id}: {request.kind} {goal.image}:{goal.version}")
        empty = group["DesiredCapacity"] == 0 or not group["Instances"]
        if empty:  # nothing to refresh: new instances launch from the pinned version
            update: dict[str, Any] = {"AutoScalingGroupName": self.group_name,
                                      "LaunchTemplate": {"LaunchTemplateId": template_id, "Version": str(number)}}
            if group["DesiredCapacity"] == 0 and self.env.instances:
                update["DesiredCapacity"] = self.env.instances
            self.autoscaling.update_auto_scaling_group(**update)
            self._note(f"launch template {self.template_name} version {number} ({goal.image_id}); the Auto Scaling group {self.group_name} "
                       f"was empty, pinned it to that version (was version {pinned})")
        else:  # the refresh's DesiredConfiguration carries the version; AWS pins the group only when the refresh succeeds
            self._note(f"launch template {self.template_name} version {number} ({goal.image_id}); Auto Scaling group {self.group_name} "
                       f"stays on version {pinned} until the instance refresh succeeds")
        state = {"release_id": request.release_id, "kind": request.kind, "env": self.env.name, "run_id": request.run_id, "pid": os.getpid(),
                 "goal": goal.to_dict(), "previous": request.previous.to_dict() if request.previous else None, "phase": "refresh",
                 "template_id": template_id, "version": number, "previous_version": pinned, "preferences": prefs, "refresh_id": None,
                 "empty": empty, "total": len(group["Instances"]) or self.env.instances, "resumed_by": []}
        self._save(state)
        return self._follow(state, cancel, on_done)

    def resume(self, cancel: Cancellation, on_done: Callable[[RefreshOutcome], None] | None = None) -> tuple[dict[str, Any], RefreshOutcome]:
        data = self.interrupted()
        if data is None:
            raise OperationError(f"environment '{self.env.name}' has no unfinished refresh")
        data["resumed_by"].append(os.getpid())
        self._save(data)
        self._note(f"re-attaching to release #{data['release_id']}'s instance refresh {data.get('refresh_id') or '(not started yet)'}")
        return data, self._follow(data, cancel, on_done or (lambda outcome: None))

    def _follow(self, state: dict[str, Any], cancel: Cancellation, on_done: Callable[[RefreshOutcome], None]) -> RefreshOutcome:
        """Start the refresh if the dead process did not get to it, wait for its end, record it, forget the state."""
        started = time.monotonic()
        goal = Goal.from_dict(state["goal"])
        if state["empty"]:
            outcome = self._wait_capacity(goal, state, cancel, started)
        else:
            if not state["refresh_id"]:
                state["refresh_id"] = instance_refresh.start(self.refresh_client, self.group_name, state["template_id"], state["version"],
                                                             state["preferences"])
                self._save(state)
                self._note(f"instance refresh {state['refresh_id']} started on {self.group_name}")
            final = self._wait_refresh(state["refresh_id"], cancel)
            outcome = self._outcome(goal, state, final, time.monotonic() - started)
        on_done(outcome)  # the release is closed first: a kill right here leaves a state file the next run simply drops
        self.forget_interrupted()
        return outcome

    def _outcome(self, goal: Goal, state: dict[str, Any], final: dict[str, Any], seconds: float) -> RefreshOutcome:
        status, reason = final["Status"], final.get("StatusReason")
        total = state["total"]
        left = final.get("InstancesToUpdate", 0 if status == "Successful" else total)
        details = {"instance_refresh_id": state["refresh_id"], "aws_status": status, "launch_template_version": state["version"],
                   "previous_launch_template_version": state["previous_version"], "ami_id": goal.image_id}
        if status == "Successful":
            self._confirm_pin(state["template_id"], state["version"])
            self._record_release(goal)
            return RefreshOutcome("succeeded", None, total - left, total, seconds, details)
        pinned = self._pinned_version()  # AWS left the group's configuration alone: it is the version pinned before
        if status == "RollbackSuccessful":
            self._note(f"Auto Scaling group {self.group_name} runs launch template version {pinned} again")
            return RefreshOutcome("rolled_back", reason or f"AWS rolled instance refresh {state['refresh_id']} back", total - left, total, seconds,
                                  details)
        where = (f"; the group stays on launch template version {pinned}; instances it replaced already run version {state['version']} "
                 "until the next deploy or ./bake.py rollback") if total - left else f"; the group stays on launch template version {pinned}"
        return RefreshOutcome("failed", f"instance refresh {state['refresh_id']} ended {status}" + (f": {reason}" if reason else "") + where,
                              total - left, total, seconds, details)

    def _pinned_version(self) -> str:
        return str((self._group().get("LaunchTemplate") or {}).get("Version", "?"))

    def _confirm_pin(self, template_id: str, version: int) -> None:
        """After a Successful refresh AWS has pinned the group to its DesiredConfiguration; pin the exact number where it did not."""
        if self._pinned_version() != str(version):
            self.autoscaling.update_auto_scaling_group(AutoScalingGroupName=self.group_name,
                                                       LaunchTemplate={"LaunchTemplateId": template_id, "Version": str(version)})
        self._note(f"Auto Scaling group {self.group_name} is pinned to launch template version {version}")

    def _wait_for_group(self, done: Callable[[dict[str, Any]], bool], cancel: Cancellation, timeout: float) -> dict[str, Any]:
        deadline, delay = time.monotonic() + timeout, self.poll_seconds
        while True:
            cancel.check()
            group = self._group()
            if done(group) or time.monotonic() > deadline:
                return group
            time.sleep(delay)
            delay = min(delay * 1.5, max(self.poll_seconds, instance_refresh.MAX_POLL_SECONDS))

    def _wait_capacity(self, goal: Goal, state: dict[str, Any], cancel: Cancellation, started: float) -> RefreshOutcome:
        """A group brought up from zero needs no refresh: its new instances launch from the pinned version."""
        wanted, version = self.env.instances, str(state["version"])

        def ready(group: dict[str, Any]) -> list[dict[str, Any]]:
            return [i for i in group["Instances"] if i["LifecycleState"] == "InService" and i["HealthStatus"] == "Healthy"
                    and (i.get("LaunchTemplate") or {}).get("Version") == version]

        self._note(f"the group was empty: waiting for {wanted} instances of launch template version {version} to be InService")
        group = self._wait_for_group(lambda g: len(ready(g)) >= wanted, cancel, CAPACITY_TIMEOUT)
        count = len(ready(group))
        details = {"launch_template_version": state["version"], "previous_launch_template_version": state["previous_version"],
                   "ami_id": goal.image_id}
        seconds = time.monotonic() - started
        if count >= wanted:
            self._record_release(goal)
            return RefreshOutcome("succeeded", None, count, wanted, seconds, details)
        return RefreshOutcome("failed", f"only {count} of {wanted} instances InService and Healthy after {CAPACITY_TIMEOUT:.0f} s", count, wanted,
                              seconds, details)

    def down(self, cancel: Cancellation) -> int:
        """Desired capacity 0 (and minimum 0): EC2 Auto Scaling drains and terminates every instance (deregistering it from the
        group's load balancer target groups first). The launch template versions and SSM release parameters stay; the next deploy
        sets the desired capacity back to the environment's `instances`. Returns how many instances were terminated."""
        group = self._group()
        count = len(group["Instances"])
        self._note(f"setting Auto Scaling group {self.group_name} to desired capacity 0; AWS drains and terminates its {count} instances")
        self.autoscaling.update_auto_scaling_group(AutoScalingGroupName=self.group_name, MinSize=0, DesiredCapacity=0)
        group = self._wait_for_group(lambda g: not g["Instances"], cancel, CAPACITY_TIMEOUT)
        if group["Instances"]:
            raise OperationError(f"Auto Scaling group {self.group_name} still has {len(group['Instances'])} instances after "
                                 f"{CAPACITY_TIMEOUT:.0f} s; look at its activity history in the EC2 console")
        return count
