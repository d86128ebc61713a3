"""Data volumes on the aws target: one EBS volume per slot, handed from an instance to its replacement.

EC2 (instances, volumes, attach/detach, tags, stop) is moto server. What moto cannot do goes through botocore's
Stubber: the instance refresh calls (as in test_fleet_aws.py) and, on the fleet's lifecycle client, the Auto Scaling
lifecycle hooks (PutLifecycleHook, DescribeLifecycleHooks, CompleteLifecycleAction) and the group's view of its
instances in Pending:Wait and Terminating:Wait. The instances the stubbed group names are real moto instances, so every
EC2 call bakery makes on them is checked by moto. moto lets a volume be attached twice and across zones: the tests
that say bakery never does so can fail.
"""

from __future__ import annotations

import base64
import functools
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from botocore.stub import Stubber

from bakery.aws import clients
from bakery.aws.lifecycle_hooks import ATTACH_BY_SECONDS
from bakery.cli import main as bake_main
from bakery.errors import ConfigError
from bakery.fleets import operations
from bakery.fleets.aws import AwsFleet
from bakery.fleets.aws_volumes import holder
from tests.aws.test_fleet_aws import World, deploy_yml, described, started

pytestmark = pytest.mark.aws

ZONE = "us-east-1a"
LAUNCHING, TERMINATING = "bakery-data-volume-launching", "bakery-data-volume-terminating"
PREFERENCES = {"MinHealthyPercentage": 50, "MaxHealthyPercentage": 100, "InstanceWarmup": 30, "SkipMatching": True,
               "StandbyInstances": "Ignore", "ScaleInProtectedInstances": "Ignore", "AutoRollback": True,
               "BakeTime": 0, "AlarmSpecification": {"Alarms": ["webapp-qa-5xx"]}}


class Killed(BaseException):
    """kill -9 of bake.py: no handler of bakery's runs."""


def stateful(world: World, **volume) -> None:
    volume = {"name": "data", "path": "/var/lib/webapp", **volume}
    settings = deploy_yml("qa", "web-qa", "web-qa-lt", data_volume=volume)
    settings["bakery_deploy"]["refresh"] = {"min_healthy_percentage": 50, "max_healthy_percentage": 100,
                                            "instance_warmup": 30}
    world.write_env("qa", settings, {"LOG_LEVEL": "info"})


class Stubs:
    """The fleet's refresh and lifecycle clients, each behind a Stubber, and the EC2 calls bakery made (in order)."""

    def __init__(self, world: World):
        self.world = world
        self.refresh = Stubber(clients.client("autoscaling"))
        self.lifecycle = Stubber(clients.client("autoscaling"))
        self.ec2_calls: list[tuple[str, dict]] = []
        clients._session(None).events.register(
            "before-parameter-build.ec2", lambda params, model, **_: self.ec2_calls.append((model.name, params)))

    def fleet_factory(self, target):
        return functools.partial(AwsFleet, refresh_client=self.refresh.client, lifecycle_client=self.lifecycle.client,
                                 poll_seconds=0)

    def calls(self, *names: str) -> list[tuple[str, dict]]:
        return [(name, params) for name, params in self.ec2_calls if name in names]

    def hooks(self, present: bool) -> None:
        """DescribeLifecycleHooks: both of bakery's hooks, or none (then deploy puts both)."""
        hooks = [{"LifecycleHookName": name, "AutoScalingGroupName": "web-qa", "LifecycleTransition": transition,
                  "HeartbeatTimeout": 3600, "DefaultResult": result}
                 for name, transition, result in ((LAUNCHING, "autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON"),
                                                  (TERMINATING, "autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE"))]
        self.lifecycle.add_response("describe_lifecycle_hooks", {"LifecycleHooks": hooks if present else []},
                                    {"AutoScalingGroupName": "web-qa"})
        if not present:
            for hook in hooks:
                self.lifecycle.add_response("put_lifecycle_hook", {}, {
                    "AutoScalingGroupName": "web-qa", "LifecycleHookName": hook["LifecycleHookName"],
                    "LifecycleTransition": hook["LifecycleTransition"], "HeartbeatTimeout": 3600,
                    "DefaultResult": hook["DefaultResult"]})

    def group(self, *instances: tuple[str, str], desired: int = 2) -> None:
        """One DescribeAutoScalingGroups answer on the lifecycle client: (instance id, lifecycle state) pairs."""
        items = [{"InstanceId": iid, "AvailabilityZone": ZONE, "LifecycleState": state, "HealthStatus": "Healthy",
                  "ProtectedFromScaleIn": False} for iid, state in instances]
        self.lifecycle.add_response("describe_auto_scaling_groups", {"AutoScalingGroups": [{
            "AutoScalingGroupName": "web-qa", "MinSize": 1, "MaxSize": 4, "DesiredCapacity": desired,
            "DefaultCooldown": 300, "AvailabilityZones": [ZONE], "HealthCheckType": "EC2",
            "CreatedTime": datetime(2026, 12, 1, tzinfo=UTC), "Instances": items}]},
            {"AutoScalingGroupNames": ["web-qa"]})

    def completed(self, hook: str, instance: str, result: str = "CONTINUE") -> None:
        self.lifecycle.add_response("complete_lifecycle_action", {}, {
            "LifecycleHookName": hook, "AutoScalingGroupName": "web-qa", "LifecycleActionResult": result,
            "InstanceId": instance})

    def refresh_step(self, status: str, rid: str = "rid-1") -> None:
        described(self.refresh, "web-qa", (rid, status, {}), ids=[rid])

    def done(self) -> None:
        self.refresh.assert_no_pending_responses()
        self.lifecycle.assert_no_pending_responses()


class Ec2Answers:
    """EC2 as it answers where moto does not: an operation refused with an error code for its next calls, and an
    instance's state or launch time as DescribeInstances reports it (moto runs every instance at once, now)."""

    def __init__(self):
        self.errors: dict[str, list[str]] = {}  # operation -> error codes for its next calls, in order
        self.states: dict[str, list[str]] = {}  # instance -> states for its next DescribeInstances, in order
        self.launched: dict[str, datetime] = {}
        events = clients._session(None).events
        events.register("before-call.ec2", self._before)
        events.register("after-call.ec2.DescribeInstances", self._after)

    def refuse(self, operation: str, *codes: str) -> None:
        self.errors.setdefault(operation, []).extend(codes)

    def _before(self, model, **_):
        codes = self.errors.get(model.name)
        if not codes:
            return None
        code = codes.pop(0)
        return SimpleNamespace(status_code=400, headers={}), {
            "Error": {"Code": code, "Message": f"{code} (as EC2 answers it)"}, "ResponseMetadata": {}}

    def _after(self, parsed, **_):
        for reservation in parsed.get("Reservations", []):
            for instance in reservation["Instances"]:
                states = self.states.get(instance["InstanceId"])
                if states:
                    instance["State"]["Name"] = states.pop(0)
                if instance["InstanceId"] in self.launched:
                    instance["LaunchTime"] = self.launched[instance["InstanceId"]]


@pytest.fixture
def world(aws, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    made = World(root)
    made.project.aws.kms_key_id = "alias/qa-data"
    stateful(made)
    yield made
    made.catalog.close()


@pytest.fixture
def stubs(world, monkeypatch):
    made = Stubs(world)
    monkeypatch.setattr(operations, "get_fleet", made.fleet_factory)
    with made.refresh, made.lifecycle:
        yield made


def old_instances(world) -> list[str]:
    group = world.asg.describe_auto_scaling_groups(AutoScalingGroupNames=["web-qa"])["AutoScalingGroups"][0]
    return sorted(i["InstanceId"] for i in group["Instances"])


def new_instance(world) -> str:
    """An instance the refresh launched (a real moto instance in the group's zone)."""
    made = world.ec2.run_instances(ImageId=world.amis[1], MinCount=1, MaxCount=1, InstanceType="t3.small",
                                   Placement={"AvailabilityZone": ZONE})
    return made["Instances"][0]["InstanceId"]


def volumes(world) -> dict[str, dict]:
    """bakery's volumes of qa by slot."""
    found = world.ec2.describe_volumes(Filters=[{"Name": "tag:bakery:volume", "Values": ["data"]}])["Volumes"]
    return {tag(v, "bakery:slot"): v for v in found}


def tag(resource: dict, key: str) -> str | None:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), None)


def attached(volume: dict) -> str | None:
    return next((a["InstanceId"] for a in volume["Attachments"] if a["State"] == "attached"), None)


def instance_state(world, iid: str) -> str:
    return world.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


def slot_volume(world, slot: str, on: str) -> str:
    """A volume of qa's slot as bakery makes it, attached to `on` (the state a previous deploy left)."""
    tags = {"bakery:managed": "true", "bakery:environment": "qa", "bakery:image": "webapp", "bakery:volume": "data",
            "bakery:slot": slot}
    made = world.ec2.create_volume(AvailabilityZone=ZONE, Size=8, VolumeType="gp3", Encrypted=True,
                                   TagSpecifications=[{"ResourceType": "volume",
                                                       "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])
    world.ec2.attach_volume(VolumeId=made["VolumeId"], InstanceId=on, Device="/dev/sdf")
    return made["VolumeId"]


def start_refresh(stubs: Stubs) -> None:
    described(stubs.refresh, "web-qa")  # nothing running on the group
    started(stubs.refresh, stubs.world, "web-qa", "qa", "2", "rid-1", prefs=PREFERENCES)


def test_the_first_deploy_puts_the_hooks_on_the_group_and_creates_one_volume_per_slot(world, stubs):
    old, new = old_instances(world), [new_instance(world), new_instance(world)]
    stubs.hooks(present=False)
    stubs.group((old[0], "InService"), (old[1], "InService"))  # before the refresh: nothing to finish
    start_refresh(stubs)
    stubs.group((old[0], "Terminating:Wait"), (old[1], "InService"))
    stubs.completed(TERMINATING, old[0])  # it holds no volume: nothing to hand over
    stubs.refresh_step("InProgress")
    stubs.group((new[0], "Pending:Wait"), (old[1], "InService"))
    stubs.completed(LAUNCHING, new[0])
    stubs.refresh_step("InProgress")
    stubs.group((new[0], "InService"), (old[1], "Terminating:Wait"))
    stubs.completed(TERMINATING, old[1])
    stubs.refresh_step("InProgress")
    stubs.group((new[0], "InService"), (new[1], "Pending:Wait"))
    stubs.completed(LAUNCHING, new[1])
    stubs.refresh_step("InProgress")
    stubs.group((new[0], "InService"), (new[1], "InService"))
    stubs.refresh_step("Successful")
    stubs.group((new[0], "InService"), (new[1], "InService"))  # the status at the end: nothing waits
    described(stubs.refresh, "web-qa", ("rid-1", "Successful", {}))  # the status shown at the end

    result = operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1])

    stubs.done()
    assert result.ok
    made = volumes(world)
    assert sorted(made) == ["0", "1"]
    assert (attached(made["0"]), attached(made["1"])) == (new[0], new[1])
    for volume in made.values():
        assert (volume["Size"], volume["VolumeType"], volume["AvailabilityZone"]) == (8, "gp3", ZONE)
        assert volume["Encrypted"] and volume["KmsKeyId"] == "alias/qa-data"
        assert volume["Attachments"][0]["Device"] == "/dev/sdf"
        assert {tag(volume, k) for k in ("bakery:environment", "bakery:image", "bakery:volume", "bakery:managed")} \
            == {"qa", "webapp", "data", "true"}
        assert tag(volume, "bakery:handover") is None  # every hand-over finished
    user_data = base64.b64decode(world.template_data("qa", "2")["UserData"]).decode()
    lines = user_data.splitlines()  # the bakery-owned keys come after the user's
    assert 'BAKERY_DATA_VOLUME="bakery-data:/var/lib/webapp"' in lines
    assert lines.index('BAKERY_DATA_VOLUME="bakery-data:/var/lib/webapp"') > lines.index('LOG_LEVEL="info"')
    assert stubs.calls("StopInstances", "DetachVolume") == []  # the old instances held no volume


def test_a_refresh_moves_each_slots_volume_from_the_old_instance_to_its_replacement(world, stubs):
    old, new = old_instances(world), [new_instance(world), new_instance(world)]
    vol = [slot_volume(world, "0", old[0]), slot_volume(world, "1", old[1])]
    stubs.hooks(present=True)
    stubs.group((old[0], "InService"), (old[1], "InService"))
    start_refresh(stubs)
    stubs.group((old[0], "Terminating:Wait"), (old[1], "InService"))
    stubs.completed(TERMINATING, old[0])
    stubs.refresh_step("InProgress")
    stubs.group((new[0], "Pending:Wait"), (old[1], "InService"))
    stubs.completed(LAUNCHING, new[0])
    stubs.refresh_step("InProgress")
    stubs.group((new[0], "InService"), (old[1], "Terminating:Wait"), (new[1], "Pending:Wait"))
    stubs.completed(TERMINATING, old[1])
    stubs.completed(LAUNCHING, new[1])
    stubs.refresh_step("Successful")
    stubs.group((new[0], "InService"), (new[1], "InService"))  # the status at the end: nothing waits
    described(stubs.refresh, "web-qa", ("rid-1", "Successful", {}))

    result = operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1])

    stubs.done()
    assert result.ok
    now = volumes(world)
    assert [now[s]["VolumeId"] for s in ("0", "1")] == vol  # no volume created, none lost
    assert (attached(now["0"]), attached(now["1"])) == (new[0], new[1])
    assert {instance_state(world, i) for i in old} == {"stopped"}  # the OS stopped the app and unmounted
    order = [(name, params.get("InstanceIds", [params.get("InstanceId")])[0])
             for name, params in stubs.calls("StopInstances", "DetachVolume", "AttachVolume")]
    assert order == [("StopInstances", old[0]), ("DetachVolume", old[0]), ("AttachVolume", new[0]),
                     ("StopInstances", old[1]), ("DetachVolume", old[1]), ("AttachVolume", new[1])]
    assert not stubs.calls("CreateVolume", "DeleteVolume")
    progress = world.lines.getvalue()
    assert f"slot 0: {vol[0]} detached from {old[0]}" in progress
    assert f"slot 0: {vol[0]} attached to {new[0]}" in progress


@pytest.mark.parametrize("kill_at, left", [
    ("detached from", "detached, the old instance not yet let go"),
    ("attached to", "attached, the new instance not yet let go"),
])
def test_a_kill_mid_hand_over_is_finished_by_the_next_command(world, stubs, kill_at, left):
    old, new = old_instances(world), new_instance(world)
    vol = slot_volume(world, "0", old[0])
    slot_volume(world, "1", old[1])
    stubs.hooks(present=True)
    stubs.group((old[0], "InService"), (old[1], "InService"))
    start_refresh(stubs)
    stubs.group((old[0], "Terminating:Wait"), (new, "Pending:Wait"), (old[1], "InService"))
    if kill_at == "attached to":
        stubs.completed(TERMINATING, old[0])
    from bakery.progress import Progress

    class Kill(Progress):
        def note(self, message: str) -> None:
            super().note(message)
            if kill_at in message:
                raise Killed

    world.session.progress = Kill(world.lines)
    with pytest.raises(Killed):
        operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1])
    assert (world.project.state_dir / "envs" / "qa" / "refresh.json").exists()
    stubs.lifecycle.assert_no_pending_responses()
    # the next command (status) finds the volume by its tags and finishes the hand-over from the real state
    world.session.progress = Progress(world.lines)
    if kill_at == "detached from":  # the old instance still waits to be let go
        stubs.group((old[0], "Terminating:Wait"), (new, "Pending:Wait"), (old[1], "InService"))
        stubs.completed(TERMINATING, old[0])
    else:  # it was let go before the kill: AWS terminated it
        stubs.group((new, "Pending:Wait"), (old[1], "InService"))
    stubs.completed(LAUNCHING, new)
    stubs.refresh_step("Successful")
    stubs.group((new, "InService"), (old[1], "InService"))  # status then settles what waits: nothing
    described(stubs.refresh, "web-qa")  # status: no refresh running any more

    data = operations.status(world.session, world.env("qa"))

    stubs.done()
    assert [item["result"] for item in data["resumed"]] == ["succeeded"], left
    assert attached(volumes(world)["0"]) == new and tag(volumes(world)["0"], "bakery:handover") is None
    assert [p["InstanceId"] for _, p in stubs.calls("AttachVolume")] == [new]  # attached once, never twice
    assert len(stubs.calls("DetachVolume")) == 1 and not stubs.calls("CreateVolume")
    assert vol in json.dumps(data["volumes"])


def test_a_waiting_instance_never_gets_a_volume_another_instance_holds(world, stubs):
    old, new = old_instances(world), new_instance(world)
    slot_volume(world, "0", old[0])
    slot_volume(world, "1", old[1])
    stubs.group((old[0], "InService"), (old[1], "InService"), (new, "Pending:Wait"), desired=2)
    fleet = AwsFleet(world.project, world.catalog, world.env("qa"), world.session.progress,
                     refresh_client=stubs.refresh.client, lifecycle_client=stubs.lifecycle.client, poll_seconds=0)

    fleet.volumes.settle(lambda: None)

    assert not stubs.calls("AttachVolume", "CreateVolume", "CompleteLifecycleAction")
    assert f"instance {new} in {ZONE} waits for a data volume: none is available" in world.lines.getvalue()
    stubs.done()


def test_status_lists_each_volume_and_flags_one_nobody_waits_for(world, stubs, capsys):
    old = old_instances(world)
    slot_volume(world, "0", old[0])
    orphan = slot_volume(world, "1", old[1])
    world.ec2.detach_volume(VolumeId=orphan, InstanceId=old[1])
    stubs.group((old[0], "InService"), (old[1], "InService"))  # nothing waits: status settles nothing
    described(stubs.refresh, "web-qa")

    code = bake_main(["--project", str(world.root), "status", "--env", "qa", "--json"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    rows = {row["slot"]: row for row in data["volumes"]}
    assert rows["0"]["instance"] == old[0] and rows["0"]["state"] == "in-use"
    assert rows["1"] == {**rows["1"], "id": orphan, "state": "available", "instance": None}
    assert rows["1"]["unattached"] and not rows["0"]["unattached"]
    assert f"data volume {orphan} (slot 1) is attached to no instance and no instance waits for it" in captured.err
    instance = next(i for i in data["instances"] if i["name"] == old[0])
    assert "data volume" in instance["check"] and "slot 0" in instance["check"]

    stubs.group((old[0], "InService"), (old[1], "InService"))
    described(stubs.refresh, "web-qa")
    assert bake_main(["--project", str(world.root), "status", "--env", "qa"]) == 0
    table = capsys.readouterr().out
    assert "data volumes:" in table and f"{orphan}" in table and "(UNATTACHED)" in table
    assert "settled" not in captured.err


def test_the_groups_subnets_must_be_in_one_zone(world, stubs, capsys):
    world.asg.update_auto_scaling_group(AutoScalingGroupName="web-qa", AvailabilityZones=[ZONE, "us-east-1b"])

    code = bake_main(["--project", str(world.root), "deploy", f"webapp:{world.versions[1]}", "--env", "qa"])

    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "Auto Scaling group web-qa spans 2 availability zones (us-east-1a, us-east-1b)" in err
    assert world.catalog.releases("qa") == [] and len(world.template_versions("qa")) == 1


def test_a_deploy_flag_that_breaks_the_hand_over_rules_is_refused_before_anything_changes(world, stubs, capsys):
    code = bake_main(["--project", str(world.root), "deploy", f"webapp:{world.versions[1]}", "--env", "qa",
                      "--max-healthy-percentage", "150"])

    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines()[-1].startswith("bake.py: error: "), err
    assert "bakery_deploy.data_volume needs --max-healthy-percentage 100 on aws" in err and "got 150" in err
    assert len(world.template_versions("qa")) == 1  # refused before the launch template or the group changed
    assert world.catalog.releases("qa") == []  # and before a release was recorded


def test_a_bad_data_volume_on_aws_fails_in_one_line(world, capsys):
    stateful(world, label="far-too-long-a-label")

    code = bake_main(["--project", str(world.root), "status", "--env", "qa"])

    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "bakery_deploy.data_volume.label 'far-too-long-a-label' must be 1 to 16" in err
    with pytest.raises(ConfigError):
        world.env("qa")


def fleet_of(world, stubs) -> AwsFleet:
    return AwsFleet(world.project, world.catalog, world.env("qa"), world.session.progress,
                    refresh_client=stubs.refresh.client, lifecycle_client=stubs.lifecycle.client, poll_seconds=0)


def free_volume(world, slot: str, old: str) -> str:
    """A slot's volume its old instance let go: available, in the group's zone."""
    vol = slot_volume(world, slot, old)
    world.ec2.detach_volume(VolumeId=vol, InstanceId=old)
    return vol


def test_an_instance_ec2_still_starts_or_an_attach_ec2_refuses_is_looked_at_again(world, stubs):
    old, new = old_instances(world), new_instance(world)
    vol = free_volume(world, "0", old[0])
    answers = Ec2Answers()
    answers.states[new] = ["pending"]  # Auto Scaling puts it in Pending:Wait before EC2 runs it
    answers.refuse("AttachVolume", "IncorrectState")  # EC2 still settling it: "Instance is not 'running'"
    for _ in range(3):  # still pending; running but refused; attached
        stubs.group((new, "Pending:Wait"), (old[1], "InService"))
    stubs.completed(LAUNCHING, new)

    fleet_of(world, stubs).volumes.settle(lambda: None)

    stubs.done()
    assert [p["InstanceId"] for _, p in stubs.calls("AttachVolume")] == [new, new]  # the refused one, then the real
    assert attached(volumes(world)["0"]) == new and volumes(world)["0"]["VolumeId"] == vol


def test_a_stop_or_detach_ec2_refuses_in_transit_is_looked_at_again(world, stubs):
    old = old_instances(world)
    vol = slot_volume(world, "0", old[0])
    answers = Ec2Answers()
    answers.refuse("StopInstances", "IncorrectInstanceState")
    answers.refuse("DetachVolume", "IncorrectState")  # its attachment is already detaching
    for _ in range(3):  # stop refused; stopped, detach refused; detached
        stubs.group((old[0], "Terminating:Wait"), (old[1], "InService"))
    stubs.completed(TERMINATING, old[0])

    fleet_of(world, stubs).volumes.settle(lambda: None)

    stubs.done()
    assert len(stubs.calls("StopInstances")) == 2 and len(stubs.calls("DetachVolume")) == 2
    assert volumes(world)["0"]["State"] == "available" and volumes(world)["0"]["VolumeId"] == vol


def test_a_spot_instance_that_cannot_be_stopped_is_let_go_to_terminate(world, stubs):
    old = old_instances(world)
    slot_volume(world, "0", old[0])
    Ec2Answers().refuse("StopInstances", "UnsupportedOperation")  # a one-time Spot instance
    stubs.group((old[0], "Terminating:Wait"), (old[1], "InService"))
    stubs.completed(TERMINATING, old[0])

    fleet_of(world, stubs).volumes.settle(lambda: None)

    stubs.done()
    assert not stubs.calls("DetachVolume")  # the volume comes free when the instance is terminated
    assert f"{old[0]} cannot be stopped" in world.lines.getvalue()


def test_a_busy_attachment_is_held():
    volume = {"VolumeId": "vol-1", "Attachments": [{"InstanceId": "i-1", "State": "busy"}]}

    assert holder([volume], "i-1") is volume


def test_a_launch_older_than_the_instance_waits_is_abandoned_not_attached(world, stubs):
    old, new = old_instances(world), new_instance(world)
    free_volume(world, "0", old[0])
    Ec2Answers().launched[new] = datetime.now(UTC) - timedelta(seconds=ATTACH_BY_SECONDS + 60)
    stubs.group((new, "Pending:Wait"), (old[1], "InService"))
    stubs.completed(LAUNCHING, new, result="ABANDON")  # Auto Scaling launches a fresh instance with a fresh wait

    fleet_of(world, stubs).volumes.settle(lambda: None)

    stubs.done()
    assert not stubs.calls("AttachVolume", "CreateVolume")
    assert tag(volumes(world)["0"], "bakery:handover") is None
    assert f"abandoning the launch of {new}" in world.lines.getvalue()


def test_status_settles_a_replacement_auto_scaling_launched_by_itself(world, stubs, capsys):
    old, new = old_instances(world), new_instance(world)
    vol = free_volume(world, "0", old[0])  # a health check replaced old[0] at 3 a.m.; its volume was let go
    stubs.group((new, "Pending:Wait"), (old[1], "InService"))
    stubs.completed(LAUNCHING, new)
    described(stubs.refresh, "web-qa")

    code = bake_main(["--project", str(world.root), "status", "--env", "qa", "--json"])

    captured = capsys.readouterr()
    stubs.done()
    assert code == 0, captured.err
    assert attached(volumes(world)["0"]) == new
    data = json.loads(captured.out)
    assert f"settled data-volume hand-overs: {new} launched with {vol}" in data["volume_notes"]
    assert f"settled data-volume hand-overs: {new} launched with {vol}" in captured.err
