"""Managed AMIs in moto for the gc, distribute and images tests: an AMI with its snapshot, both tagged as a bake tags
them."""

from __future__ import annotations

from pathlib import Path

from bakery.aws import amis, tags


def version_ami(ec2, image: str, version: str, region: str = "us-east-1", **extra: str) -> tuple[str, list[str]]:
    """Register a managed AMI of image:version (moto makes its snapshot) and tag AMI and snapshot; returns (ami id,
    snapshot ids)."""
    ami = ec2.register_image(Name=f"{image}-{version}", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
                             BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}])["ImageId"]
    snapshots = amis.snapshot_ids(ec2.describe_images(ImageIds=[ami])["Images"][0])
    values = {"Name": f"{image}-{version}", tags.MANAGED: "true", tags.IMAGE: image, tags.VERSION: version,
              tags.GIT_COMMIT: "0123456789abcdef0123456789abcdef01234567", **extra}
    ec2.create_tags(Resources=[ami, *snapshots], Tags=tags.as_tag_list(values))
    return ami, snapshots


def with_aws_settings(project: Path, regions: list[str], accounts: list[str] | None = None,
                      keys: dict[str, str] | None = None) -> Path:
    """Give the fixture project an `aws:` section (home region us-east-1; `keys`: region -> KMS key, the home one as
    aws.kms_key_id)."""
    lines = ["aws:", "  region: us-east-1", f"  regions: [{', '.join(regions)}]"]
    if accounts:
        lines.append(f"  accounts: [{', '.join(repr(a) for a in accounts)}]")
    keys = dict(keys or {})
    if "us-east-1" in keys:
        lines.append(f"  kms_key_id: {keys.pop('us-east-1')}")
    if keys:
        lines += ["  region_kms_key_ids:", *(f"    {region}: {key}" for region, key in keys.items())]
    with open(project / "bakery.yml", "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return project
