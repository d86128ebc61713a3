"""An aws environment's data volumes: one tagged EBS volume per instance slot, handed to the slot's replacement.

The state is AWS's, never bakery's: each pass reads the volumes by their tags
(bakery:environment, bakery:volume) wherever they are attached, and the group's
instances in the lifecycle hooks' wait states (bakery.aws.lifecycle_hooks), and
takes the next step that state allows:

- Terminating:Wait, holding a volume: tag the volume `bakery:handover=detach:<instance>`,
  StopInstances (the OS stops the application, flushes and unmounts), DetachVolume
  once stopped, CompleteLifecycleAction once the volume is available.
- Pending:Wait: the available volume of its zone claimed for it (`attach:<instance>`),
  else the lowest free slot's, else a new one (encrypted gp3, created only while
  there are fewer volumes than the group's desired capacity); AttachVolume at
  /dev/sdf, CompleteLifecycleAction once attached. The image's bakery-data-volume
  unit mounts it by label before the application starts.

EC2's answers for a state still in transit (an instance Auto Scaling has put in
Pending:Wait while EC2 still starts it refuses AttachVolume with IncorrectState; a
detach of an attachment already detaching likewise) only mean: look again next
pass. A launch older than the instance's own wait for its volume is abandoned
(lifecycle_hooks.ATTACH_BY_SECONDS), so a volume never arrives after the unit gave
up. An instance that cannot be stopped (Spot) is let go to terminate: its shutdown
stops the application and unmounts the volume, which is free once it is gone.

A pass that dies anywhere (kill -9) leaves a state the next pass reads and takes
on from: a stopped instance still holding its volume is detached, an attached
volume whose instance still waits is let go, a claim whose instance stopped waiting
is dropped. A volume is attached only while it is available with no attachment,
read right before the call, so it is never on two instances; nothing here
deletes a volume.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bakery.aws import lifecycle_hooks, tags
from bakery.aws.lifecycle_hooks import (
    ATTACH_BY_SECONDS,
    INSTANCE_WAIT_SECONDS,
    LAUNCHING,
    PENDING_WAIT,
    TERMINATING,
    TERMINATING_WAIT,
)
from bakery.environments import DataVolume
from bakery.errors import ConfigError

DEVICE = "/dev/sdf"
SETTLE_TIMEOUT = 900.0  # seconds one settle waits for stops, detaches, creates and attaches in transit
LIVE_STATES = ("creating", "available", "in-use")  # not deleting, deleted or error
HELD = ("attaching", "attached", "detaching", "busy")
# EC2's refusals while an instance or an attachment is still in transit: look again next pass
IN_TRANSIT = ("IncorrectState", "IncorrectInstanceState", "VolumeInUse", "InvalidAttachment.NotFound")
UNSTOPPABLE = "UnsupportedOperation"  # StopInstances on a one-time Spot instance (or an instance-store root)


def slot_of(volume: dict[str, Any]) -> str:
    return tags.from_tag_list(volume.get("Tags")).get(tags.SLOT, "?")


def handover_of(volume: dict[str, Any]) -> str:
    return tags.from_tag_list(volume.get("Tags")).get(tags.HANDOVER, "")


def attachment(volume: dict[str, Any]) -> dict[str, Any] | None:
    return next((a for a in volume.get("Attachments", []) if a.get("State") in HELD), None)


def holder(volumes: list[dict[str, Any]], instance_id: str) -> dict[str, Any] | None:
    return next((v for v in volumes if (attachment(v) or {}).get("InstanceId") == instance_id), None)


def _slot_key(volume: dict[str, Any]) -> tuple[int, str]:
    slot = slot_of(volume)
    return (int(slot) if slot.isdigit() else 1 << 30, volume["VolumeId"])


class DataVolumes:
    """The reconciler of one environment's data volumes (deploy, refresh and resume run it; status reads it)."""

    def __init__(self, *, ec2: Any, lifecycle: Any, group_name: str, env_name: str, image: str, volume: DataVolume,
                 kms_key_id: str, note: Callable[[str], None], poll_seconds: float):
        self.ec2, self.lifecycle, self.group_name = ec2, lifecycle, group_name
        self.env_name, self.image, self.volume, self.kms_key_id = env_name, image, volume, kms_key_id
        self.note, self.poll_seconds = note, poll_seconds
        self._told: set[str] = set()  # "waits" lines said once per settle
        self.settled: list[str] = []  # the lifecycle actions the last settle completed, one phrase each

    # ---- checks before a deploy changes anything

    def check_zone(self, group: dict[str, Any], where: str) -> None:
        zones = sorted(group.get("AvailabilityZones") or [])
        if len(zones) != 1:
            raise ConfigError(f"{where}: Auto Scaling group {self.group_name} spans {len(zones)} availability zones "
                              f"({', '.join(zones)}) but bakery_deploy.data_volume needs one: an EBS volume lives in "
                              "one zone; give the group subnets of one zone")

    def ensure_hooks(self) -> None:
        for name in lifecycle_hooks.ensure(self.lifecycle, self.group_name):
            self.note(f"put lifecycle hook {name} on Auto Scaling group {self.group_name} (instances wait for their "
                      "data volume to arrive or leave)")

    # ---- reading AWS

    def find(self) -> list[dict[str, Any]]:
        """The environment's volumes by their tags, wherever they are attached, by slot."""
        filters = [{"Name": f"tag:{tags.ENVIRONMENT}", "Values": [self.env_name]},
                   {"Name": f"tag:{tags.DATA_VOLUME}", "Values": [self.volume.name]},
                   {"Name": "status", "Values": list(LIVE_STATES)}]
        found: list[dict[str, Any]] = []
        for page in self.ec2.get_paginator("describe_volumes").paginate(Filters=filters):
            found.extend(page["Volumes"])
        return sorted(found, key=_slot_key)

    def _volume(self, volume_id: str) -> dict[str, Any]:
        return self.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]

    def _instance(self, instance_id: str) -> dict[str, Any]:
        found = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return found[0]["Instances"][0] if found else {"InstanceId": instance_id, "State": {"Name": "terminated"}}

    def _instance_state(self, instance_id: str) -> str:
        return self._instance(instance_id)["State"]["Name"]

    def _refused(self, call: Callable[..., Any], codes: tuple[str, ...], **params: Any) -> str | None:
        """Make one EC2 call; the error code when EC2 refused it with one of `codes`, else None (others raise)."""
        try:
            call(**params)
        except self.ec2.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in codes:
                return code
            raise
        return None

    def _complete(self, hook: str, instance_id: str, result: str, what: str) -> None:
        if lifecycle_hooks.complete(self.lifecycle, self.group_name, hook, instance_id, result):
            self.settled.append(what)

    def _lifecycle_group(self) -> dict[str, Any]:
        return self.lifecycle.describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.group_name])["AutoScalingGroups"][0]

    def _tag(self, volume: dict[str, Any], value: str) -> None:
        if handover_of(volume) == value:
            return
        if value:
            self.ec2.create_tags(Resources=[volume["VolumeId"]], Tags=[{"Key": tags.HANDOVER, "Value": value}])
        else:
            self.ec2.delete_tags(Resources=[volume["VolumeId"]], Tags=[{"Key": tags.HANDOVER}])

    # ---- one pass, and passes until nothing is in transit

    def settle(self, check: Callable[[], None], timeout: float = SETTLE_TIMEOUT) -> None:
        """Passes until no hand-over is in transit (or the timeout: the next settle takes on from there)."""
        self._told.clear()
        self.settled = []
        deadline = time.monotonic() + timeout
        while True:
            check()
            if not self.step():
                return
            if time.monotonic() > deadline:
                self.note(f"data volumes still moving after {timeout:.0f} s; looking again later")
                return
            time.sleep(self.poll_seconds)

    def step(self) -> bool:
        """One pass over the group's waiting instances; True while something is in transit (look again soon)."""
        group = self._lifecycle_group()
        instances = group["Instances"]
        waiting = {i["InstanceId"] for i in instances if i["LifecycleState"] in (PENDING_WAIT, TERMINATING_WAIT)}
        volumes = self.find()
        for volume in volumes:  # a claim whose instance stopped waiting (launch abandoned, let go) is stale
            claimed = handover_of(volume).partition(":")[2]
            if claimed and claimed not in waiting:
                self._tag(volume, "")
        moving = False
        for instance in (i for i in instances if i["LifecycleState"] == TERMINATING_WAIT):
            moving |= self._release(instance["InstanceId"], holder(volumes, instance["InstanceId"]))
        pending = [i for i in instances if i["LifecycleState"] == PENDING_WAIT]
        if pending:
            volumes, taken = self.find(), set[str]()
            others = {i["InstanceId"] for i in pending}
            for instance in pending:
                moving |= self._receive(instance, volumes, others, taken, group["DesiredCapacity"])
        return moving

    def _release(self, instance_id: str, volume: dict[str, Any] | None) -> bool:
        """Terminating:Wait: stop, detach, let go. True while the stop or the detach is in transit."""
        if volume is None:
            self._complete(TERMINATING, instance_id, "CONTINUE", f"{instance_id} terminated (no data volume)")
            return False
        volume_id, slot = volume["VolumeId"], slot_of(volume)
        self._tag(volume, f"detach:{instance_id}")
        state = self._instance_state(instance_id)
        if state in ("pending", "running"):
            refused = self._refused(self.ec2.stop_instances, IN_TRANSIT + (UNSTOPPABLE,), InstanceIds=[instance_id])
            if refused == UNSTOPPABLE:
                return self._let_terminate(instance_id, volume_id, slot)
            if refused:
                return True
            self.note(f"slot {slot}: stopping {instance_id} (its application stops and {volume_id} is unmounted) "
                      "to hand the volume over")
            state = self._instance_state(instance_id)
        if state not in ("stopped", "terminated"):
            return True
        if (attachment(volume) or {}).get("State") == "attached":
            if self._refused(self.ec2.detach_volume, IN_TRANSIT, VolumeId=volume_id, InstanceId=instance_id):
                return True
            volume = self._volume(volume_id)
        if volume["State"] != "available":
            return True
        self.note(f"slot {slot}: {volume_id} detached from {instance_id}")
        self._complete(TERMINATING, instance_id, "CONTINUE", f"{instance_id} let {volume_id} go")
        return False

    def _let_terminate(self, instance_id: str, volume_id: str, slot: str) -> bool:
        self.note(f"slot {slot}: {instance_id} cannot be stopped (a Spot instance, or an instance-store root); "
                  f"letting it terminate: its shutdown stops the application and unmounts {volume_id}, which is "
                  "free for a replacement once the instance is gone")
        self._complete(TERMINATING, instance_id, "CONTINUE", f"{instance_id} terminating with {volume_id} (no stop)")
        return False

    def _receive(self, instance: dict[str, Any], volumes: list[dict[str, Any]], others: set[str], taken: set[str],
                 desired: int) -> bool:
        """Pending:Wait: its volume attached, then let go. True while a create or the attach is in transit."""
        instance_id, zone = instance["InstanceId"], instance["AvailabilityZone"]
        mine = holder(volumes, instance_id)
        if mine is not None:
            if (attachment(mine) or {}).get("State") != "attached":
                return True
            self.note(f"slot {slot_of(mine)}: {mine['VolumeId']} is attached to {instance_id}; letting it go on")
            return self._launched(mine, instance_id)
        ec2_instance = self._instance(instance_id)
        if self._too_late(ec2_instance):
            return False
        if ec2_instance["State"]["Name"] != "running":  # EC2 refuses AttachVolume until then
            return ec2_instance["State"]["Name"] == "pending"
        volume = self._choose(instance_id, zone, volumes, others, taken)
        if volume is None and len(volumes) < desired:
            volume = self._create(zone, volumes, instance_id)
            volumes.append(volume)
        if volume is None:
            if instance_id not in self._told:
                self._told.add(instance_id)
                self.note(f"instance {instance_id} in {zone} waits for a data volume: none is available "
                          f"({len(volumes)} of the group's {desired} slots have one, held by other instances or in "
                          "another zone)")
            return False
        taken.add(volume["VolumeId"])
        self._tag(volume, f"attach:{instance_id}")
        volume = self._volume(volume["VolumeId"])
        if volume["State"] != "available" or volume.get("Attachments"):  # still creating; never a second attachment
            return True
        if self._refused(self.ec2.attach_volume, IN_TRANSIT, VolumeId=volume["VolumeId"], InstanceId=instance_id,
                         Device=DEVICE):
            return True
        volume = self._volume(volume["VolumeId"])
        if (attachment(volume) or {}).get("State") != "attached":
            return True
        self.note(f"slot {slot_of(volume)}: {volume['VolumeId']} attached to {instance_id}")
        return self._launched(volume, instance_id)

    def _launched(self, volume: dict[str, Any], instance_id: str) -> bool:
        self._complete(LAUNCHING, instance_id, "CONTINUE", f"{instance_id} launched with {volume['VolumeId']}")
        self._tag(volume, "")
        return False

    def _too_late(self, instance: dict[str, Any]) -> bool:
        """A launch older than its bakery-data-volume unit waits is abandoned: Auto Scaling launches a fresh one,
        whose unit waits again, instead of a volume arriving after the unit gave up (the app would never start)."""
        launched = instance.get("LaunchTime")
        age = (datetime.now(UTC) - launched).total_seconds() if isinstance(launched, datetime) else 0.0
        if age <= ATTACH_BY_SECONDS:
            return False
        instance_id = instance["InstanceId"]
        self.note(f"abandoning the launch of {instance_id}: it launched {age / 60:.0f} min ago and its "
                  f"bakery-data-volume unit waits {INSTANCE_WAIT_SECONDS // 60} min for the volume; Auto Scaling "
                  "launches a fresh instance")
        self._complete(LAUNCHING, instance_id, "ABANDON", f"{instance_id} abandoned (launched {age / 60:.0f} min ago)")
        return True

    def _choose(self, instance_id: str, zone: str, volumes: list[dict[str, Any]], others: set[str],
                taken: set[str]) -> dict[str, Any] | None:
        """The volume claimed for this instance, else the lowest free slot's in its zone (not another waiter's)."""
        free = [v for v in volumes if v["State"] in ("available", "creating") and attachment(v) is None
                and v["AvailabilityZone"] == zone and v["VolumeId"] not in taken]
        claimed = next((v for v in free if handover_of(v) == f"attach:{instance_id}"), None)
        if claimed is not None:
            return claimed
        return next((v for v in free if v["State"] == "available"
                     and not (handover_of(v).startswith("attach:") and handover_of(v)[7:] in others)), None)

    def _create(self, zone: str, volumes: list[dict[str, Any]], instance_id: str) -> dict[str, Any]:
        used = {slot_of(v) for v in volumes}
        slot = str(next(n for n in range(len(used) + 1) if str(n) not in used))
        values = {"Name": f"{self.image}-{self.env_name}-{self.volume.name}-{slot}", tags.MANAGED: "true",
                  tags.ENVIRONMENT: self.env_name, tags.IMAGE: self.image, tags.DATA_VOLUME: self.volume.name,
                  tags.SLOT: slot, tags.HANDOVER: f"attach:{instance_id}"}
        request: dict[str, Any] = {"AvailabilityZone": zone, "Size": self.volume.size_gb, "VolumeType": "gp3",
                                   "Encrypted": True,
                                   "TagSpecifications": [{"ResourceType": "volume", "Tags": tags.as_tag_list(values)}]}
        if self.kms_key_id:
            request["KmsKeyId"] = self.kms_key_id
        made = self.ec2.create_volume(**request)
        self.note(f"slot {slot}: created {made['VolumeId']} ({self.volume.size_gb} GiB gp3, encrypted) in {zone} "
                  f"for {instance_id}")
        return {**made, "Attachments": made.get("Attachments", [])}

    # ---- status (read-only)

    def report(self, group: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """Each volume (slot, id, state, instance, zone, hand-over) and one line per thing that needs a look: a volume
        attached to nothing that no instance waits for, a volume on an instance outside the group, an instance that
        waits for its volume."""
        instances = {i["InstanceId"]: i for i in group["Instances"]}
        waiting_zones = {i["AvailabilityZone"] for i in instances.values() if i["LifecycleState"] == PENDING_WAIT}
        rows, lines = [], []
        for volume in self.find():
            held = attachment(volume)
            on = held["InstanceId"] if held else None
            unattached = on is None and volume["AvailabilityZone"] not in waiting_zones
            rows.append({"slot": slot_of(volume), "id": volume["VolumeId"], "state": volume["State"], "instance": on,
                         "zone": volume["AvailabilityZone"], "size_gb": volume["Size"],
                         "handover": handover_of(volume) or None, "unattached": unattached})
            what = f"data volume {volume['VolumeId']} (slot {slot_of(volume)})"
            if unattached:
                left = handover_of(volume).partition(":")[2]
                lines.append(f"{what} is attached to no instance and no instance waits for it"
                             + (f" (it left {left})" if left else "") + "; a replacement launched into "
                             f"{volume['AvailabilityZone']} takes it (bakery never deletes a data volume)")
            elif on is not None and on not in instances:
                lines.append(f"{what} is attached to {on}, which is not in Auto Scaling group {self.group_name}")
        for instance in instances.values():
            state = instance["LifecycleState"]
            if state in (PENDING_WAIT, TERMINATING_WAIT):
                fallback = "abandons the launch" if state == PENDING_WAIT else "lets it terminate without a stop"
                lines.append(f"instance {instance['InstanceId']} is in {state} for its data volume; "
                             f"./bake.py status --env {self.env_name} (run on a schedule) or a deploy finishes the "
                             f"hand-over, else the hook {fallback} after {lifecycle_hooks.HEARTBEAT_SECONDS // 60} min")
        return rows, lines
