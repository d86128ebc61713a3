"""One launch template version per release: the AMI, IMDSv2, encrypted volumes, the runtime config as UserData.

A release never edits a version: it creates a new one from the version the
Auto Scaling group runs now (so the network, key, profile and security groups
set up with the template carry over) and the group is pinned to its number.
What is copied from the source version or the AMI (metadata options, block
device mappings) is cut to what CreateLaunchTemplateVersion accepts, and no
volume of the AMI is made smaller than its snapshot.
`$Latest` and `$Default` are never used: they move under a running group and
leave nothing to roll back to.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from bakery import runtime_grammar
from bakery.aws import shapes, tags
from bakery.errors import ConfigError, OperationError
from bakery.fleets.base import Goal
from bakery.provenance import sanitize_tag_value

CONFIG_DIGEST = "bakery:config-digest"  # on instances and volumes: which runtime config they were launched with
RELEASE = "bakery:release"
TAGGED_RESOURCES = ("instance", "volume")


def user_data(env_text: str) -> str:
    """The runtime env file (KEY="value" lines, as the local target mounts it), base64 for the launch template."""
    return base64.b64encode(env_text.encode("utf-8")).decode("ascii")


def user_data_text(encoded: str | None, version: str = "a launch template version") -> str:
    """The runtime env file a version's UserData holds. A version edited by hand (gzip, not base64, not UTF-8,
    off the runtime config grammar) is state on AWS, not input: OperationError, one line naming `version`."""
    if not encoded:
        return ""
    fix = "create a new version from one bakery wrote (bake.py deploy or config set) or fix it in EC2"
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise OperationError(f"{version}: UserData is not base64 ({len(encoded)} characters); {fix}") from None
    try:
        runtime_grammar.read(data, f"{version}: UserData")
    except ConfigError as error:
        raise OperationError(f"{error}; {fix}") from None
    return data.decode("utf-8")


def release_tags(env: str, goal: Goal, release_id: int) -> dict[str, str]:
    raw = {tags.MANAGED: "true", tags.ENVIRONMENT: env, tags.IMAGE: goal.image, tags.VERSION: goal.version,
           tags.GIT_COMMIT: goal.git_commit, tags.GIT_MESSAGE: goal.git_message, CONFIG_DIGEST: goal.config_digest,
           RELEASE: str(release_id), "Name": f"{goal.image}-{env}-{goal.version}"}
    return {key: sanitize_tag_value(value) for key, value in raw.items() if value}


def _merged_tag_specifications(source: list[dict[str, Any]], ours: dict[str, str]) -> list[dict[str, Any]]:
    """The source version's tag specifications with ours added to instances and volumes (ours win on a clash)."""
    by_type = {spec["ResourceType"]: tags.from_tag_list(spec.get("Tags")) for spec in source}
    for resource in TAGGED_RESOURCES:
        by_type[resource] = {**by_type.get(resource, {}), **ours}
    return [{"ResourceType": resource, "Tags": tags.as_tag_list(values)} for resource, values in by_type.items()]


def _ebs_size(mapping: dict[str, Any]) -> int:
    return int((mapping.get("Ebs") or {}).get("VolumeSize") or 0)


def grown_volumes(image: dict[str, Any], source: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """The AMI's devices whose size in the template is below the AMI's own snapshot size: device -> (template's,
    AMI's) GiB. AWS refuses to launch a volume smaller than its snapshot, so the new version takes the AMI's size."""
    snapshot_sizes = {m["DeviceName"]: _ebs_size(m) for m in image.get("BlockDeviceMappings", [])}
    return {m["DeviceName"]: (_ebs_size(m), snapshot_sizes[m["DeviceName"]]) for m in source
            if 0 < _ebs_size(m) < snapshot_sizes.get(m["DeviceName"], 0)}


def encrypted_mappings(image: dict[str, Any], source: list[dict[str, Any]], kms_key_id: str) -> list[dict[str, Any]]:
    """Every EBS volume of the AMI (and any extra the template adds) encrypted; an unencrypted snapshot is
    encrypted on launch. The AMI's devices take their snapshots from the AMI, never from an older image the source
    version named, and are never smaller than the AMI's snapshots (a template may make them larger)."""
    image_devices = {m["DeviceName"] for m in image.get("BlockDeviceMappings", [])}
    grown = grown_volumes(image, source)
    mappings: dict[str, dict[str, Any]] = {}
    for mapping in [*image.get("BlockDeviceMappings", []), *source]:
        if "Ebs" not in mapping:
            continue
        dropped: tuple[str, ...] = ("Encrypted", "KmsKeyId")
        if mapping["DeviceName"] in image_devices:
            dropped += ("SnapshotId",)
        kept = {k: v for k, v in mapping["Ebs"].items() if k not in dropped}
        ebs = {**mappings.get(mapping["DeviceName"], {}).get("Ebs", {}), **kept}
        ebs["Encrypted"] = True
        if mapping["DeviceName"] in image_devices:
            ebs["DeleteOnTermination"] = True  # a replaced instance must not leave its root volume behind
        if mapping["DeviceName"] in grown:
            ebs["VolumeSize"] = grown[mapping["DeviceName"]][1]
        if ebs.get("VolumeType", "standard") == "standard":
            ebs["VolumeType"] = "gp3"
        _drop_what_the_type_refuses(ebs)
        if kms_key_id:
            ebs["KmsKeyId"] = kms_key_id
        mappings[mapping["DeviceName"]] = {"DeviceName": mapping["DeviceName"], "Ebs": ebs}
    return list(mappings.values())


# RunInstances refuses Iops for volume types without provisioned IOPS and Throughput for all but gp3; the AMI's gp3
# values must not follow its volume onto a template's gp2, io1 or st1.
IOPS_TYPES = ("gp3", "io1", "io2")
THROUGHPUT_TYPES = ("gp3",)


def _drop_what_the_type_refuses(ebs: dict[str, Any]) -> None:
    if ebs["VolumeType"] not in IOPS_TYPES:
        ebs.pop("Iops", None)
    if ebs["VolumeType"] not in THROUGHPUT_TYPES:
        ebs.pop("Throughput", None)


def launch_data(*, image: dict[str, Any], source: dict[str, Any], goal: Goal, env_name: str, env_text: str,
                instance_type: str, release_id: int, kms_key_id: str = "") -> dict[str, Any]:
    """LaunchTemplateData for a release: what changes per release; the rest comes from the source version.

    kms_key_id is the key of the environment's own region (AwsSettings.kms_key_for): a KMS key is regional, so the home
    region's key cannot encrypt volumes elsewhere; '' leaves the region's default EBS key."""
    data: dict[str, Any] = {
        "ImageId": image["ImageId"],
        "MetadataOptions": {**source.get("MetadataOptions", {}), "HttpTokens": "required", "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": encrypted_mappings(image, source.get("BlockDeviceMappings", []), kms_key_id),
        "UserData": user_data(env_text),
        "TagSpecifications": _merged_tag_specifications(source.get("TagSpecifications", []),
                                                        release_tags(env_name, goal, release_id)),
    }
    if instance_type:
        data["InstanceType"] = instance_type
    return data


def template(ec2: Any, name: str) -> dict[str, Any] | None:
    try:
        found = ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
    except ec2.exceptions.ClientError as exc:
        if "NotFound" in exc.response.get("Error", {}).get("Code", ""):
            return None
        raise
    return found[0] if found else None


def version_data(ec2: Any, template_id: str, version: str | int) -> dict[str, Any]:
    found = ec2.describe_launch_template_versions(LaunchTemplateId=template_id,
                                                  Versions=[str(version)])["LaunchTemplateVersions"]
    return found[0]["LaunchTemplateData"] if found else {}


def all_versions(ec2: Any, template_id: str) -> list[dict[str, Any]]:
    """Every version of the template, newest first."""
    versions: list[dict[str, Any]] = []
    for page in ec2.get_paginator("describe_launch_template_versions").paginate(LaunchTemplateId=template_id):
        versions.extend(page["LaunchTemplateVersions"])
    return sorted(versions, key=lambda v: v["VersionNumber"], reverse=True)


def create_version(ec2: Any, template_id: str, source_version: str | int, data: dict[str, Any],
                   description: str) -> int:
    """A new version from `data`, which holds structures copied from describe answers: only the members the request
    has are sent (bakery.aws.shapes)."""
    request_shape = shapes.request_member(ec2, "CreateLaunchTemplateVersion", "LaunchTemplateData")
    made = ec2.create_launch_template_version(LaunchTemplateId=template_id, SourceVersion=str(source_version),
                                              VersionDescription=description[:255],
                                              LaunchTemplateData=shapes.request_only(data, request_shape))
    return int(made["LaunchTemplateVersion"]["VersionNumber"])


def instance_tags(data: dict[str, Any]) -> dict[str, str]:
    """The tags a version puts on its instances."""
    spec: dict[str, Any] = next((s for s in data.get("TagSpecifications", []) if s["ResourceType"] == "instance"), {})
    return tags.from_tag_list(spec.get("Tags"))
