"""The CI role's least-privilege IAM policy, rendered from the `aws:` settings of one project.

A static policy cannot name this project's bucket, roles, subnet, accounts and log groups, so it ends up with wildcards
that let the role pass any role to an instance, image any instance or read every bucket. This renders the policy from
AwsSettings instead: every statement scoped to what bakery (and Packer 1.6.6 driven by it) does, and explicit Denies for
what must never happen even if another policy of the role allows it. docs/aws-iam-policy.json is this rendering for
docs/aws-iam-policy.example.yml (a test keeps them equal), and tests/aws/test_policy_replay.py replays every flow's
calls against it. One role per environment: `envs` renders the deploy permissions for those environments only (by the
bakery:environment tag), and build=False leaves the bake out (a promote-only role).

aws.builder disk (bakery.builders.disk) adds the EBS direct APIs and RegisterImage, scoped by tags, and every
building role may read back what bakery made (`verify --target aws`, any builder): bakery.aws.iam_policy_snapshots.
Parameters (`bake.py param`): bakery.aws.iam_policy_params; data volumes handed over: bakery.aws.iam_policy_volumes.

Image Builder's statements, and the rendering for its build instance's role (render_instance_role_policy;
docs/aws-imagebuilder-instance-role.json): bakery.aws.iam_policy_imagebuilder. Pure: no AWS call; the account id and
partition are arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from bakery.aws import tags
from bakery.aws.iam_policy_imagebuilder import BUNDLES as BUNDLES
from bakery.aws.iam_policy_imagebuilder import IMAGE_BUILDER_LOGS as IMAGE_BUILDER_LOGS
from bakery.aws.iam_policy_imagebuilder import image_builder_statements
from bakery.aws.iam_policy_imagebuilder import render_instance_role_policy as render_instance_role_policy
from bakery.aws.iam_policy_params import operator_statements
from bakery.aws.iam_policy_size import INLINE_POLICIES_LIMIT as INLINE_POLICIES_LIMIT
from bakery.aws.iam_policy_size import MANAGED_POLICY_LIMIT as MANAGED_POLICY_LIMIT
from bakery.aws.iam_policy_size import policy_size as policy_size
from bakery.aws.iam_policy_size import size_note as size_note
from bakery.aws.iam_policy_size import split_policy as split_policy
from bakery.aws.iam_policy_snapshots import KMS_VIA, MANAGED, OWN_TAG_KEYS, disk_statements, read_back_statements
from bakery.aws.iam_policy_volumes import HOOK_ACTIONS, scope, volume_statements
from bakery.aws.settings import ACCOUNT_RE, AwsSettings, check_packer_network, role_names
from bakery.errors import ConfigError

Statement = dict[str, Any]

VERIFICATIONS = "bakery/verifications"  # SSM parameters written once per version (bakery.aws.verification_record)
PACKER_KEY_PAIRS = "packer_*"  # Packer 1.6.6 names its temporary key pair packer_<uuid> and cannot tag it
# Packer passes the build role to EC2; Image Builder's infrastructure configuration to Image Builder (or EC2:
# unconfirmed which service name IAM sees, so both)
PASS_TO_BUILD = {"packer": ["ec2.amazonaws.com"], "imagebuilder": ["ec2.amazonaws.com", "imagebuilder.amazonaws.com"]}
ENV_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,30}\Z")  # docs/cloudformation/environment.yaml's EnvironmentName
PASS_TO_FLEET = ["ec2.amazonaws.com", "autoscaling.amazonaws.com"]

READ_ONLY = [
    "ec2:DescribeImages", "ec2:DescribeSnapshots", "ec2:DescribeInstances", "ec2:DescribeInstanceStatus",
    "ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions", "ec2:DescribeRegions",
    "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets", "ec2:DescribeVpcs", "ec2:DescribeVolumes", "ec2:DescribeTags",
    "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeInstanceRefreshes",
    "autoscaling:DescribeLifecycleHooks", "autoscaling:DescribeLaunchConfigurations", "cloudwatch:GetMetricData",
    "cloudwatch:ListMetrics",
    "sts:GetCallerIdentity",  # needs no permission; listed because `bake.py iam-policy` calls it
]
# These four have no resource types (the Service Authorization Reference): only "*" matches them.
IMAGE_BUILDER_LISTS = ["imagebuilder:ListComponents", "imagebuilder:ListImageRecipes",
                       "imagebuilder:ListInfrastructureConfigurations", "imagebuilder:ListDistributionConfigurations"]


class Arns:
    """ARN builders for one account and partition; regions stay '*' (a project may copy AMIs anywhere)."""

    def __init__(self, account: str, partition: str):
        self.account, self.partition = account, partition

    def ec2(self, resource: str, *, owned: bool = True) -> str:
        # '*' for the account: EC2 acts only on this account's resources (and AMIs/snapshots shared with it)
        return f"arn:{self.partition}:ec2:*:{'*' if owned else ''}:{resource}"

    def images_and_snapshots(self) -> list[str]:
        # AMI and snapshot ARNs carry no account (arn:aws:ec2:region::image/ami-...)
        return [self.ec2("image/*", owned=False), self.ec2("snapshot/*", owned=False)]

    def iam(self, resource: str) -> str:
        return f"arn:{self.partition}:iam::{self.account}:{resource}"

    def service(self, service: str, resource: str) -> str:
        return f"arn:{self.partition}:{service}:*:{self.account}:{resource}"


def render_policy(settings: AwsSettings, account: str, partition: str = "aws", *, envs: Sequence[str] = (),
                  build: bool = True, parameters: Mapping[str, Sequence[str]] | None = None,
                  data_volumes: Sequence[str] | None = None) -> dict[str, Any]:
    """The policy document for the role that runs bake.py with these settings.

    envs: deploy only to these environments (their groups and templates by the bakery:environment tag, their
    instance roles, their release parameters and log groups); none: every environment. build=False leaves out
    baking, distributing and gc (a promote-only role) and denies writing any verification record. parameters:
    environment -> the references of its runtime config, for `bake.py param` (bakery.aws.iam_policy_params).
    data_volumes: the environments with a data volume (None: every one; bakery.aws.iam_policy_volumes)."""
    if not ACCOUNT_RE.match(account):
        raise ConfigError(f"--account '{account}' is not a 12-digit AWS account id")
    check_request(settings, envs=envs, build=build)
    arns, envs = Arns(account, partition), sorted(set(envs))
    statements: list[Statement] = [{"Sid": "Read", "Effect": "Allow", "Action": READ_ONLY, "Resource": "*"}]
    if build:
        statements += _build(settings, arns)
    params = {env: refs for env, refs in (parameters or {}).items() if not envs or env in envs}
    volumes = scope(envs, data_volumes)
    statements += [*_deploy(settings, arns, envs, volumes is not None),
                   *operator_statements(params, account, partition),
                   *volume_statements(partition, account, volumes, build=build), *_never(settings, arns)]
    if not build:  # its Releases grant (parameter/bakery/*) must not reach the records, nor a new readback leaf
        statements.append({"Sid": "NoVerificationRecords", "Effect": "Deny", "Action": "ssm:PutParameter",
                           "Resource": arns.service("ssm", f"parameter/{VERIFICATIONS}/*")})
    return {"Version": "2012-10-17", "Statement": statements}


def check_request(settings: AwsSettings, *, envs: Sequence[str] = (), build: bool = True) -> None:
    """Everything render_policy refuses but the account: checked before the account is asked of STS, so a bad
    --env or setting is named even without credentials."""
    for env in envs:
        if not ENV_RE.match(env):
            raise ConfigError(f"--env '{env}' is not an environment name like qa or prod")
    _instance_roles(settings, sorted(set(envs)))
    if build:
        check_packer_network(settings)
    if build and settings.instance_profile and not settings.build_role:
        raise ConfigError("bakery.yml: aws.build_role is empty: name the IAM role inside aws.instance_profile "
                          f"'{settings.instance_profile}', the one role bake.py may pass to a build instance")


def _build(s: AwsSettings, arns: Arns) -> list[Statement]:
    """Baking (with the configured builder only), reading back, distributing, gc and the verification records."""
    packer, image_builder, disk = s.builder == "packer", s.builder == "imagebuilder", s.builder == "disk"
    return [
        *([{"Sid": "ImageBuilderLists", "Effect": "Allow", "Action": IMAGE_BUILDER_LISTS, "Resource": "*"}]
          if image_builder else []),
        {"Sid": "ReadSharing", "Effect": "Allow",
         "Action": ["ec2:DescribeImageAttribute", "ec2:DescribeSnapshotAttribute"],
         "Resource": arns.images_and_snapshots()},
        *(_build_instance(s, arns) if packer else []),
        *(disk_statements(*arns.images_and_snapshots()) if disk else []),  # (image ARN, snapshot ARN)
        *read_back_statements(arns.ec2("snapshot/*", owned=False)),
        *_images(s, arns),
        *_tagging(arns),
        *_build_roles(s, arns),
        {"Sid": "VerificationRecords", "Effect": "Allow", "Action": "ssm:PutParameter",
         "Resource": arns.service("ssm", f"parameter/{VERIFICATIONS}/*")},
        *(image_builder_statements(s, arns) if image_builder else []),
        # through EC2 (volumes, CreateImage, CopyImage) and the EBS direct APIs (iam_policy_snapshots: KMS_VIA;
        # kms:GenerateDataKey is on their list besides EC2's)
        {"Sid": "KmsThroughEc2AndEbs", "Effect": "Allow",
         "Action": ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey",
                    "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom", "kms:ReEncryptTo"],
         "Resource": arns.service("kms", "key/*"),
         "Condition": {"StringLike": {"kms:ViaService": KMS_VIA}}},
    ]


def _build_instance(s: AwsSettings, arns: Arns) -> list[Statement]:
    """Packer's build instance: launched tagged, with the named profile, in the named subnet and security groups
    (settings require them: Packer's temporary group would need every group opened and deleted), stopped, imaged
    and terminated only if tagged."""
    instance_condition: dict[str, Any] = {"StringEquals": {f"aws:RequestTag/{tags.MANAGED}": "true"}}
    if s.instance_profile:
        instance_condition["ArnEqualsIfExists"] = {
            "ec2:InstanceProfile": arns.iam(f"instance-profile/{s.instance_profile}")}
    return [
        {"Sid": "LaunchTagged", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": arns.ec2("instance/*"), "Condition": instance_condition},
        {"Sid": "BuildVolumesEncrypted", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": arns.ec2("volume/*"), "Condition": {"Bool": {"ec2:Encrypted": "true"}}},
        {"Sid": "BuildInstancesNetwork", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": [arns.ec2("image/*", owned=False), arns.ec2("network-interface/*"),
                      arns.ec2(f"subnet/{s.subnet_id}" if s.subnet_id else "subnet/*"),
                      *[arns.ec2(f"security-group/{g}") for g in s.security_group_ids],
                      arns.ec2(f"key-pair/{PACKER_KEY_PAIRS}")]},
        {"Sid": "PackersTemporaryKeyPair", "Effect": "Allow", "Action": ["ec2:CreateKeyPair", "ec2:DeleteKeyPair"],
         "Resource": arns.ec2(f"key-pair/{PACKER_KEY_PAIRS}")},
        # CreateImage too: only a bake's build instances (its bakery:run; a fleet's have none) are imaged
        {"Sid": "OnlyBuildInstances", "Effect": "Allow",
         "Action": ["ec2:StopInstances", "ec2:TerminateInstances", "ec2:CreateImage"],
         "Resource": arns.ec2("instance/*"),
         "Condition": {"StringEquals": MANAGED, "Null": {f"aws:ResourceTag/{tags.RUN}": "false"}}},
        {"Sid": "NewImages", "Effect": "Allow", "Action": "ec2:CreateImage", "Resource": arns.images_and_snapshots()},
    ]


def _images(s: AwsSettings, arns: Arns) -> list[Statement]:
    """AMIs: copied only with bakery's tags on the copy, changed and removed only when bakery's, snapshots shared
    only with aws.accounts (AMIs: IAM has no such condition key for launch permissions; _never)."""
    statements: list[Statement] = [
        # CopyImage: the source (any AMI the role can read; its tags are not checked) and the copy, both with the
        # request's tags (tag-on-create: TagCopies below)
        {"Sid": "CopiesTagged", "Effect": "Allow", "Action": "ec2:CopyImage", "Resource": arns.images_and_snapshots(),
         "Condition": {"StringEquals": {f"aws:RequestTag/{tags.MANAGED}": "true"}}},
        {"Sid": "ChangeAndDeleteOwnImages", "Effect": "Allow",
         "Action": ["ec2:ModifyImageAttribute", "ec2:DeregisterImage", "ec2:DeleteSnapshot"],
         "Resource": arns.images_and_snapshots(), "Condition": {"StringEquals": MANAGED}},
    ]
    if s.accounts:
        statements.append(
            {"Sid": "ShareSnapshots", "Effect": "Allow",
             "Action": "ec2:ModifySnapshotAttribute", "Resource": arns.ec2("snapshot/*", owned=False),
             "Condition": {"StringEquals": MANAGED,
                           "ForAllValues:StringEquals": {"ec2:Add/userId": sorted(s.accounts)}}})
    return statements


def _tagging(arns: Arns) -> list[Statement]:
    """CreateTags on copies as they are made, on what is bakery's already, and to claim an AMI or snapshot no one
    has claimed (tags at launch: _deploy's TagLaunches)."""
    return [
        {"Sid": "TagCopies", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": arns.images_and_snapshots(),
         "Condition": {"StringEquals": {"ec2:CreateAction": "CopyImage"}, "ForAllValues:StringLike": OWN_TAG_KEYS}},
        # not instances: their tags are set at launch (TagLaunches), so a role of qa cannot make prod's its own
        {"Sid": "RetagOwn", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": arns.images_and_snapshots(),
         "Condition": {"StringEquals": MANAGED, "ForAllValues:StringLike": OWN_TAG_KEYS}},
        # Packer tags its AMI only after CreateImage (which carries no tags), and a failed run's leftover is
        # claimed by its name: an AMI or snapshot without any bakery:managed tag may be marked bakery's.
        {"Sid": "ClaimUnclaimed", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": arns.images_and_snapshots(),
         "Condition": {"StringEquals": {f"aws:RequestTag/{tags.MANAGED}": "true"},
                       "ForAllValues:StringLike": OWN_TAG_KEYS,
                       "Null": {f"aws:ResourceTag/{tags.MANAGED}": "true"}}},
    ]


def _build_roles(s: AwsSettings, arns: Arns) -> list[Statement]:
    """PassRole for the build role only, only to EC2 (Packer) or Image Builder; the build profile read. The disk
    builder launches nothing."""
    if not s.build_role or s.builder not in PASS_TO_BUILD:
        return []
    statements: list[Statement] = [
        {"Sid": "PassBuildRole", "Effect": "Allow", "Action": "iam:PassRole",
         "Resource": arns.iam(f"role/{s.build_role}"),
         "Condition": {"StringEquals": {"iam:PassedToService": PASS_TO_BUILD[s.builder]}}},
        {"Sid": "CheckBuildProfile", "Effect": "Allow",
         "Action": ["iam:GetInstanceProfile", "iam:ListAttachedRolePolicies"],
         "Resource": [arns.iam(f"instance-profile/{s.instance_profile}"), arns.iam(f"role/{s.build_role}")]}]
    if s.builder == "imagebuilder":
        statements.append(
            {"Sid": "ImageBuilderServiceLinkedRole", "Effect": "Allow", "Action": "iam:CreateServiceLinkedRole",
             "Resource": arns.iam("role/aws-service-role/imagebuilder.amazonaws.com/*"),
             "Condition": {"StringEquals": {"iam:AWSServiceName": "imagebuilder.amazonaws.com"}}})
    return statements


def _deploy(s: AwsSettings, arns: Arns, envs: list[str], volumes: bool) -> list[Statement]:
    """Deploys (to `envs`, or to every environment): new versions of bakery's launch templates, refreshes of
    bakery's groups, launches through both, the environments' instance roles, release parameters and logs.
    volumes: data volumes too (iam_policy_volumes): the groups' lifecycle hooks, volumes tagged at CreateVolume."""
    owned = {**MANAGED, f"aws:ResourceTag/{tags.ENVIRONMENT}": envs} if envs else MANAGED
    group = arns.service("autoscaling", "autoScalingGroup:*:autoScalingGroupName/*")
    templates = arns.ec2("launch-template/*")
    own_templates = f"arn:{arns.partition}:ec2:*:{arns.account}:launch-template/*"  # this account's, not shared ones
    launched = [arns.ec2("instance/*"), arns.ec2("volume/*"), arns.ec2("network-interface/*"),
                arns.ec2("subnet/*"), arns.ec2("security-group/*"), arns.ec2("key-pair/*"),
                arns.ec2("image/*", owned=False)]
    releases = ([arns.service("ssm", f"parameter/bakery/*/{env}/*") for env in envs] if envs
                else [arns.service("ssm", "parameter/bakery/*")])
    statements: list[Statement] = [
        # Auto Scaling checks ec2:RunInstances on the launch template when a group is pointed at a version of it.
        {"Sid": "OnlyBakerysLaunchTemplates", "Effect": "Allow",
         "Action": ["ec2:CreateLaunchTemplateVersion", "ec2:RunInstances"], "Resource": templates,
         "Condition": {"StringEquals": owned}},
        {"Sid": "RefreshOwnGroups", "Effect": "Allow",
         "Action": ["autoscaling:UpdateAutoScalingGroup", "autoscaling:StartInstanceRefresh",
                    "autoscaling:CancelInstanceRefresh", "autoscaling:RollbackInstanceRefresh",
                    *(HOOK_ACTIONS if volumes else [])], "Resource": group, "Condition": {"StringEquals": owned}},
        # what a launch through one of this account's templates touches (the template itself: above); the group's
        # subnets are not the template's, so ec2:IsLaunchTemplateResource would refuse them (docs/aws.md)
        {"Sid": "LaunchedThroughTemplates", "Effect": "Allow", "Action": "ec2:RunInstances", "Resource": launched,
         "Condition": {"ArnLike": {"ec2:LaunchTemplate": own_templates}}},
        # tags at launch: Packer's run tags, and a template's own tag specifications (any keys); a data volume's at
        # CreateVolume (whose statement decides its tags)
        {"Sid": "TagLaunches", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": [arns.ec2("instance/*"), arns.ec2("volume/*"), arns.ec2("network-interface/*")],
         "Condition": {"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateVolume"] if volumes
                                        else "RunInstances"}}},
        {"Sid": "ReadBakeryParameters", "Effect": "Allow",
         "Action": ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParameterHistory", "ssm:GetParametersByPath"],
         "Resource": [arns.service("ssm", "parameter/bakery"), arns.service("ssm", "parameter/bakery/*")]},
        {"Sid": "PublicBaseAmiParameters", "Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": f"arn:{arns.partition}:ssm:*:*:parameter/aws/service/*"},  # public: no account in the ARN
        {"Sid": "Releases", "Effect": "Allow", "Action": "ssm:PutParameter", "Resource": releases},
    ]
    roles = _instance_roles(s, envs)
    if roles:
        statements.append(
            {"Sid": "PassInstanceRoles", "Effect": "Allow", "Action": "iam:PassRole",
             "Resource": [arns.iam(f"role/{role}") for role in roles],
             "Condition": {"StringEquals": {"iam:PassedToService": PASS_TO_FLEET}}})
    groups = _log_groups(s.log_groups, envs)
    if groups:
        resources = [arns.service("logs", f"log-group:{g}") for g in groups]
        resources += [f"{g}:*" for g in resources if not g.endswith("*")]  # the log-stream form of an exact name
        statements.append({"Sid": "InstanceLogs", "Effect": "Allow",
                           "Action": "logs:FilterLogEvents", "Resource": resources})
    return statements


def _instance_roles(s: AwsSettings, envs: list[str]) -> list[str]:
    """Every instance role, or those of `envs` (aws.instance_roles must then map environments to roles)."""
    if not envs:
        return role_names(s.instance_roles)
    if not isinstance(s.instance_roles, dict):
        raise ConfigError("bakery.yml: aws.instance_roles is a list, which names no environment: --env needs a "
                          "mapping of environment to instance role, e.g. {qa: bakery-qa-instance, prod: "
                          "bakery-prod-instance}")
    missing = [env for env in envs if env not in s.instance_roles]
    if missing:
        raise ConfigError(f"bakery.yml: aws.instance_roles names no role for --env {missing[0]} (it has "
                          f"{', '.join(sorted(s.instance_roles)) or 'none'}): add {missing[0]}: <its instance role>")
    return sorted({s.instance_roles[env] for env in envs})


def _log_groups(configured: list[str], envs: list[str]) -> list[str]:
    """aws.log_groups, or for `envs` only: a prefix P* becomes P<env> (the default /bakery/* gives /bakery/qa, the
    CloudFormation example's group), an exact name stays if it ends in /<env>."""
    if not envs:
        return sorted(configured)
    narrowed = {f"{g[:-1]}{env}" if g.endswith("*") else g for g in configured for env in envs
                if g.endswith("*") or g.endswith(f"/{env}")}
    return sorted(narrowed)


def _never(s: AwsSettings, arns: Arns) -> list[Statement]:
    """Explicit Denies: hold even when another policy attached to the role allows more."""
    # An AMI's launch permission cannot be limited to accounts by IAM (ec2:Public is the image's state before the
    # request); with no aws.accounts it is never changed at all (ec2:Attribute; docs/aws.md: unconfirmed whether
    # EC2 sets it for a LaunchPermission structure as for Attribute=launchPermission).
    images = ([{"Sid": "NoImageSharing", "Effect": "Deny", "Action": "ec2:ModifyImageAttribute",
                "Resource": arns.ec2("image/*", owned=False),
                "Condition": {"StringEqualsIgnoreCase": {"ec2:Attribute": "launchPermission"}}}]
              if not s.accounts else [])
    return [*images,
        {"Sid": "NoPublicSnapshots", "Effect": "Deny", "Action": "ec2:ModifySnapshotAttribute",
         "Resource": arns.ec2("snapshot/*", owned=False),
         "Condition": {"ForAnyValue:StringEquals": {"ec2:Add/group": "all"}}},
        {"Sid": "KeepBlockPublicAccess", "Effect": "Deny",
         "Action": ["ec2:DisableImageBlockPublicAccess", "ec2:DisableSnapshotBlockPublicAccess"], "Resource": "*"},
        # A group on $Latest or $Default launches a later template version unchecked (Auto Scaling checks the
        # launch permissions only when the group is given a version): a group is only ever given a number.
        {"Sid": "PinnedVersionsOnly", "Effect": "Deny", "Action": "autoscaling:UpdateAutoScalingGroup",
         "Resource": "*", "Condition": {"Bool": {"autoscaling:LaunchTemplateVersionSpecified": "false"}}},
        {"Sid": "RecordsWrittenOnce", "Effect": "Deny", "Action": "ssm:PutParameter",
         "Resource": arns.service("ssm", f"parameter/{VERIFICATIONS}/*"),
         "Condition": {"StringEquals": {"ssm:Overwrite": "true"}}},
    ]
