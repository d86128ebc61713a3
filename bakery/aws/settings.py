"""The `aws:` section of bakery.yml: where AMIs are baked, kept and shared.

Per-environment settings (Auto Scaling group, launch template, instance type)
live in the environment's deploy.yml under `bakery_deploy.aws`; these are the
project-wide ones every aws command shares.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bakery.errors import ConfigError

REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
ACCOUNT_RE = re.compile(r"^\d{12}$")
BUILDERS = ("packer", "imagebuilder")
DEBIAN_12_PARAMETER = "/aws/service/debian/release/12/latest/amd64"


@dataclass
class AwsSettings:
    region: str = ""  # the home region: builds, SSM release parameters, deploys; empty = the standard AWS chain
    # every region AMIs are copied to (and gc looks in); home region first
    regions: list[str] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)  # accounts given launch permission on every AMI
    builder: str = "packer"
    base_ami_parameter: str = DEBIAN_12_PARAMETER  # public SSM parameter naming the base AMI
    base_ami: str = ""  # a fixed base AMI id instead of the parameter
    instance_type: str = "t3.small"  # the build instance
    ssh_username: str = "admin"  # Debian's cloud images
    subnet_id: str = ""
    security_group_ids: list[str] = field(default_factory=list)
    instance_profile: str = ""  # the build instance's profile (Image Builder needs one; Packer may use one)
    artifacts_bucket: str = ""  # S3 bucket for application artifacts and Image Builder bundles
    volume_size: int = 8
    kms_key_id: str = ""  # the home region's EBS key; empty: the account's default EBS key (such AMIs cannot be shared)
    # other region -> its EBS key (copies are re-encrypted there)
    region_kms_key_ids: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def kms_key_for(self, region: str, home: str) -> str:
        """The EBS key for volumes and AMI copies in `region` ('' = that region's default key)."""
        return self.region_kms_key_ids.get(region) or (self.kms_key_id if region == home else "")

    def all_regions(self, home: str) -> list[str]:
        """The home region first, then the others, without repeats."""
        return list(dict.fromkeys([home, *self.regions]))


def load_aws_settings(data: Any, where: str = "bakery.yml") -> AwsSettings:
    """Validate the `aws:` mapping; every problem is one line naming the field."""
    if data is None:
        return AwsSettings()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: aws must be a mapping, got {type(data).__name__}")
    known = set(AwsSettings.__dataclass_fields__)
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise ConfigError(f"{where}: aws: unknown key '{unknown[0]}'; known keys: {', '.join(sorted(known))}")
    settings = AwsSettings()
    for key, default in asdict(settings).items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(default, dict):
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                                      for k, v in value.items()):
                raise ConfigError(f"{where}: aws.{key} must map a region name to a KMS key id, ARN or alias, "
                                  f"got {value!r}")
        elif isinstance(default, list):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: aws.{key} must be a list of strings, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16384:
                raise ConfigError(f"{where}: aws.{key} must be an integer from 1 to 16384, got {value!r}")
        elif not isinstance(value, str):
            raise ConfigError(f"{where}: aws.{key} must be a string, got {value!r}")
        setattr(settings, key, value)
    for region in ([settings.region] if settings.region else []) + settings.regions + list(settings.region_kms_key_ids):
        if not REGION_RE.match(region):
            raise ConfigError(f"{where}: aws region '{region}' is not a region name like eu-west-1")
    for account in settings.accounts:
        if not ACCOUNT_RE.match(account):
            raise ConfigError(f"{where}: aws.accounts entry '{account}' is not a 12-digit AWS account id")
    if settings.builder not in BUILDERS:
        raise ConfigError(f"{where}: aws.builder must be one of {', '.join(BUILDERS)}, got {settings.builder!r}")
    if settings.base_ami and not re.match(r"^ami-[0-9a-f]{8,17}$", settings.base_ami):
        raise ConfigError(f"{where}: aws.base_ami must be an AMI id like ami-0123456789abcdef0, "
                          f"got {settings.base_ami!r}")
    return settings
