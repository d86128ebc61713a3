"""What every AMI builder shares: finding an AMI baked from the same inputs, and returning it as this bake's result.

Packer and EC2 Image Builder differ in how they bake; they agree that an
available AMI tagged with this image's input digest *is* the bake, and that
a version found on AWS but missing from this checkout's catalog (baked by CI,
another laptop) is adopted into it, so deploy and promote can name it.
"""

from __future__ import annotations

import time
from typing import Any

from bakery.aws import adopt, amis, tags
from bakery.builders.base import Builder, BuildResult, LayerResult
from bakery.errors import ConfigError
from bakery.layers import PlannedLayer
from bakery.runs import Run


def region_keys(settings, home: str) -> dict[str, str]:
    """The EBS key of every region an AMI lands in, home first ('' = that region's default key); no AWS call yet.

    A copy encrypted with a region's default aws/ebs key cannot be launched by
    another account, so sharing (aws.accounts) needs a key in every region.
    """
    keys = {region: settings.kms_key_for(region, home) for region in settings.all_regions(home)}
    copied = [region for region in keys if region != home]
    if settings.accounts and not keys[home]:
        raise ConfigError("bakery.yml: aws.accounts needs aws.kms_key_id: an AMI encrypted with the default EBS key "
                          "cannot be shared; set a customer-managed KMS key the accounts may use")
    missing = [region for region in copied if not keys[region]]
    if missing and settings.accounts:
        raise ConfigError("bakery.yml: aws.accounts needs a key for every region: aws.region_kms_key_ids has none "
                          f"for {missing[0]}; a copy there would be encrypted with its default EBS key, which other "
                          "accounts cannot use")
    return keys


class AmiBuilder(Builder):
    target = "aws"

    @staticmethod
    def existing_ami(ec2, image: str, digest: str) -> dict[str, Any] | None:
        """The newest available AMI of this image baked from exactly these inputs (a pending or failed one is none)."""
        return amis.newest_available(ec2, {tags.MANAGED: "true", tags.IMAGE: image, tags.INPUT_DIGEST: digest})

    def reused(self, ami: dict[str, Any], region: str, digest: str, planned: list[PlannedLayer], run: Run,
               started: float) -> BuildResult:
        """The existing AMI as this bake's result, recorded in the catalog first when it was baked elsewhere."""
        facts = tags.from_tag_list(ami.get("Tags"))
        name, version, ami_id = facts[tags.IMAGE], facts.get(tags.VERSION, ""), ami["ImageId"]
        self.progress.note(f"{name}: inputs unchanged, reusing version {version} ({ami_id} in {region})")
        row = adopt.adopt_ami(self.catalog, ami, region, run.id)
        return BuildResult(image=name, version=version, ref=ami_id, image_id=ami_id, input_digest=digest, reused=True,
                           run_id=run.id, seconds=round(time.monotonic() - started, 3),
                           layers=[LayerResult(p.role, p.key, p.role_digest, cached=True) for p in planned],
                           provenance=row.get("provenance") or {})
