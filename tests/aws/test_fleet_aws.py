"""The aws fleet against moto server: pinned launch template versions, UserData, SSM releases, promote, down.

EC2, Auto Scaling groups and SSM are moto server on loopback. The instance
refresh calls (start/describe/cancel/rollback), which moto lacks, go through
botocore's Stubber on the fleet's own refresh client: it checks every request
against the service model and, with expected_params, the exact preferences.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import shutil
from pathlib import Path

import botocore.session
import botocore.validate
import pytest
import yaml
from botocore.stub import Stubber

from bakery.aws import (
    amis,
    clients,
    instance_refresh,
    launch_templates,
    readback_record,
    releases,
    shapes,
    verification_record,
)
from bakery.catalog import open_catalog
from bakery.cli import main as bake_main
from bakery.config import Project
from bakery.environments import REFRESH_CHOICES, RefreshPreferences, load_environment
from bakery.errors import ConfigError, OperationError
from bakery.fleets import operations
from bakery.fleets.aws import AwsFleet
from bakery.fleets.base import Goal
from bakery.progress import Progress
from bakery.verify import gate
from tests.conftest import REPO, bake

pytestmark = pytest.mark.aws

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MESSAGE = "Tune the app\n\nwith a body line <and> an ampersand & more"
QA_PREFERENCES = {"MinHealthyPercentage": 50, "MaxHealthyPercentage": 150, "InstanceWarmup": 30, "SkipMatching": True,
                  "StandbyInstances": "Ignore", "ScaleInProtectedInstances": "Ignore",
                  "AutoRollback": True, "BakeTime": 60, "CheckpointPercentages": [50, 100], "CheckpointDelay": 20,
                  "AlarmSpecification": {"Alarms": ["webapp-qa-5xx"]}}


def deploy_yml(name: str, group: str, template: str, **extra) -> dict:
    return {"bakery_deploy": {
        "target": "aws", "image": "webapp", "instances": 2, "require_verified": False,
        "refresh": {"min_healthy_percentage": 50, "max_healthy_percentage": 150, "instance_warmup": 30,
                    "checkpoint_percentages": [50, 100], "checkpoint_delay": 20, "bake_time": 60},
        "aws": {"auto_scaling_group": group, "launch_template": template, "instance_type": "t3.small",
                "alarms": [f"webapp-{name}-5xx"]},
        **extra}}


class World:
    """A project with aws environments qa and prod, two baked versions with AMIs, a group per environment on
    version 1."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copy(REPO / "bakery.yml", root / "bakery.yml")
        self.write_env("qa", deploy_yml("qa", "web-qa", "web-qa-lt"), {"LOG_LEVEL": "info", "DATABASE_URL": "postgres://db/app"})
        self.write_env("prod", deploy_yml("prod", "web-prod", "web-prod-lt", promote_from="qa"), {"LOG_LEVEL": "warn"})
        self.project = Project(root)
        self.catalog = open_catalog(self.project.state_dir)
        self.lines = io.StringIO()
        self.session = operations.Session(self.project, self.catalog, Progress(self.lines))
        self.ec2, self.asg, self.ssm = clients.client("ec2"), clients.client("autoscaling"), clients.client("ssm")
        self.versions, self.amis = [], []
        for _ in range(2):
            version = self.catalog.reserve_version("webapp", "run", 1)
            ami = self.ec2.register_image(Name=f"webapp-{version}", RootDeviceName="/dev/xvda")["ImageId"]
            self.ec2.create_tags(Resources=[ami], Tags=[{"Key": "bakery:managed", "Value": "true"},
                                                         {"Key": "bakery:image", "Value": "webapp"},
                                                         {"Key": "bakery:version", "Value": version},
                                                         {"Key": "bakery:git-commit", "Value": COMMIT}])
            self.catalog.complete_version("webapp", version, image_ref=ami, image_id=ami, input_digest="sha256:x",
                                          layers=[], provenance={"git_commit": COMMIT, "git_message": MESSAGE})
            self.versions.append(version)
            self.amis.append(ami)
        self.templates = {env: self.group(env, self.amis[0]) for env in ("qa", "prod")}

    def write_env(self, name: str, deploy: dict, runtime: dict) -> None:
        folder = self.root / "inventories" / name / "group_vars" / "all"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "deploy.yml").write_text(yaml.safe_dump(deploy))
        (folder / "runtime.yml").write_text(yaml.safe_dump({"bakery_runtime": runtime}))

    def group(self, env: str, ami: str) -> str:
        template = self.ec2.create_launch_template(
            LaunchTemplateName=f"web-{env}-lt",
            LaunchTemplateData={"ImageId": ami, "InstanceType": "t3.micro"})["LaunchTemplate"]
        self.asg.create_auto_scaling_group(AutoScalingGroupName=f"web-{env}", MinSize=1, MaxSize=4, DesiredCapacity=2,
                                           AvailabilityZones=["us-east-1a"],
                                           LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"],
                                                           "Version": "1"})
        return template["LaunchTemplateId"]

    def env(self, name: str):
        return load_environment(self.project, name)

    def pinned(self, env: str) -> str:
        group = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[f"web-{env}"])["AutoScalingGroups"][0]
        return group["LaunchTemplate"]["Version"]

    def template_data(self, env: str, version: str) -> dict:
        found = self.ec2.describe_launch_template_versions(LaunchTemplateId=self.templates[env], Versions=[version])
        return found["LaunchTemplateVersions"][0]["LaunchTemplateData"]

    def template_versions(self, env: str) -> list[dict]:
        found = self.ec2.describe_launch_template_versions(LaunchTemplateId=self.templates[env])
        return found["LaunchTemplateVersions"]

    def released(self, env: str) -> dict | None:
        return releases.released(self.ssm, "webapp", env)


@pytest.fixture
def world(aws, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    made = World(root)
    yield made
    made.catalog.close()


@pytest.fixture
def refresh(world, monkeypatch):
    """The instance refresh client behind a Stubber; every fleet operations opens uses it and polls without waiting."""
    stubbed = clients.client("autoscaling")
    monkeypatch.setattr(operations, "get_fleet",
                        lambda target: functools.partial(AwsFleet, refresh_client=stubbed, poll_seconds=0))
    with Stubber(stubbed) as stub:
        yield stub
        stub.assert_no_pending_responses()


@pytest.fixture
def group_updates(world):
    """Every UpdateAutoScalingGroup a fleet client makes (clients created from now on carry this hook; the test's
    own do not)."""
    calls = []
    clients._session(None).events.register("before-parameter-build.auto-scaling.UpdateAutoScalingGroup",
                                           lambda params, **_: calls.append(params))
    return calls


class PinWatch(Progress):
    """Notes which launch template version the group is pinned to whenever the fleet reports on its instance refresh."""

    def __init__(self, stream, world, env: str):
        super().__init__(stream)
        self.world, self.env, self.pins = world, env, []

    def note(self, message: str) -> None:
        super().note(message)
        if "instance refresh rid-" in message:
            self.pins.append(self.world.pinned(self.env))


def described(stub, group, *refreshes, ids=None):
    """Queue one DescribeInstanceRefreshes answer (of the group, or of the given refresh ids)."""
    params = {"AutoScalingGroupName": group, **({"InstanceRefreshIds": ids} if ids else {})}
    items = [{"InstanceRefreshId": rid, "AutoScalingGroupName": group, "Status": status, **extra}
             for rid, status, extra in refreshes]
    stub.add_response("describe_instance_refreshes", {"InstanceRefreshes": items}, params)


def started(stub, world, group, template_env, version, refresh_id, prefs=QA_PREFERENCES):
    stub.add_response("start_instance_refresh", {"InstanceRefreshId": refresh_id}, {
        "AutoScalingGroupName": group, "Strategy": "Rolling", "Preferences": prefs,
        "DesiredConfiguration": {"LaunchTemplate": {"LaunchTemplateId": world.templates[template_env],
                                                    "Version": version}}})


@pytest.mark.parametrize("region_keys, volume_key", [({"us-east-1": "alias/east"}, "alias/east"), ({}, None)])
def test_deploy_pins_a_new_version_waits_for_the_refresh_and_releases_in_ssm(world, refresh, group_updates,
                                                                             region_keys, volume_key):
    # The environment is in us-east-1, the home region elsewhere: its volumes take us-east-1's key (or the region's
    # default), never home's.
    aws = world.project.aws
    aws.region, aws.kms_key_id, aws.region_kms_key_ids = "eu-west-1", "alias/home", region_keys
    settings = deploy_yml("qa", "web-qa", "web-qa-lt")
    settings["bakery_deploy"]["aws"].update(region="us-east-1", log_group="/bakery/qa-web")
    world.write_env("qa", settings, {"LOG_LEVEL": "info", "DATABASE_URL": "postgres://db/app"})
    qa = world.env("qa")
    world.session.progress = PinWatch(world.lines, world, "qa")
    described(refresh, "web-qa")  # nothing running on the group
    started(refresh, world, "web-qa", "qa", "2", "rid-1")
    described(refresh, "web-qa", ("rid-1", "InProgress", {"PercentageComplete": 50, "InstancesToUpdate": 1,
                                                          "StatusReason": "Waiting for instances to warm up"}),
              ids=["rid-1"])
    described(refresh, "web-qa", ("rid-1", "Successful", {"PercentageComplete": 100, "InstancesToUpdate": 0}),
              ids=["rid-1"])
    described(refresh, "web-qa", ("rid-1", "Successful", {}))  # the status shown at the end

    result = operations.deploy(world.session, qa, "webapp", world.versions[1])

    assert result.ok
    assert (result.from_version, result.to_version, result.replaced, result.total) == (*world.versions[:2], 2, 2)
    # The refresh carried the new version; the group stayed on the old one until it succeeded, then was pinned to the
    # exact number.
    assert world.session.progress.pins[:3] == ["1", "1", "1"] and world.pinned("qa") == "2"  # never $Latest or $Default
    # moto leaves the pin to bakery's confirm step
    assert [call["LaunchTemplate"]["Version"] for call in group_updates] == ["2"]
    data = world.template_data("qa", "2")
    assert data["ImageId"] == world.amis[1] and data["InstanceType"] == "t3.small"
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["BlockDeviceMappings"] and all(m["Ebs"]["Encrypted"] for m in data["BlockDeviceMappings"])
    mappings = data["BlockDeviceMappings"]
    assert [m["Ebs"].get("KmsKeyId") for m in mappings] == [volume_key] * len(mappings)
    user_data = base64.b64decode(data["UserData"]).decode()
    with_log_group = dataclasses.replace(qa, runtime={**qa.runtime, "CLOUDWATCH_LOG_GROUP": "/bakery/qa-web"})
    assert user_data == with_log_group.runtime_env_text(params="aws")
    assert 'DATABASE_URL="postgres://db/app"\n' in user_data and 'ENVIRONMENT="qa"' in user_data
    assert 'CLOUDWATCH_LOG_GROUP="/bakery/qa-web"\n' in user_data  # the agent names its log group from it
    tags = {spec["ResourceType"]: {t["Key"]: t["Value"] for t in spec["Tags"]} for spec in data["TagSpecifications"]}
    assert set(tags) == {"instance", "volume"}
    for resource in tags.values():
        assert resource["bakery:environment"] == "qa" and resource["bakery:version"] == world.versions[1]
        assert resource["bakery:git-commit"] == COMMIT
        # one line, AWS's tag alphabet
        assert resource["bakery:git-message"] == "Tune the app with a body line and an ampersand more"
        assert resource["bakery:config-digest"] == qa.config_digest()
    assert world.released("qa") == {"ami_id": world.amis[1], "version": world.versions[1]}
    release = world.catalog.releases("qa")[0]
    assert release["status"] == "succeeded" and release["details"]["instance_refresh_id"] == "rid-1"
    progress = world.lines.getvalue()
    assert "InProgress 50% (1 instances to update): Waiting for instances to warm up" in progress
    assert not (world.project.state_dir / "envs" / "qa" / "refresh.json").exists()


@pytest.mark.parametrize("final, reason, result", [
    ("Failed", "Instance i-1 failed its ELB health check", "failed"),
    ("RollbackSuccessful", "Alarm webapp-qa-5xx went off", "rolled back"),
])
def test_a_refresh_that_fails_or_rolls_back_exits_1_and_leaves_ssm_alone(world, refresh, group_updates, capsys, final,
                                                                         reason, result):
    releases.record_release(world.ssm, "webapp", "qa", world.amis[0], world.versions[0])
    described(refresh, "web-qa")
    started(refresh, world, "web-qa", "qa", "2", "rid-2")
    described(refresh, "web-qa", ("rid-2", final, {"PercentageComplete": 50, "InstancesToUpdate": 1,
                                                   "StatusReason": reason}), ids=["rid-2"])
    described(refresh, "web-qa")

    code = bake_main(["--project", str(world.root), "deploy", f"webapp:{world.versions[1]}", "--env", "qa"])

    err = capsys.readouterr().err
    assert code == 1 and f"bake.py: error: deploy of webapp:{world.versions[1]} to qa {result}" in err and reason in err
    assert world.released("qa") == {"ami_id": world.amis[0], "version": world.versions[0]}
    assert releases.history(world.ssm, "webapp", "qa") == [world.versions[0]]
    # the group never left the version pinned before: nothing to re-pin
    assert world.pinned("qa") == "1" and group_updates == []
    assert "the group stays on launch template version 1" in err or final != "Failed"
    assert world.catalog.releases("qa")[0]["status"] == result.replace(" ", "_")


@pytest.mark.parametrize("replace", [True, False])
def test_a_running_refresh_is_cancelled_with_replace_running_or_waited_for(world, refresh, replace):
    running = ("rid-0", "InProgress", {"PercentageComplete": 40, "InstancesToUpdate": 2})
    described(refresh, "web-qa", running)
    if replace:
        refresh.add_response("cancel_instance_refresh", {"InstanceRefreshId": "rid-0"},
                             {"AutoScalingGroupName": "web-qa"})
        described(refresh, "web-qa", ("rid-0", "Cancelled", {}), ids=["rid-0"])
        described(refresh, "web-qa", ("rid-0", "Cancelled", {}))  # the deploy's own look before it starts
    else:
        described(refresh, "web-qa", ("rid-0", "InProgress", {"PercentageComplete": 80, "InstancesToUpdate": 1}),
                  ids=["rid-0"])
        described(refresh, "web-qa", ("rid-0", "Successful", {}), ids=["rid-0"])
    started(refresh, world, "web-qa", "qa", "2", "rid-1")
    described(refresh, "web-qa", ("rid-1", "Successful", {}), ids=["rid-1"])
    described(refresh, "web-qa")

    result = operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1], replace_running=replace)

    assert result.ok and world.pinned("qa") == "2"
    progress = world.lines.getvalue()
    assert ("cancelling instance refresh rid-0" in progress) is replace
    assert ("waiting for it to end" in progress) is not replace
    assert "instance refresh rid-0: InProgress 80% (1 instances to update)" in progress or replace


class Interrupt(Progress):
    """Ctrl-C at the moment a progress line matching `at` is printed."""

    def __init__(self, stream, at: str):
        super().__init__(stream)
        self.at = at

    def note(self, message: str) -> None:
        super().note(message)
        if self.at in message:
            self.at = "\0never"
            raise KeyboardInterrupt


def test_rollback_while_the_refresh_runs_asks_aws_to_roll_it_back(world, refresh, group_updates):
    described(refresh, "web-qa")
    started(refresh, world, "web-qa", "qa", "2", "rid-1")
    described(refresh, "web-qa", ("rid-1", "InProgress", {"PercentageComplete": 20}), ids=["rid-1"])
    world.session.progress = Interrupt(world.lines, "InProgress 20%")
    with pytest.raises(KeyboardInterrupt):
        operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1])
    # the refresh goes on at AWS; bakery knows its id
    assert (world.project.state_dir / "envs" / "qa" / "refresh.json").exists()

    described(refresh, "web-qa", ("rid-1", "InProgress", {"PercentageComplete": 30}))
    refresh.add_response("rollback_instance_refresh", {"InstanceRefreshId": "rid-1"},
                         {"AutoScalingGroupName": "web-qa"})
    described(refresh, "web-qa", ("rid-1", "RollbackInProgress", {}), ids=["rid-1"])
    rolled_back = ("rid-1", "RollbackSuccessful", {"StatusReason": "rolled back by request"})
    described(refresh, "web-qa", rolled_back, ids=["rid-1"])
    described(refresh, "web-qa", rolled_back, ids=["rid-1"])  # re-attached

    result = operations.rollback(world.session, world.env("qa"))

    deploy_release = world.catalog.releases("qa")[0]
    assert result.ok and result.kind == "rollback" and result.to_version == world.versions[0]
    assert result.release_id == deploy_release["id"]
    assert deploy_release["status"] == "rolled_back" and deploy_release["kind"] == "deploy"
    assert world.pinned("qa") == "1" and world.released("qa") is None and group_updates == []
    assert not (world.project.state_dir / "envs" / "qa" / "refresh.json").exists()


def test_promote_puts_the_same_ami_in_the_next_environments_launch_template(world, refresh):
    # qa runs the second version: its group is pinned to a version of its template with that AMI.
    world.ec2.create_launch_template_version(LaunchTemplateId=world.templates["qa"], SourceVersion="1",
                                             LaunchTemplateData={"ImageId": world.amis[1]})
    world.asg.update_auto_scaling_group(AutoScalingGroupName="web-qa",
                                        LaunchTemplate={"LaunchTemplateId": world.templates["qa"], "Version": "2"})
    runs(world, "qa", "2")
    tag_ami(world, 1, "passed")  # the gate checks the AMI promoted against the version's record
    world.catalog.record_verification("webapp", world.versions[1], env=None, started="2026-11-29T00:00:00Z",
                                      seconds=1.0, passed=True, run_id="r", summary="passed", reports={})
    described(refresh, "web-qa")  # promote checks the version is healthy in qa: no refresh there
    described(refresh, "web-prod")
    prod_prefs = {**QA_PREFERENCES, "AlarmSpecification": {"Alarms": ["webapp-prod-5xx"]}}
    started(refresh, world, "web-prod", "prod", "2", "rid-p", prefs=prod_prefs)
    described(refresh, "web-prod", ("rid-p", "Successful", {}), ids=["rid-p"])
    described(refresh, "web-prod")

    result = operations.promote(world.session, world.env("prod"), "webapp", None)

    assert result.ok and result.kind == "promote" and result.to_version == world.versions[1]
    prod_image = world.template_data("prod", world.pinned("prod"))["ImageId"]
    assert prod_image == world.template_data("qa", "2")["ImageId"] == world.amis[1]
    assert world.released("prod") == {"ami_id": world.amis[1], "version": world.versions[1]}
    assert 'ENVIRONMENT="prod"' in base64.b64decode(world.template_data("prod", "2")["UserData"]).decode()


def runs(world, env: str, version: str) -> None:
    """moto reports every instance of a group on its template's default version: make that the version the group
    runs."""
    world.ec2.modify_launch_template(LaunchTemplateId=world.templates[env], DefaultVersion=version)


def test_down_sets_the_desired_capacity_to_zero(world, refresh):
    described(refresh, "web-qa")  # down looks at the environment first

    down = operations.down(world.session, world.env("qa"))

    group = world.asg.describe_auto_scaling_groups(AutoScalingGroupNames=["web-qa"])["AutoScalingGroups"][0]
    assert down["removed"] == 2 and (group["MinSize"], group["DesiredCapacity"], group["Instances"]) == (0, 0, [])
    assert world.catalog.releases("qa")[0]["kind"] == "down" and world.pinned("qa") == "1"


def test_an_up_to_date_environment_is_left_alone(world, refresh):
    described(refresh, "web-qa")
    started(refresh, world, "web-qa", "qa", "2", "rid-1")
    described(refresh, "web-qa", ("rid-1", "Successful", {}), ids=["rid-1"])
    described(refresh, "web-qa")
    operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1])
    runs(world, "qa", "2")
    # the same version and config again: no new launch template version, no refresh started
    described(refresh, "web-qa")
    described(refresh, "web-qa")

    result = operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1])

    assert result.ok and result.replaced == 0 and world.pinned("qa") == "2"
    assert "nothing to replace" in world.lines.getvalue()
    assert len(world.template_versions("qa")) == 2
    assert releases.history(world.ssm, "webapp", "qa") == [world.versions[1]]


def test_an_up_to_date_group_on_latest_is_pinned_all_the_same(world, refresh):
    # Nothing to replace, but a group left on $Latest would launch whatever version is made next (by anyone with
    # CreateLaunchTemplateVersion) on its next scale-out, without a refresh or a PassRole check: pin it anyway.
    described(refresh, "web-qa")
    started(refresh, world, "web-qa", "qa", "2", "rid-1")
    described(refresh, "web-qa", ("rid-1", "Successful", {}), ids=["rid-1"])
    described(refresh, "web-qa")
    operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1])
    runs(world, "qa", "2")
    latest = {"LaunchTemplateId": world.templates["qa"], "Version": "$Latest"}
    world.asg.update_auto_scaling_group(AutoScalingGroupName="web-qa", LaunchTemplate=latest)
    described(refresh, "web-qa")
    described(refresh, "web-qa")

    result = operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1])

    assert result.ok and result.replaced == 0 and "nothing to replace" in world.lines.getvalue()
    assert world.pinned("qa") == "2" and len(world.template_versions("qa")) == 2


def test_refresh_preferences_map_one_to_one_and_refuse_what_aws_would():
    prefs = RefreshPreferences(min_healthy_percentage=90, max_healthy_percentage=110, instance_warmup=5,
                               skip_matching=False, auto_rollback=False, bake_time=0)
    assert instance_refresh.preferences(prefs, []) == {"MinHealthyPercentage": 90, "MaxHealthyPercentage": 110,
                                                       "InstanceWarmup": 5, "SkipMatching": False,
                                                       "AutoRollback": False, "BakeTime": 0,
                                                       "StandbyInstances": "Ignore",
                                                       "ScaleInProtectedInstances": "Ignore"}
    with pytest.raises(ConfigError, match="at most 100 above"):
        instance_refresh.preferences(RefreshPreferences(min_healthy_percentage=0, max_healthy_percentage=150), [])


def test_ssm_history_gives_the_previous_distinct_release(aws):
    ssm = clients.client("ssm")
    for version in ("20261129.001", "20261129.002", "20261129.002", "20261129.003"):
        releases.record_release(ssm, "webapp", "prod", f"ami-{version[-3:]}", version)
    assert releases.released(ssm, "webapp", "prod") == {"ami_id": "ami-003", "version": "20261129.003"}
    assert releases.previous_release(ssm, "webapp", "prod") == "20261129.002"
    assert releases.previous_release(ssm, "webapp", "nowhere") is None


def test_bake_py_names_a_missing_group_in_one_line(world):
    world.asg.delete_auto_scaling_group(AutoScalingGroupName="web-qa", ForceDelete=True)
    out = bake(world.root, "deploy", f"webapp:{world.versions[1]}", "--env", "qa", timeout=60)
    assert out.rc == 2, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "bakery_deploy.aws.auto_scaling_group 'web-qa' does not exist in us-east-1" in out.stderr
    assert world.catalog.releases("qa") == []
    assert len(world.template_versions("qa")) == 1


def test_status_of_an_aws_environment_names_its_group_and_the_version_each_instance_runs(world, refresh, capsys):
    described(refresh, "web-qa")  # status asks for a running refresh once

    code = bake_main(["--project", str(world.root), "status", "--env", "qa"])

    out = capsys.readouterr().out
    assert code == 0
    assert "qa: up - 2 of 2 instances in service, Auto Scaling group web-qa" in out.splitlines()[0]
    assert "None" not in out and "NOT running" not in out
    assert out.count(world.versions[0]) >= 2  # each instance's version, from its launch template version's AMI tags


# ---- a fresh checkout (a CI container): the catalog knows nothing, the AMI tags and SSM history are the record


def tag_ami(world, index: int, verified: str) -> None:
    """Mark an AMI the way the builders do: bakery's tags, and the write-once verification record of its test run
    (the tag alone is no proof: bakery.aws.verification_record)."""
    facts = {"bakery:managed": "true", "bakery:verified": verified, "bakery:verification": f"12 tests, {verified}"}
    world.ec2.create_tags(Resources=[world.amis[index]], Tags=[{"Key": k, "Value": v} for k, v in facts.items()])
    region = world.ec2.meta.region_name
    snapshots = amis.snapshot_ids(amis.describe_ami(world.ec2, world.amis[index]))
    verification_record.write_record(
        clients.client("ssm", region), image="webapp", version=world.versions[index], passed=verified == "passed",
        amis={region: world.amis[index]}, snapshots={region: snapshots}, report_sha256="",
        summary=f"12 tests, {verified}", run_id="bake-1")


@pytest.fixture
def fresh(world, tmp_path):
    """A session whose catalog is empty, in a directory of its own (the project and AWS are the same)."""
    catalog = open_catalog(tmp_path / "ci")
    yield operations.Session(world.project, catalog, Progress(world.lines))
    catalog.close()


def test_promote_from_an_empty_catalog_adopts_the_version_and_its_verification_record(world, refresh, fresh):
    world.ec2.create_launch_template_version(LaunchTemplateId=world.templates["qa"], SourceVersion="1",
                                             LaunchTemplateData={"ImageId": world.amis[1]})
    world.asg.update_auto_scaling_group(AutoScalingGroupName="web-qa",
                                        LaunchTemplate={"LaunchTemplateId": world.templates["qa"], "Version": "2"})
    runs(world, "qa", "2")
    tag_ami(world, 1, "passed")
    described(refresh, "web-qa")
    described(refresh, "web-prod")
    started(refresh, world, "web-prod", "prod", "2", "rid-p",
            prefs={**QA_PREFERENCES, "AlarmSpecification": {"Alarms": ["webapp-prod-5xx"]}})
    described(refresh, "web-prod", ("rid-p", "Successful", {}), ids=["rid-p"])
    described(refresh, "web-prod")

    result = operations.promote(fresh, world.env("prod"), "webapp", None)

    assert result.ok and result.to_version == world.versions[1]
    row = fresh.catalog.version("webapp", world.versions[1])
    assert row["status"] == "ready" and row["image_ref"] == world.amis[1]
    verifications = fresh.catalog.verifications("webapp", world.versions[1])
    assert [(v["passed"], v["summary"]) for v in verifications] == [(True, "12 tests, passed")]
    assert world.released("prod") == {"ami_id": world.amis[1], "version": world.versions[1]}
    assert world.pinned("prod") == "2"


def test_rollback_from_an_empty_catalog_returns_to_the_previous_release_in_ssm_with_its_config(world, refresh, fresh):
    old, new = world.versions
    # v0 was released by another checkout with launch template version 2 (its runtime config in UserData), v1 runs
    # now (version 3).
    released_before = {
        "ImageId": world.amis[0], "UserData": base64.b64encode(b'LOG_LEVEL="debug"\nENVIRONMENT="qa"\n').decode(),
        "TagSpecifications": [{"ResourceType": "instance",
                               "Tags": [{"Key": "bakery:version", "Value": old},
                                        {"Key": "bakery:config-digest", "Value": "sha256:old"}]}]}
    world.ec2.create_launch_template_version(LaunchTemplateId=world.templates["qa"], SourceVersion="1",
                                             LaunchTemplateData=released_before)
    world.ec2.create_launch_template_version(LaunchTemplateId=world.templates["qa"], SourceVersion="1",
                                             LaunchTemplateData={"ImageId": world.amis[1]})
    world.asg.update_auto_scaling_group(AutoScalingGroupName="web-qa",
                                        LaunchTemplate={"LaunchTemplateId": world.templates["qa"], "Version": "3"})
    runs(world, "qa", "3")
    releases.record_release(world.ssm, "webapp", "qa", world.amis[0], old)
    releases.record_release(world.ssm, "webapp", "qa", world.amis[1], new)
    tag_ami(world, 0, "passed")
    described(refresh, "web-qa")  # no refresh to roll back: a rollback release
    described(refresh, "web-qa")
    started(refresh, world, "web-qa", "qa", "4", "rid-r")
    described(refresh, "web-qa", ("rid-r", "Successful", {}), ids=["rid-r"])
    described(refresh, "web-qa")

    result = operations.rollback(fresh, world.env("qa"))

    assert result.ok and (result.kind, result.from_version, result.to_version) == ("rollback", new, old)
    data = world.template_data("qa", "4")
    assert data["ImageId"] == world.amis[0]
    assert base64.b64decode(data["UserData"]).decode() == 'ENVIRONMENT="qa"\nLOG_LEVEL="debug"\nBAKERY_PARAMS="aws"\n'
    assert fresh.catalog.releases("qa")[0]["config_digest"] == "sha256:old"
    assert world.released("qa") == {"ami_id": world.amis[0], "version": old} and world.pinned("qa") == "4"
    assert fresh.catalog.version("webapp", old)["image_ref"] == world.amis[0]


def test_deploy_from_an_empty_catalog_takes_the_newest_ami_and_its_failed_verification_closes_the_gate(world, fresh):
    settings = deploy_yml("qa", "web-qa", "web-qa-lt")
    settings["bakery_deploy"]["require_verified"] = True
    world.write_env("qa", settings, {"LOG_LEVEL": "info"})
    tag_ami(world, 0, "passed")
    tag_ami(world, 1, "failed")

    failed = rf"webapp:{world.versions[1]} failed its last verification \(12 tests, failed\)"
    with pytest.raises(OperationError, match=failed) as err:
        operations.deploy(fresh, world.env("qa"), "webapp", None)

    assert err.value.exit_code == 1 and fresh.catalog.releases("qa") == []
    assert len(world.template_versions("qa")) == 1


def test_an_environment_in_another_region_reads_the_verification_record_in_the_home_region(world, fresh, tmp_path):
    # The bake copied the AMI to eu-west-1 itself and wrote the record in the home region (the chain's us-east-1:
    # bakery.yml sets no aws.region); eu-west-1's SSM holds no record.
    eu_ec2, version = clients.client("ec2", "eu-west-1"), world.versions[1]
    eu_ami = eu_ec2.register_image(Name=f"webapp-{version}", RootDeviceName="/dev/xvda")["ImageId"]
    eu_ec2.create_tags(Resources=[eu_ami], Tags=[{"Key": k, "Value": v} for k, v in {
        "bakery:managed": "true", "bakery:image": "webapp", "bakery:version": version}.items()])
    built = {"us-east-1": world.amis[1], "eu-west-1": eu_ami}
    verification_record.write_record(
        world.ssm, image="webapp", version=version, passed=True, amis=built,
        snapshots={region: amis.snapshot_ids(amis.describe_ami(clients.client("ec2", region), ami))
                   for region, ami in built.items()},
        report_sha256="", summary="12 tests, passed", run_id="bake-1")
    settings = deploy_yml("eu", "web-eu", "web-eu-lt")
    settings["bakery_deploy"]["aws"]["region"] = "eu-west-1"
    world.write_env("eu", settings, {"LOG_LEVEL": "info"})
    newest = open_catalog(tmp_path / "ci-newest")  # adopt(None): the newest AMI of the image in the region

    for catalog, wanted in ((fresh.catalog, version), (newest, None)):
        AwsFleet(world.project, catalog, world.env("eu"), Progress(world.lines)).adopt(wanted, "run-eu")
        assert catalog.version("webapp", version)["image_ref"] == eu_ami
        [verification] = catalog.verifications("webapp", version)
        assert verification["passed"] and verification["reports"]["record"] == f"/bakery/verifications/webapp/{version}"
    newest.close()


# ---- the gate checks the AMI deployed: the catalog says which version passed, the record which AMI it was


def gated(world, env: str = "qa") -> None:
    settings = deploy_yml(env, f"web-{env}", f"web-{env}-lt")
    settings["bakery_deploy"]["require_verified"] = True
    world.write_env(env, settings, {"LOG_LEVEL": "info"})


def other_ami(world, name: str, ec2=None, **extra: str) -> str:
    """An AMI carrying version 2's tags that its verification record does not name."""
    ec2 = ec2 or world.ec2
    ami = ec2.register_image(Name=name, RootDeviceName="/dev/xvda")["ImageId"]
    ec2.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in {
        "bakery:managed": "true", "bakery:image": "webapp", "bakery:version": world.versions[1], **extra}.items()])
    return ami


def test_deploy_refuses_an_ami_its_versions_record_does_not_name_though_the_catalog_says_passed(world, refresh):
    # The version passed its bake's verification, for AMI `old` (the catalog row and the record say so); `old` was
    # deregistered and another AMI carries the version's tags: the AMI deploy would launch was never verified.
    version, old = world.versions[1], world.amis[1]
    tag_ami(world, 1, "passed")
    world.catalog.record_verification("webapp", version, env=None, started="x", seconds=1.0, passed=True, run_id="r",
                                      summary="12 passed", reports={})
    world.ec2.deregister_image(ImageId=old)
    forged = other_ami(world, "someone-else")
    gated(world)

    with pytest.raises(OperationError, match=rf"AMI {forged} in us-east-1 is not the verified webapp:{version}: "
                                             rf"the record names no AMI {forged} in us-east-1") as err:
        operations.deploy(world.session, world.env("qa"), "webapp", version)

    assert err.value.exit_code == 1 and "\n" not in str(err.value)
    assert world.catalog.releases("qa") == [] and len(world.template_versions("qa")) == 1


def test_promote_refuses_an_ami_its_versions_record_does_not_name(world, refresh):
    # qa runs an AMI tagged with version 2 that the version's record does not name (the recorded one is gone).
    version = world.versions[1]
    tag_ami(world, 1, "passed")
    world.ec2.deregister_image(ImageId=world.amis[1])
    forged = other_ami(world, "someone-else")
    world.ec2.create_launch_template_version(LaunchTemplateId=world.templates["qa"], SourceVersion="1",
                                             LaunchTemplateData={"ImageId": forged})
    world.asg.update_auto_scaling_group(AutoScalingGroupName="web-qa",
                                        LaunchTemplate={"LaunchTemplateId": world.templates["qa"], "Version": "2"})
    runs(world, "qa", "2")
    world.catalog.record_verification("webapp", version, env=None, started="x", seconds=1.0, passed=True, run_id="r",
                                      summary="12 passed", reports={})
    described(refresh, "web-qa")  # promote checks the version is healthy in qa

    with pytest.raises(OperationError, match=rf"AMI {forged} in us-east-1 is not the verified webapp:{version}"):
        operations.promote(world.session, world.env("prod"), "webapp", None)

    assert world.catalog.releases("prod") == [] and len(world.template_versions("prod")) == 1


def test_the_ami_chosen_is_the_one_the_record_names_and_always_bakerys(world):
    # Three AMIs carry version 2's tags: the catalog's (amis[1]), a newer one the record names, and a newest one
    # without bakery:managed=true (not bakery's: never chosen).
    version = world.versions[1]
    recorded = other_ami(world, "webapp-rebuilt")
    verification_record.write_record(
        world.ssm, image="webapp", version=version, passed=True, amis={"us-east-1": recorded},
        snapshots={"us-east-1": amis.snapshot_ids(amis.describe_ami(world.ec2, recorded))}, report_sha256="",
        summary="12 passed", run_id="bake-1")
    foreign = other_ami(world, "not-bakerys", **{"bakery:managed": "false"})
    env = world.env("qa")

    def chosen() -> Goal:
        return AwsFleet(world.project, world.catalog, env, Progress(world.lines)).goal_for(version, "sha256:c", {})

    goal = chosen()
    assert goal.image_id == recorded != foreign
    assert AwsFleet(world.project, world.catalog, env, Progress(world.lines)).verified_ami(goal)[0]
    world.ec2.deregister_image(ImageId=recorded)  # then the catalog's, which the record does not vouch for
    goal = chosen()
    assert goal.image_id == world.amis[1]
    passed, why = AwsFleet(world.project, world.catalog, env, Progress(world.lines)).verified_ami(goal)
    assert not passed and why == (f"AMI {world.amis[1]} in us-east-1 is not the verified webapp:{version}: the record "
                                  f"names no AMI {world.amis[1]} in us-east-1, and no copy record "
                                  f"/bakery/verifications/webapp/copies/{version}/us-east-1/{world.amis[1]} does")


def test_a_copy_distribute_recorded_passes_the_gate_in_its_region_and_an_unrecorded_one_does_not(world):
    version, eu_ec2 = world.versions[1], clients.client("ec2", "eu-west-1")
    tag_ami(world, 1, "passed")
    copy = other_ami(world, f"webapp-{version}", eu_ec2)
    record = verification_record.read_record(world.ssm, "webapp", version)
    verification_record.write_copy_record(world.ssm, source=record, source_ami=world.amis[1], source_region="us-east-1",
                                          copy=amis.describe_ami(eu_ec2, copy), region="eu-west-1", run_id="dist-1")
    settings = deploy_yml("eu", "web-eu", "web-eu-lt")
    settings["bakery_deploy"]["aws"]["region"] = "eu-west-1"
    world.write_env("eu", settings, {"LOG_LEVEL": "info"})
    fleet = AwsFleet(world.project, world.catalog, world.env("eu"), Progress(world.lines))

    goal = fleet.goal_for(version, "sha256:c", {})
    assert goal.image_id == copy
    assert fleet.verified_ami(goal)[0]
    unrecorded = dataclasses.replace(goal, image_id=other_ami(world, "unrecorded", eu_ec2))
    passed, why = fleet.verified_ami(unrecorded)
    assert not passed and why.endswith(f"no copy record /bakery/verifications/webapp/copies/{version}/eu-west-1/"
                                       f"{unrecorded.image_id} does")


# ---- environments that require `aws`: verify --target aws's write-once records of the very AMI chosen


def read_back(world, ami: str, *, passed: bool = True, summary: str = "secrets clean; vm 14 passed",
              run_id: str = "verify-aws-1", ec2=None, region: str = "us-east-1") -> str:
    """What `bake.py verify webapp:V --target aws` writes for `ami` (in the home region's SSM)."""
    described = amis.describe_ami(ec2 or world.ec2, ami)
    version = {t["Key"]: t["Value"] for t in described["Tags"]}["bakery:version"]
    return readback_record.write(world.ssm, image="webapp", version=version, region=region, ami=ami,
                                 snapshots=amis.snapshot_ids(described), disk_sha256="cd" * 32, passed=passed,
                                 report_sha256="ab" * 32, summary=summary, run_id=run_id, env="qa")


def aws_gated(world, kinds: list[str], env: str = "qa", region: str = "") -> None:
    settings = deploy_yml(env, f"web-{env}", f"web-{env}-lt")
    settings["bakery_deploy"]["require_verified"] = kinds
    if region:
        settings["bakery_deploy"]["aws"]["region"] = region
    world.write_env(env, settings, {"LOG_LEVEL": "info"})


def test_deploy_to_an_environment_requiring_aws_needs_a_passing_newest_record_of_the_ami_chosen(world, refresh,
                                                                                              monkeypatch):
    version, ami = world.versions[1], world.amis[1]
    tag_ami(world, 1, "passed")
    world.catalog.record_verification("webapp", version, env=None, started="x", seconds=1.0, passed=True, run_id="r",
                                      summary="12 passed", reports={})
    aws_gated(world, ["container", "aws"])

    none = (rf"^webapp:{version} \(AMI {ami} in us-east-1\) has no aws verification; environment 'qa' requires "
            rf"one: run ./bake.py verify webapp:{version} --target aws \(or deploy with --force, which is recorded\)$")
    with pytest.raises(OperationError, match=none) as err:
        operations.deploy(world.session, world.env("qa"), "webapp", version)
    assert err.value.exit_code == 1
    monkeypatch.setattr(readback_record, "utc_now", lambda: "2026-12-01T10:00:00Z")
    read_back(world, ami)
    monkeypatch.setattr(readback_record, "utc_now", lambda: "2026-12-01T11:00:00Z")
    read_back(world, ami, passed=False, summary="secrets: 1 finding (root/.ssh/id_rsa)", run_id="verify-aws-2")
    failed = (rf"webapp:{version} \(AMI {ami} in us-east-1\) failed its last aws verification \(secrets: 1 "
              r"finding \(root/.ssh/id_rsa\)\); environment 'qa' requires a pass: fix the image and run "
              rf"./bake.py verify webapp:{version} --target aws again")
    with pytest.raises(OperationError, match=failed):
        operations.deploy(world.session, world.env("qa"), "webapp", version)
    assert world.catalog.releases("qa") == [] and len(world.template_versions("qa")) == 1

    monkeypatch.setattr(readback_record, "utc_now", lambda: "2026-12-01T12:00:00Z")
    read_back(world, ami, run_id="verify-aws-3")
    fleet = AwsFleet(world.project, world.catalog, world.env("qa"), Progress(world.lines))
    goal = fleet.goal_for(version, "sha256:c", {})
    assert fleet.aws_verification(goal) == gate.AwsVerdict(f"AMI {ami} in us-east-1", True,
                                                           "secrets clean; vm 14 passed")
    assert gate.require_verified(world.catalog, "webapp", version, required=("container", "aws"), force=False,
                                 env="qa", deployed=functools.partial(fleet.verified_ami, goal),
                                 aws=functools.partial(fleet.aws_verification, goal)) is False


def test_the_aws_gate_is_forced_open_with_force_and_says_so_but_never_by_promote(world, refresh):
    version = world.versions[1]
    tag_ami(world, 1, "passed")
    aws_gated(world, ["aws"])
    verdict = gate.AwsVerdict("AMI ami-1 in us-east-1", None)
    args = dict(required=("aws",), env="qa", aws=lambda: verdict)
    assert gate.require_verified(world.catalog, "webapp", version, force=True, **args) is True
    # qa runs version 2's AMI, which has no aws verification: prod (requiring aws) cannot take it
    world.ec2.create_launch_template_version(LaunchTemplateId=world.templates["qa"], SourceVersion="1",
                                             LaunchTemplateData={"ImageId": world.amis[1]})
    world.asg.update_auto_scaling_group(AutoScalingGroupName="web-qa",
                                        LaunchTemplate={"LaunchTemplateId": world.templates["qa"], "Version": "2"})
    runs(world, "qa", "2")
    world.catalog.record_verification("webapp", version, env=None, started="x", seconds=1.0, passed=True, run_id="r",
                                      summary="12 passed", reports={})
    settings = deploy_yml("prod", "web-prod", "web-prod-lt", promote_from="qa")
    settings["bakery_deploy"]["require_verified"] = ["container", "aws"]
    world.write_env("prod", settings, {"LOG_LEVEL": "warn"})
    described(refresh, "web-qa")  # promote checks the version is healthy in qa

    with pytest.raises(OperationError, match=rf"\(AMI {world.amis[1]} in us-east-1\) has no aws verification; "
                                             "environment 'prod' requires one"):
        operations.promote(world.session, world.env("prod"), "webapp", None)
    assert world.catalog.releases("prod") == []


def test_an_environment_requiring_only_aws_does_not_need_the_bakes_own_test_to_pass(world):
    # Packer's in-build test failed (its record says so) but the AMI passed verify --target aws: [aws] takes it,
    # [container, aws] does not.
    version, ami = world.versions[1], world.amis[1]
    tag_ami(world, 1, "failed")
    read_back(world, ami)
    aws_gated(world, ["aws"])
    fleet = AwsFleet(world.project, world.catalog, world.env("qa"), Progress(world.lines))
    goal = fleet.goal_for(version, "sha256:c", {})
    checks = dict(deployed=functools.partial(fleet.verified_ami, goal),
                  aws=functools.partial(fleet.aws_verification, goal))
    assert gate.require_verified(world.catalog, "webapp", version, required=("aws",), force=False, env="qa",
                                 **checks) is False
    with pytest.raises(OperationError, match="has no verification; environment 'qa' requires one"):
        gate.require_verified(world.catalog, "webapp", version, required=("container", "aws"), force=False, env="qa",
                              **checks)


def test_a_recorded_copy_passes_the_aws_gate_through_its_sources_record_and_a_merely_tagged_one_does_not(world):
    version, eu_ec2 = world.versions[1], clients.client("ec2", "eu-west-1")
    tag_ami(world, 1, "passed")
    copy = other_ami(world, f"webapp-{version}", eu_ec2)
    verification_record.write_copy_record(world.ssm, source=verification_record.read_record(world.ssm, "webapp",
                                                                                             version),
                                          source_ami=world.amis[1], source_region="us-east-1",
                                          copy=amis.describe_ami(eu_ec2, copy), region="eu-west-1", run_id="dist-1")
    aws_gated(world, ["aws"], env="eu", region="eu-west-1")
    fleet = AwsFleet(world.project, world.catalog, world.env("eu"), Progress(world.lines))
    goal = fleet.goal_for(version, "sha256:c", {})
    assert goal.image_id == copy
    assert fleet.aws_verification(goal).passed is None  # the source has not passed verify --target aws yet
    read_back(world, world.amis[1])
    assert fleet.aws_verification(goal) == gate.AwsVerdict(
        f"AMI {copy} in eu-west-1", True, f"secrets clean; vm 14 passed (on the source {world.amis[1]} in us-east-1)")
    tagged = dataclasses.replace(goal, image_id=other_ami(world, "tagged", eu_ec2))
    assert fleet.aws_verification(tagged).passed is None
    read_back(world, tagged.image_id, ec2=eu_ec2, region="eu-west-1")  # verified where it is: its own record counts
    assert fleet.aws_verification(tagged).passed is True


def test_a_forced_deploy_passes_a_catalog_verification_whose_ami_check_fails_and_says_it_was_forced(world):
    world.catalog.record_verification("webapp", world.versions[1], env=None, started="x", seconds=1.0, passed=True,
                                      run_id="r", summary="12 passed", reports={})
    args = dict(required=True, env="qa", deployed=lambda: (False, "AMI ami-1 is not the verified one"))
    assert gate.require_verified(world.catalog, "webapp", world.versions[1], force=True, **args) is True
    with pytest.raises(OperationError, match="AMI ami-1 is not the verified one; environment 'qa' requires"):
        gate.require_verified(world.catalog, "webapp", world.versions[1], force=False, **args)


def test_a_log_group_in_deploy_yml_and_runtime_yml_must_agree(world):
    settings = deploy_yml("qa", "web-qa", "web-qa-lt")
    settings["bakery_deploy"]["aws"]["log_group"] = "/bakery/qa"
    world.write_env("qa", settings, {"CLOUDWATCH_LOG_GROUP": "/org/qa-web"})

    with pytest.raises(ConfigError) as err:
        operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1])

    text = str(err.value)
    assert ("bakery_runtime.CLOUDWATCH_LOG_GROUP '/org/qa-web' disagrees with bakery_deploy.aws.log_group "
            "'/bakery/qa'") in text
    assert "runtime.yml" in text and "deploy.yml" in text and world.catalog.releases("qa") == []


# ---- the group's launch template version, the copied launch data, held-back instances


@pytest.mark.parametrize("spec, number", [("$Latest", "2"), ("$Default", "1")])
def test_a_group_on_latest_or_default_is_pinned_to_its_number_before_the_new_version_exists(world, refresh,
                                                                                          group_updates, spec, number):
    # AWS refuses AutoRollback on a group that uses $Latest or $Default, and with $Latest the new version would launch
    # on every scale-out before the refresh starts: bakery pins the number the group resolves to first.
    world.ec2.create_launch_template_version(LaunchTemplateId=world.templates["qa"], SourceVersion="1",
                                             LaunchTemplateData={"ImageId": world.amis[0]})
    world.asg.update_auto_scaling_group(AutoScalingGroupName="web-qa",
                                        LaunchTemplate={"LaunchTemplateId": world.templates["qa"], "Version": spec})
    world.session.progress = PinWatch(world.lines, world, "qa")
    described(refresh, "web-qa")
    started(refresh, world, "web-qa", "qa", "3", "rid-1")  # AutoRollback on, the new version's number
    described(refresh, "web-qa", ("rid-1", "InProgress", {"PercentageComplete": 50}), ids=["rid-1"])
    described(refresh, "web-qa", ("rid-1", "Successful", {}), ids=["rid-1"])
    described(refresh, "web-qa")

    result = operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1])

    assert result.ok
    # pinned to the resolved number before version 3 was made; the refresh ran on that pin; then pinned to 3
    assert [call["LaunchTemplate"]["Version"] for call in group_updates] == [number, "3"]
    assert world.session.progress.pins[:2] == [number, number] and world.pinned("qa") == "3"
    assert (f"Auto Scaling group web-qa launched from launch template web-qa-lt {spec}; pinned it to version "
            f"{number}") in world.lines.getvalue()


def test_the_root_volume_never_shrinks_below_the_new_amis_snapshot(world, refresh):
    # The template's root volume is smaller than the new AMI's snapshot (AWS: "volume smaller than snapshot"); an extra
    # data volume keeps the template's size, and a template size above the snapshot's stays.
    ami = world.ec2.describe_images(ImageIds=[world.amis[1]])["Images"][0]
    root = ami["BlockDeviceMappings"][0]
    size = root["Ebs"]["VolumeSize"]
    world.ec2.create_launch_template_version(
        LaunchTemplateId=world.templates["qa"], SourceVersion="1",
        LaunchTemplateData={"ImageId": world.amis[0], "BlockDeviceMappings": [
            {"DeviceName": root["DeviceName"], "Ebs": {"VolumeSize": size - 7, "VolumeType": "gp3"}},
            {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 100, "VolumeType": "gp3"}}]})
    world.asg.update_auto_scaling_group(AutoScalingGroupName="web-qa",
                                        LaunchTemplate={"LaunchTemplateId": world.templates["qa"], "Version": "2"})
    described(refresh, "web-qa")
    started(refresh, world, "web-qa", "qa", "3", "rid-1")
    described(refresh, "web-qa", ("rid-1", "Successful", {}), ids=["rid-1"])
    described(refresh, "web-qa")

    assert operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1]).ok

    sizes = {m["DeviceName"]: m["Ebs"]["VolumeSize"] for m in world.template_data("qa", "3")["BlockDeviceMappings"]}
    assert sizes == {root["DeviceName"]: size, "/dev/sdf": 100}
    assert (f"{root['DeviceName']}: the template's {size - 7} GiB is smaller than the snapshot of "
            f"{world.amis[1]} ({size} GiB); the new version uses {size} GiB") in world.lines.getvalue()


def test_a_template_volume_larger_than_the_snapshot_keeps_its_size():
    image = {"ImageId": "ami-1", "BlockDeviceMappings": [{"DeviceName": "/dev/xvda",
                                                          "Ebs": {"SnapshotId": "snap-1", "VolumeSize": 8}}]}
    source = [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 40}}]
    mappings = launch_templates.encrypted_mappings(image, source, "")
    assert [m["Ebs"]["VolumeSize"] for m in mappings] == [40]
    assert launch_templates.grown_volumes(image, source) == {}


@pytest.mark.parametrize(("volume_type", "kept"), [("gp2", set()), ("io1", {"Iops"}), ("st1", set()),
                                                   ("gp3", {"Iops", "Throughput"})])
def test_the_amis_gp3_iops_and_throughput_never_reach_a_template_volume_type_that_refuses_them(volume_type, kept):
    """RunInstances refuses Iops on gp2/st1 and Throughput on anything but gp3: a template's own volume type wins,
    and what the AMI's gp3 mapping carried is dropped; the result must also pass botocore's request validation."""
    image = {"ImageId": "ami-1", "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
        "SnapshotId": "snap-1", "VolumeSize": 8, "VolumeType": "gp3", "Iops": 3000, "Throughput": 125}}]}
    source = [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeType": volume_type}}]
    ebs = launch_templates.encrypted_mappings(image, source, "")[0]["Ebs"]
    assert ebs["VolumeType"] == volume_type and {"Iops", "Throughput"} & set(ebs) == kept


def response_example(shape, depth=0):
    """A value of a botocore response shape with every member filled in (one item per list), as AWS may answer."""
    if shape.type_name == "structure":
        return {name: response_example(member, depth + 1) for name, member in shape.members.items() if depth < 8}
    if shape.type_name == "list":
        return [response_example(shape.member, depth + 1)]
    if shape.type_name == "map":
        return {"key": response_example(shape.value, depth + 1)}
    examples = {"integer": 8, "long": 8, "boolean": True, "double": 1.0, "float": 1.0, "blob": b"x",
                "timestamp": "2026-11-29T00:00:00Z"}
    if shape.type_name == "string":
        return shape.enum[0] if shape.enum else "x"
    return examples[shape.type_name]


def test_launch_data_from_any_describe_response_is_a_valid_create_request():
    """Walk botocore's shapes: a DescribeLaunchTemplateVersions and a DescribeImages answer with every member AWS may
    send (MetadataOptions.State, Ebs.OutpostArn, ...) make a CreateLaunchTemplateVersion botocore accepts."""
    ec2 = botocore.session.get_session().create_client("ec2", "us-east-1", aws_access_key_id="x",
                                                        aws_secret_access_key="x")
    model = ec2.meta.service_model
    source_shape = (model.operation_model("DescribeLaunchTemplateVersions").output_shape
                    .members["LaunchTemplateVersions"].member.members["LaunchTemplateData"])
    source = response_example(source_shape)
    assert source["MetadataOptions"]["State"] and source["BlockDeviceMappings"][0]["Ebs"]
    image = response_example(model.operation_model("DescribeImages").output_shape.members["Images"].member)
    goal = Goal(image="webapp", version="20261129.001", image_ref="ami-1", config_digest="sha256:x", runtime={},
                git_commit=COMMIT, git_message="m", image_id="ami-1")
    data = launch_templates.launch_data(image=image, source=source, goal=goal, env_name="qa", env_text="A=\"b\"\n",
                                        instance_type="t3.small", release_id=1, kms_key_id="alias/x")
    with Stubber(ec2) as stub:
        stub.add_response("create_launch_template_version", {"LaunchTemplateVersion": {"VersionNumber": 2}})
        assert launch_templates.create_version(ec2, "lt-1", 1, data, "release") == 2  # ParamValidationError if not
        stub.assert_no_pending_responses()
    request_shape = model.operation_model("CreateLaunchTemplateVersion").input_shape.members["LaunchTemplateData"]
    report = botocore.validate.ParamValidator().validate(shapes.request_only(data, request_shape), request_shape)
    assert not report.has_errors(), report.generate_report()
    assert shapes.request_only({"MetadataOptions": {"HttpTokens": "required", "State": "applied"}}, request_shape) \
        == {"MetadataOptions": {"HttpTokens": "required"}}


def test_protected_and_standby_instances_are_named_before_the_refresh_and_left_alone_by_default(world, refresh):
    # An ops engineer protected one instance from scale-in and put another on standby on purpose: by default the
    # refresh leaves both (Ignore), instead of AWS's default Wait (an hour, then Failed); bakery names them first.
    instances = sorted(i["InstanceId"] for i in world.asg.describe_auto_scaling_groups(
        AutoScalingGroupNames=["web-qa"])["AutoScalingGroups"][0]["Instances"])
    world.asg.set_instance_protection(AutoScalingGroupName="web-qa", InstanceIds=[instances[0]],
                                      ProtectedFromScaleIn=True)
    world.asg.enter_standby(AutoScalingGroupName="web-qa", InstanceIds=[instances[1]],
                            ShouldDecrementDesiredCapacity=False)
    described(refresh, "web-qa")
    started(refresh, world, "web-qa", "qa", "2", "rid-1")  # QA_PREFERENCES: StandbyInstances/ScaleInProtected Ignore
    described(refresh, "web-qa", ("rid-1", "Successful", {}), ids=["rid-1"])
    described(refresh, "web-qa")

    assert operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1]).ok

    progress = world.lines.getvalue()
    assert (f"instance {instances[0]} is protected from scale in: the refresh leaves it on its current launch "
            "template version (scale_in_protected_instances: Ignore; Refresh replaces it)") in progress
    assert (f"instance {instances[1]} is in Standby: the refresh leaves it on its current launch template version "
            "(standby_instances: Ignore; Terminate terminates it)") in progress


def test_the_flags_choose_what_happens_to_protected_and_standby_instances(world, refresh, capsys):
    instance = world.asg.describe_auto_scaling_groups(
        AutoScalingGroupNames=["web-qa"])["AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
    world.asg.set_instance_protection(AutoScalingGroupName="web-qa", InstanceIds=[instance], ProtectedFromScaleIn=True)
    described(refresh, "web-qa")
    started(refresh, world, "web-qa", "qa", "2", "rid-1",
            prefs={**QA_PREFERENCES, "ScaleInProtectedInstances": "Wait", "StandbyInstances": "Terminate"})
    described(refresh, "web-qa", ("rid-1", "Successful", {}), ids=["rid-1"])
    described(refresh, "web-qa")

    code = bake_main(["--project", str(world.root), "deploy", f"webapp:{world.versions[1]}", "--env", "qa",
                      "--scale-in-protected-instances", "wait", "--standby-instances", "Terminate"])

    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr()
    assert (f"instance {instance} is protected from scale in: AWS waits up to an hour for its protection to be "
            "removed, then fails the refresh (scale_in_protected_instances: Wait; Ignore leaves it, Refresh replaces "
            "it)") in out.out + out.err


def test_refresh_preferences_for_held_back_instances_map_one_to_one():
    prefs = RefreshPreferences(standby_instances="Terminate", scale_in_protected_instances="Refresh")
    sent = instance_refresh.preferences(prefs, [])
    assert (sent["StandbyInstances"], sent["ScaleInProtectedInstances"]) == ("Terminate", "Refresh")
    model = botocore.session.get_session().get_service_model("autoscaling")
    members = model.operation_model("StartInstanceRefresh").input_shape.members["Preferences"].members
    assert set(REFRESH_CHOICES["standby_instances"]) == set(members["StandbyInstances"].enum)
    assert set(REFRESH_CHOICES["scale_in_protected_instances"]) == set(members["ScaleInProtectedInstances"].enum)
