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

REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d\Z")
ACCOUNT_RE = re.compile(r"^\d{12}\Z")
IAM_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}\Z")  # an IAM role or instance profile name
LOG_GROUP_RE = re.compile(r"^[\w./#-]{1,512}\*?\Z")  # a log group name, or a prefix ending in *
SUBNET_RE = re.compile(r"^subnet-[0-9a-f]+\Z")
BUILDERS = ("packer", "imagebuilder", "disk")
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
    # IAM role names the CI role may pass (iam:PassRole), for `bake.py iam-policy`: the role in instance_profile,
    # and the environments' instance roles (their launch templates name profiles holding them): a mapping
    # environment -> role (what `iam-policy --env` needs), or a plain list of roles
    build_role: str = ""
    instance_roles: dict[str, str] | list[str] = field(default_factory=list)
    # CloudWatch log groups `bake.py logs` may read (names, or prefixes ending in *): bakery_deploy.aws.log_group
    log_groups: list[str] = field(default_factory=lambda: ["/bakery/*"])
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
        if key == "instance_roles":
            _check_instance_roles(value, where)
        elif isinstance(default, dict):
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
    _check_iam_and_network(settings, where)
    if settings.base_ami and not re.match(r"^ami-[0-9a-f]{8,17}$", settings.base_ami):
        raise ConfigError(f"{where}: aws.base_ami must be an AMI id like ami-0123456789abcdef0, "
                          f"got {settings.base_ami!r}")
    return settings


def _check_iam_and_network(settings: AwsSettings, where: str) -> None:
    """The names the IAM policy is rendered from, and the network pair Image Builder refuses half of."""
    for key, names in (("instance_profile", [settings.instance_profile] if settings.instance_profile else []),
                       ("build_role", [settings.build_role] if settings.build_role else []),
                       ("instance_roles", role_names(settings.instance_roles))):
        for name in names:
            if not IAM_NAME_RE.match(name):
                raise ConfigError(f"{where}: aws.{key} '{name}' is not an IAM name (letters, digits and +=,.@_- only, "
                                  "at most 64): give the name, not the ARN")
    for group in settings.log_groups:
        if not LOG_GROUP_RE.match(group):
            raise ConfigError(f"{where}: aws.log_groups entry '{group}' is not a log group name (or a prefix ending "
                              "in *) like /bakery/qa or /bakery/*")
    if settings.subnet_id and not SUBNET_RE.match(settings.subnet_id):
        raise ConfigError(f"{where}: aws.subnet_id must be a subnet id like subnet-0123456789abcdef0, "
                          f"got {settings.subnet_id!r}")
    if settings.subnet_id and not settings.security_group_ids:
        raise ConfigError(f"{where}: aws.subnet_id is set but aws.security_group_ids is empty: Image Builder refuses "
                          "a subnet without security groups (and Packer would open a temporary group in it); list the "
                          "build instance's security groups in aws.security_group_ids")


def role_names(instance_roles: dict[str, str] | list[str]) -> list[str]:
    """The role names of aws.instance_roles, a mapping environment -> role or a list."""
    return sorted(set(instance_roles.values() if isinstance(instance_roles, dict) else instance_roles))


def _check_instance_roles(value: Any, where: str) -> None:
    if isinstance(value, dict):
        if all(isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()):
            return
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        return
    raise ConfigError(f"{where}: aws.instance_roles must map an environment to its instance role name "
                      f"(qa: bakery-qa-instance) or list role names, got {value!r}")


def check_packer_network(settings: AwsSettings, where: str = "bakery.yml") -> None:
    """Packer bakes need named security groups: without them Packer 1.6.6 creates a temporary group it cannot tag,
    and the CI role would need to open and delete any security group of the account. Checked where Packer is
    used (`bake.py iam-policy`, a Packer bake), not when bakery.yml is read: a project that only deploys, copies
    or collects garbage on AWS needs no build network."""
    if settings.builder == "packer" and not settings.security_group_ids:
        raise ConfigError(f"{where}: aws.security_group_ids is empty and aws.builder is packer: list the build "
                          "instance's security groups (one allowing SSH from where bake.py runs) in "
                          "aws.security_group_ids; bakery does not let Packer create a temporary group")
