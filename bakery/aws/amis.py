"""AMIs this tool owns: find them by tag, wait for a new one to show up, remove one with its snapshots.

EC2 is eventually consistent: an AMI that Packer (or CopyImage) just registered
can answer InvalidAMIID.NotFound, or an empty list, for a while. Everything here
that looks up one AMI retries that with a bounded backoff instead of failing.
Throttling is botocore's job (adaptive retries in bakery.aws.clients).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import ClientError

from bakery.aws import tags
from bakery.errors import ConfigError, OperationError

log = logging.getLogger("bakery.aws.amis")

NOT_YET_VISIBLE = {"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"}
SNAPSHOT_BUSY = {"InvalidSnapshot.InUse"}
DEFAULT_ROOT_DEVICE = "/dev/xvda"
VISIBLE_TIMEOUT = 300.0  # seconds an AMI may take to become visible after registration
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 15.0


def backoff(first: float = BACKOFF_FIRST, limit: float = BACKOFF_MAX):
    """Delays for polling: 1, 2, 4, ... seconds, capped."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, limit)


def tag_filters(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{key}", "Values": [value]} for key, value in tags.items()]


def find_amis(ec2, tags: Mapping[str, str], owners: tuple[str, ...] = ("self",),
              include_disabled: bool = False) -> list[dict[str, Any]]:
    """AMIs owned by `owners` that carry every tag given, newest first (disabled ones too when asked: DescribeImages
    leaves out an AMI someone disabled with DisableImage, which can be enabled again)."""
    images = ec2.describe_images(Owners=list(owners), Filters=tag_filters(tags),
                                 **({"IncludeDisabled": True} if include_disabled else {}))["Images"]
    return sorted(images, key=lambda i: i.get("CreationDate", ""), reverse=True)


def newest_available(ec2, tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The newest available AMI carrying these tags (a pending or failed one is nothing to use yet)."""
    return next((i for i in find_amis(ec2, tags) if i.get("State") == "available"), None)


def describe_ami(ec2, ami_id: str) -> dict[str, Any] | None:
    """One AMI, or None while EC2 does not (yet) know it."""
    try:
        images = ec2.describe_images(ImageIds=[ami_id])["Images"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] in NOT_YET_VISIBLE:
            return None
        raise
    return images[0] if images else None


def wait_until_visible(ec2, ami_id: str, *, state: str | None = "available", timeout: float = VISIBLE_TIMEOUT,
                       sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Describe `ami_id` until EC2 shows it (and it reached `state`); bounded, with backoff."""
    deadline = time.monotonic() + timeout
    seen = "not visible"
    for delay in backoff():
        image = describe_ami(ec2, ami_id)
        if image is not None:
            seen = image.get("State", "unknown")
            if seen == "failed":
                reason = (image.get("StateReason") or {}).get("Message", "no reason given")
                raise OperationError(f"AMI {ami_id} failed: {reason}")
            if state is None or seen == state:
                return image
        if time.monotonic() + delay > deadline:
            raise OperationError(f"AMI {ami_id} is still {seen} after {timeout:.0f} s; check it in the EC2 console "
                                 "and bake again")
        log.info("AMI %s is %s; looking again in %.0f s", ami_id, seen, delay)
        sleep(delay)
    raise AssertionError("unreachable")


def snapshot_ids(image: Mapping[str, Any]) -> list[str]:
    """The EBS snapshots behind an AMI (deregistering leaves them behind)."""
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]


def tag_with_snapshots(ec2, ami_id: str, wanted: Mapping[str, str]) -> list[str]:
    """Put `wanted` on an AMI and every snapshot behind it (tags set at registration do not cover facts known later)."""
    image = wait_until_visible(ec2, ami_id)
    resources = [ami_id, *snapshot_ids(image)]
    ec2.create_tags(Resources=resources, Tags=[{"Key": k, "Value": v} for k, v in wanted.items()])
    return resources


def root_device(ec2, ami_id: str) -> str:
    """The base AMI's root device name (/dev/xvda, /dev/sda1, ...).

    The build's volume settings must name it, or EC2 adds a volume.
    """
    # by filter: an unknown id gives [] (ImageIds= raises)
    images = ec2.describe_images(Filters=[{"Name": "image-id", "Values": [ami_id]}])["Images"]
    if not images:
        raise ConfigError(f"bakery.yml: base AMI {ami_id} is not visible in this region; check aws.base_ami / "
                          "aws.base_ami_parameter")
    return images[0].get("RootDeviceName") or DEFAULT_ROOT_DEVICE


def deregister_with_snapshots(ec2, ami_id: str, *, sleep: Callable[[float], None] = time.sleep,
                              attempts: int = 6) -> list[str]:
    """Deregister an AMI and delete its snapshots; returns the snapshot ids deleted. Gone already is fine."""
    image = describe_ami(ec2, ami_id)
    if image is None:
        return []
    snapshots = snapshot_ids(image)
    ec2.deregister_image(ImageId=ami_id)
    for snapshot in snapshots:
        delays = backoff()
        for attempt in range(attempts):
            try:
                ec2.delete_snapshot(SnapshotId=snapshot)
                break
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code == "InvalidSnapshot.NotFound":
                    break
                if code not in SNAPSHOT_BUSY or attempt == attempts - 1:
                    raise
                sleep(next(delays))  # the AMI's deregistration has not reached the snapshot yet
    log.info("deregistered %s and deleted snapshots %s", ami_id, ", ".join(snapshots) or "(none)")
    return snapshots


def resolve_base_ami(ssm, parameter: str, fixed: str = "") -> str:
    """The base AMI id: `aws.base_ami` when set, else the value of the public SSM parameter."""
    if fixed:
        return fixed
    try:
        value = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ParameterNotFound":
            raise ConfigError(f"bakery.yml: aws.base_ami_parameter '{parameter}' does not exist in this region; "
                              "set it to a public parameter such as /aws/service/debian/release/12/latest/amd64, or "
                              "set aws.base_ami") from exc
        raise
    if not value.startswith("ami-"):
        raise ConfigError(f"bakery.yml: aws.base_ami_parameter '{parameter}' holds '{value}', not an AMI id; point it "
                          "at an AMI parameter")
    return value


def owned_named(ec2, name: str) -> list[dict[str, Any]]:
    """AMIs this account owns whose name matches `name` (EC2's name filter: * and ? are wildcards), tagged or not."""
    return ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]


def is_managed(image: Mapping[str, Any]) -> bool:
    return tags.from_tag_list(image.get("Tags")).get(tags.MANAGED) == "true"


def claim(ec2, image: Mapping[str, Any], run_id: str) -> list[str]:
    """Mark an AMI a bake registered but never tagged (and its snapshots) as bakery's, so that it can be removed.

    Packer 1.6.6 tags an AMI only in its last step (CreateImage carries no tags):
    a bake that dies before leaves an untagged AMI, and the shipped IAM policy
    lets the role deregister or delete only what carries bakery:managed=true.
    Tagging it with bakery:managed and the run that made it is the one change that
    policy allows on an untagged AMI. Packer tags the AMI and its snapshots in two
    calls, so each is looked at. Returns the resources tagged (none if all were bakery's already).
    """
    resources = [] if is_managed(image) else [image["ImageId"]]
    snapshots = snapshot_ids(image)
    if snapshots:
        found = ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": snapshots}])["Snapshots"]
        resources += [s["SnapshotId"] for s in found if not is_managed(s)]
    if resources:
        ec2.create_tags(Resources=resources, Tags=tags.as_tag_list({tags.MANAGED: "true", tags.RUN: run_id}))
        log.info("claimed %s of %s (%s) for run %s", ", ".join(resources), image["ImageId"], image.get("Name", ""),
                 run_id)
    return resources
