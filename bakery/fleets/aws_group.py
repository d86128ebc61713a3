"""The aws target's view of an environment: its Auto Scaling group, launch template versions and AMIs.

Everything here reads: which launch template version the group is pinned to, what a
version launches (the AMI's bakery tags, the config digest tag, the runtime config
from UserData), the instances and their health, and versions or releases baked
elsewhere (adopted from the AMI tags and the SSM release history). Changing the
group, by an instance refresh, is bakery.fleets.aws, built on this class.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any

from bakery.aws import adopt, amis, instance_refresh, launch_templates, readback_record, releases, tags
from bakery.aws.clients import client, resolve_region
from bakery.environments import parse_env_file
from bakery.errors import ConfigError, OperationError
from bakery.fleets.aws_volumes import DataVolumes
from bakery.fleets.base import Fleet, FleetStatus, Goal, InstanceStatus
from bakery.provenance import sha256_json
from bakery.verify.gate import AwsVerdict

POLL_SECONDS = 5.0  # first look at a refresh; backs off to instance_refresh.MAX_POLL_SECONDS while nothing changes
LOG_GROUP_KEY = "CLOUDWATCH_LOG_GROUP"  # the runtime key the cloudwatch_agent role names its log group from
STATUS_SETTLE_SECONDS = 300.0  # one status's settle; a stop and detach take about a minute, the next run goes on
DATA_VOLUME_KEY = "BAKERY_DATA_VOLUME"  # LABEL:PATH, what the image's bakery-data-volume unit mounts


@dataclasses.dataclass
class AwsFleetStatus(FleetStatus):
    """FleetStatus with the environment's data volumes (slot, id, state, instance, ...) and what needs a look."""

    volumes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    volume_notes: list[str] = dataclasses.field(default_factory=list)


class AwsGroupFleet(Fleet):
    """An environment on EC2 Auto Scaling, as it is now (the read side of AwsFleet)."""

    target = "aws"

    def __init__(self, project, catalog, env, progress, *, refresh_client: Any = None, lifecycle_client: Any = None,
                 poll_seconds: float = POLL_SECONDS):
        super().__init__(project, catalog, env, progress)
        self.group_name = env.aws["auto_scaling_group"]
        self.template_name = env.aws["launch_template"]
        self.region = env.aws.get("region") or project.aws.region or None
        self.poll_seconds = poll_seconds
        self._refresh_client = refresh_client
        self._lifecycle_client = lifecycle_client
        self._images: dict[str, dict[str, Any] | None] = {}  # AMI id -> describe_images entry
        self._version_goals: dict[tuple[str, str], Goal | None] = {}
        self._records: dict[str, tuple[dict[str, Any] | None, str]] = {}  # version -> its record, why none

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

    @cached_property
    def records(self):
        """SSM in the home region, where the builders and distribute write every version's verification record."""
        return adopt.home_ssm(self.project.aws)

    @property
    def refresh_client(self):
        if self._refresh_client is None:
            self._refresh_client = client("autoscaling", self.region)
        return self._refresh_client

    @cached_property
    def volumes(self) -> DataVolumes | None:
        """The environment's data volumes (None without bakery_deploy.data_volume). The lifecycle calls use their own
        client: tests wrap only that one in botocore's Stubber (moto has no Pending:Wait or Terminating:Wait)."""
        if self.env.data_volume is None:
            return None
        return DataVolumes(ec2=self.ec2, lifecycle=self._lifecycle_client or self.autoscaling,
                           group_name=self.group_name, env_name=self.env.name, image=self.env.image,
                           volume=self.env.data_volume, kms_key_id=self._volume_key(), note=self._note,
                           poll_seconds=self.poll_seconds)

    def _where(self) -> str:
        return f"{self.env.path / 'group_vars' / 'all' / 'deploy.yml'}"

    def _note(self, message: str) -> None:
        self.progress.note(f"{self.env.name}: {message}")

    # ---- the group, its template, the AMIs

    def _group(self) -> dict[str, Any]:
        found = self.autoscaling.describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.group_name])["AutoScalingGroups"]
        if not found:
            raise ConfigError(f"{self._where()}: bakery_deploy.aws.auto_scaling_group '{self.group_name}' does not "
                              f"exist in {self.autoscaling.meta.region_name}; create it (see docs/aws.md) "
                              "or fix the name")
        return found[0]

    def _template(self, group: dict[str, Any]) -> dict[str, Any]:
        template = launch_templates.template(self.ec2, self.template_name)
        if template is None:
            raise ConfigError(f"{self._where()}: bakery_deploy.aws.launch_template '{self.template_name}' does not "
                              f"exist in {self.ec2.meta.region_name}; create it or fix the name")
        spec = group.get("LaunchTemplate")
        if not spec:
            raise ConfigError(f"Auto Scaling group '{self.group_name}' does not launch from a launch template "
                              "(a mixed instances policy or a launch configuration); point it at launch template "
                              f"'{self.template_name}' so bakery can pin its versions")
        if spec["LaunchTemplateId"] != template["LaunchTemplateId"]:
            raise ConfigError(f"{self._where()}: Auto Scaling group '{self.group_name}' launches from template "
                              f"'{spec.get('LaunchTemplateName')}', not '{self.template_name}' "
                              "(bakery_deploy.aws.launch_template); make them agree")
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

    def _record(self, version: str) -> tuple[dict[str, Any] | None, str]:
        """The version's verification record (and why there is none), read once per fleet: one GetParameter in
        the home region."""
        if version not in self._records:
            self._records[version] = adopt.read_record(self.records, self.env.image, version)
        return self._records[version]

    def _ami_of(self, version: str) -> dict[str, Any] | None:
        """The AMI of a version in this environment's region, found by its bakery tags (AWS is the source of
        truth): bakery's own (bakery:managed=true), the one the version's record names here when it is there,
        else the catalog's, else the newest."""
        images = [i for i in amis.find_amis(self.ec2, {tags.MANAGED: "true", tags.IMAGE: self.env.image,
                                                       tags.VERSION: version})
                  if i.get("State") == "available"]
        if not images:
            return None
        recorded = ((self._record(version)[0] or {}).get("amis") or {}).get(self.ec2.meta.region_name)
        cached = (self.catalog.version(self.env.image, version) or {}).get("image_ref")
        chosen = next((i for ref in (recorded, cached) if ref for i in images if i["ImageId"] == ref), images[0])
        self._images[chosen["ImageId"]] = chosen
        return chosen

    def verified_ami(self, goal: Goal) -> tuple[bool, str]:
        """(passed, why): whether the AMI the goal launches is the one its version's record says passed, or a copy
        distribute recorded. The catalog says only that the version passed; an AMI tagged with it may be another."""
        region = self.ec2.meta.region_name
        self._describe_images([goal.image_id])
        ami, (record, why) = self._images.get(goal.image_id), self._record(goal.version)
        passed = False
        if ami is None:
            why = "it does not exist (any more)"
        elif record is not None:
            passed, why, _ = adopt.check_ami(self.records, record, ami, region)
        if not passed:
            why = f"AMI {goal.image_id} in {region} is not the verified {goal.image}:{goal.version}: {why}"
        return passed, why

    def aws_verification(self, goal: Goal) -> AwsVerdict:
        """What `verify --target aws` found on the AMI the goal launches: its newest record in the home region's SSM
        (or, for a copy distribute recorded, its source AMI's), for exactly the snapshots EC2 shows behind it."""
        region = self.ec2.meta.region_name
        self._describe_images([goal.image_id])
        ami = self._images.get(goal.image_id)
        passed, summary = readback_record.verdict(self.records, ami, region) if ami is not None else (None, "")
        return AwsVerdict(where=f"AMI {goal.image_id} in {region}", passed=passed, summary=summary)

    def _goal_of_version(self, template_id: str, number: str) -> Goal | None:
        """What a launch template version launches: the AMI's bakery tags, the config digest tag, the runtime
        from UserData."""
        key = (template_id, number)
        if key not in self._version_goals:
            data = launch_templates.version_data(self.ec2, template_id, number)
            self._describe_images([data.get("ImageId", "")])
            image = self._images.get(data.get("ImageId", "")) or {}
            ami_tags = tags.from_tag_list(image.get("Tags"))
            goal = None
            if ami_tags.get(tags.VERSION):
                goal = Goal(image=ami_tags.get(tags.IMAGE, self.env.image), version=ami_tags[tags.VERSION],
                            image_ref=image["ImageId"],
                            config_digest=launch_templates.instance_tags(data).get(launch_templates.CONFIG_DIGEST, ""),
                            runtime=parse_env_file(launch_templates.user_data_text(
                                data.get("UserData"), f"launch template {template_id} version {number}")),
                            git_commit=ami_tags.get(tags.GIT_COMMIT, ""),
                            git_message=ami_tags.get(tags.GIT_MESSAGE, ""), image_id=image["ImageId"])
            self._version_goals[key] = goal
        return self._version_goals[key]

    # ---- Fleet: what runs

    def check_goal(self, goal: Goal) -> None:
        if goal.image != self.env.image:
            raise ConfigError(f"environment '{self.env.name}' runs image '{self.env.image}', not '{goal.image}'")
        if not goal.image_id:
            raise ConfigError(f"{goal.image}:{goal.version} has no AMI in {self.ec2.meta.region_name} "
                              f"(none tagged {tags.IMAGE}={goal.image} {tags.VERSION}={goal.version} owned by this "
                              f"account); bake it with ./bake.py build {goal.image} --target aws, "
                              "or copy it to this region with ./bake.py distribute")
        self._check_log_group()
        group = self._group()
        if self.volumes is not None:
            self.volumes.check_zone(group, self._where())
        self._template(group)

    def _check_log_group(self) -> None:
        wanted, given = self.env.aws.get("log_group"), self.env.runtime.get(LOG_GROUP_KEY)
        if wanted and given is not None and given != wanted:
            raise ConfigError(f"{self.env.path / 'group_vars' / 'all' / 'runtime.yml'}: bakery_runtime.{LOG_GROUP_KEY} "
                              f"'{given}' disagrees with bakery_deploy.aws.log_group '{wanted}' in {self._where()}; "
                              "remove one of them or make them equal")

    def _env_text(self, runtime: dict[str, str]) -> str:
        """The UserData env file: the runtime config, with the environment's log group for the CloudWatch agent
        when one is set."""
        if self.env.aws.get("log_group"):
            runtime = {**runtime, LOG_GROUP_KEY: self.env.aws["log_group"]}
        volume = self.env.data_volume
        if volume is not None:  # a bakery-owned key (bakery.runtime_grammar.OWNED_KEYS), rendered after the user's
            runtime = {**runtime, DATA_VOLUME_KEY: f"{volume.label}:{volume.path}"}
        return dataclasses.replace(self.env, runtime=runtime).runtime_env_text(params="aws")

    def _volume_key(self) -> str:
        """The EBS key of this environment's region: a home-region key cannot encrypt volumes elsewhere
        ('' = the region's default)."""
        settings = self.project.aws
        return settings.kms_key_for(self.ec2.meta.region_name, resolve_region(settings.region or None))

    def goal_for(self, version: str | None, digest: str | None, runtime: dict[str, str] | None = None) -> Goal | None:
        record = self.catalog.version(self.env.image, version) if version else None
        if record is None or version is None:
            return None
        if runtime is None:
            runtime = self.known_runtime(digest or "") or {}
        image = self._ami_of(version)
        ami = image["ImageId"] if image else ""
        provenance = record.get("provenance") or {}
        return Goal(image=self.env.image, version=version, image_ref=ami or record["image_ref"],
                    config_digest=digest or "", runtime=runtime, git_commit=provenance.get("git_commit", ""),
                    git_message=provenance.get("git_message", ""), image_id=ami)

    def _template_versions(self) -> list[dict[str, Any]]:
        """Every version of the environment's launch template, newest first (none when it does not exist)."""
        template = launch_templates.template(self.ec2, self.template_name)
        return launch_templates.all_versions(self.ec2, template["LaunchTemplateId"]) if template else []

    def known_runtime(self, config_digest: str) -> dict[str, str] | None:
        """A config deployed before lives on in the UserData of its launch template version."""
        if not config_digest:
            return None
        for version in self._template_versions():
            data = version["LaunchTemplateData"]
            if launch_templates.instance_tags(data).get(launch_templates.CONFIG_DIGEST) == config_digest:
                return parse_env_file(launch_templates.user_data_text(
                    data.get("UserData"), f"launch template version {version.get('VersionNumber')}"))
        return None

    # ---- versions baked elsewhere: the AMI tags are the record, this checkout's catalog a cache of them

    def adopt(self, version: str | None, run_id: str) -> None:
        """Record image:version from its AMI's tags (and its verification record, read in the home region) when
        this checkout's catalog lacks it, as in a fresh CI container; with no version and no version of the image
        in the catalog, the newest AMI's."""
        image, region = self.env.image, self.ec2.meta.region_name
        if version is not None:
            adopt.adopt_version(self.catalog, self.ec2, image, version, region, run_id, self.records)
            return
        known = self.catalog.versions(image)
        if known:  # the version deploy resolves to: verified now if its record was written since it was adopted
            adopt.adopt_version(self.catalog, self.ec2, image, known[0]["version"], region, run_id, self.records)
            return
        found = [i for i in amis.find_amis(self.ec2, {tags.MANAGED: "true", tags.IMAGE: image})
                 if i.get("State") == "available" and tags.from_tag_list(i.get("Tags")).get(tags.VERSION)]
        if found:
            newest = max(found, key=lambda i: (tags.from_tag_list(i.get("Tags"))[tags.VERSION],
                                               i.get("CreationDate", "")))
            adopt.adopt_ami(self.catalog, newest, region, run_id, self.records)

    def release_before(self, current: Goal, run_id: str) -> Goal | None:
        """The rollback target when this catalog has no earlier release (another checkout or CI released): the
        previous distinct version in the SSM release history, adopted from its AMI, with the runtime config of
        the newest launch template version that launched it (else the environment's). None when SSM knows no
        other release."""
        version = next((v for v in releases.history(self.ssm, self.env.image, self.env.name)
                        if v != current.version), None)
        if version is None:
            return None
        region = self.ec2.meta.region_name
        if adopt.adopt_version(self.catalog, self.ec2, self.env.image, version, region, run_id,
                               self.records) is None:
            raise OperationError(f"the release before {current.version} in SSM ({self.env.image}:{version}) has no "
                                 f"AMI tagged {tags.IMAGE}={self.env.image} {tags.VERSION}={version} in {region} "
                                 "any more; deploy a version instead")
        runtime, digest = dict(self.env.runtime), sha256_json(self.env.runtime)
        for item in self._template_versions():
            data = item["LaunchTemplateData"]
            launched = launch_templates.instance_tags(data)
            if launched.get(tags.VERSION) == version and launched.get(launch_templates.CONFIG_DIGEST):
                runtime = parse_env_file(launch_templates.user_data_text(
                    data.get("UserData"), f"launch template version {item.get('VersionNumber')}"))
                digest = launched[launch_templates.CONFIG_DIGEST]
                break
        return self.goal_for(version, digest, runtime)

    def current(self) -> Goal | None:
        """What the group's pinned launch template version launches (None when the group is empty or not
        bakery's)."""
        group = self._group()
        spec = group.get("LaunchTemplate")
        if not spec or (group["DesiredCapacity"] == 0 and not group["Instances"]):
            return None
        return self._goal_of_version(spec["LaunchTemplateId"], self._number(spec["Version"], self._template(group)))

    def status(self) -> FleetStatus:
        settled = self._settle_volumes()
        group = self._group()
        instances = [self._instance_status(i) for i in sorted(group["Instances"], key=lambda i: i["InstanceId"])]
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
            summary = {"release": ours.get("release_id"), "kind": ours.get("kind", "refresh"),
                       "to": (ours.get("goal") or {}).get("version", "?"), "phase": instance_refresh.summary(live),
                       "pid": self.holder() if ours else None, "id": live["InstanceRefreshId"]}
        volumes, notes = self.volumes.report(group) if self.volumes is not None else ([], [])
        notes = settled + notes
        for note in notes:  # on stderr, also under --json (which carries them in volume_notes)
            self._note(note)
        for instance in instances:
            held = next((v for v in volumes if v["instance"] == instance.name), None)
            if held is not None:
                instance.check += f", data volume {held['id']} (slot {held['slot']})"
        return AwsFleetStatus(env=self.env.name, target=self.target, state=state, endpoint=None,
                              lb_running=desired > 0, desired=desired, instances=instances, refresh=summary,
                              volumes=volumes, volume_notes=notes)

    def _settle_volumes(self) -> list[str]:
        """Holding the environment (status, down, a deploy's end): finish the data-volume hand-overs waiting in the
        lifecycle hooks, also those of the launches and terminations Auto Scaling starts by itself (health
        replacements, scaling), which only a scheduled `status` serves. Read-only while another bake.py holds it."""
        if self.volumes is None or not self.env_state.held:
            return []
        self.volumes.settle(lambda: None, timeout=STATUS_SETTLE_SECONDS)
        return [f"settled data-volume hand-overs: {', '.join(self.volumes.settled)}"] if self.volumes.settled else []

    def _instance_status(self, i: dict[str, Any]) -> InstanceStatus:
        spec = i.get("LaunchTemplate") or {}
        pinned = spec.get("Version", "")
        goal = self._goal_of_version(spec["LaunchTemplateId"], pinned) if pinned.isdigit() else None
        in_service = i["LifecycleState"] == "InService" and i["HealthStatus"] == "Healthy"
        return InstanceStatus(
            name=i["InstanceId"], version=goal.version if goal else None,
            config_digest=goal.config_digest if goal else None, state=i["LifecycleState"], health=i["HealthStatus"],
            lb_state="ready" if in_service else i["LifecycleState"].lower(), in_service=in_service, address=None,
            check=f"{i['AvailabilityZone']}, launch template version {spec.get('Version', '-')}",
            git_commit=goal.git_commit if goal else None)
