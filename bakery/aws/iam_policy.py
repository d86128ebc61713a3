"""The CI role's least-privilege IAM policy, rendered from the `aws:` settings of one project.

A static policy cannot name this project's bucket, roles, subnet, accounts and
log groups, so it ends up with wildcards that let the role pass any role to an
instance, image any instance or read every bucket. This renders the policy from
AwsSettings instead: every statement scoped to what bakery (and Packer 1.6.6
driven by it) does, and explicit Denies for what must never happen even if
another policy of the role allows it. docs/aws-iam-policy.json is this
rendering for docs/aws-iam-policy.example.yml (a test keeps them equal), and
tests/aws/test_policy_replay.py replays every flow's calls against it.

The Image Builder build instance's role gets its own rendering
(render_instance_role_policy; docs/aws-imagebuilder-instance-role.json), from
the same settings. Pure: no AWS call; the account id and partition are arguments.
"""

from __future__ import annotations

import json
from typing import Any

from bakery.aws import tags
from bakery.aws.settings import ACCOUNT_RE, AwsSettings
from bakery.errors import ConfigError

Statement = dict[str, Any]

MANAGED = {f"aws:ResourceTag/{tags.MANAGED}": "true"}
OWN_TAG_KEYS = {"aws:TagKeys": ["bakery:*", "Name"]}
VERIFICATIONS = "bakery/verifications"  # SSM parameters written once per version (bakery.aws.verification_record)
BUNDLES = "bundles"  # the Image Builder bundles' key prefix (bakery.aws.bundle)
IMAGE_BUILDER_LOGS = "imagebuilder-logs"  # Image Builder's build logs (bakery.aws.imagebuilder.resources)
# IAM's size limits, in characters without white space (IAM User Guide, "IAM and AWS STS quotas")
MANAGED_POLICY_LIMIT = 6144  # one managed policy
INLINE_POLICIES_LIMIT = 10240  # all inline policies of one role together
PACKER_KEY_PAIRS = "packer_*"  # Packer 1.6.6 names its temporary key pair packer_<uuid> and cannot tag it
IMAGE_BUILDER_NAMES = "bakery-*"  # bakery.aws.imagebuilder.resources.resource_name
PASS_TO_BUILD = ["ec2.amazonaws.com", "imagebuilder.amazonaws.com"]
PASS_TO_FLEET = ["ec2.amazonaws.com", "autoscaling.amazonaws.com"]

READ_ONLY = [
    "ec2:DescribeImages", "ec2:DescribeSnapshots", "ec2:DescribeInstances", "ec2:DescribeInstanceStatus",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeLaunchTemplateVersions", "ec2:DescribeRegions", "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets",
    "ec2:DescribeVpcs", "ec2:DescribeVolumes", "ec2:DescribeTags",
    "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeInstanceRefreshes",
    "autoscaling:DescribeLaunchConfigurations", "cloudwatch:GetMetricData", "cloudwatch:ListMetrics",
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


def render_policy(settings: AwsSettings, account: str, partition: str = "aws") -> dict[str, Any]:
    """The policy document for the role that runs bake.py with these settings."""
    if not ACCOUNT_RE.match(account):
        raise ConfigError(f"--account '{account}' is not a 12-digit AWS account id")
    if settings.instance_profile and not settings.build_role:
        raise ConfigError("bakery.yml: aws.build_role is empty: name the IAM role inside aws.instance_profile "
                          f"'{settings.instance_profile}', the one role bake.py may pass to a build instance")
    arns = Arns(account, partition)
    statements = [
        {"Sid": "Read", "Effect": "Allow", "Action": READ_ONLY, "Resource": "*"},
        {"Sid": "ImageBuilderLists", "Effect": "Allow", "Action": IMAGE_BUILDER_LISTS,
         "Resource": "*"},
        {"Sid": "ReadSharing", "Effect": "Allow",
         "Action": ["ec2:DescribeImageAttribute", "ec2:DescribeSnapshotAttribute"],
         "Resource": arns.images_and_snapshots()},
        *_build_instance(settings, arns),
        *_images(settings, arns),
        *_tagging(arns),
        *_fleet(arns),
        *_roles(settings, arns),
        *_parameters(arns),
        *_image_builder(arns),
        *_storage_and_logs(settings, arns),
        *_never(arns),
    ]
    return {"Version": "2012-10-17", "Statement": statements}


def _build_instance(s: AwsSettings, arns: Arns) -> list[Statement]:
    """Packer's build instance: launched tagged, with the named profile, in the named subnet, stopped only if tagged."""
    instance_condition: dict[str, Any] = {"StringEquals": {f"aws:RequestTag/{tags.MANAGED}": "true"}}
    if s.instance_profile:
        instance_condition["ArnEqualsIfExists"] = {
            "ec2:InstanceProfile": arns.iam(f"instance-profile/{s.instance_profile}")}
    groups = [arns.ec2(f"security-group/{g}") for g in s.security_group_ids] or [arns.ec2("security-group/*")]
    statements: list[Statement] = [
        {"Sid": "LaunchTagged", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": arns.ec2("instance/*"), "Condition": instance_condition},
        {"Sid": "BuildVolumesEncrypted", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": arns.ec2("volume/*"), "Condition": {"Bool": {"ec2:Encrypted": "true"}}},
        {"Sid": "BuildInstancesNetwork", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": [arns.ec2("image/*", owned=False), arns.ec2("network-interface/*"),
                      arns.ec2(f"subnet/{s.subnet_id}" if s.subnet_id else "subnet/*"), *groups,
                      arns.ec2(f"key-pair/{PACKER_KEY_PAIRS}")]},
        {"Sid": "PackersTemporaryKeyPair", "Effect": "Allow", "Action": ["ec2:CreateKeyPair", "ec2:DeleteKeyPair"],
         "Resource": arns.ec2(f"key-pair/{PACKER_KEY_PAIRS}")},
        # CreateImage too: only bakery's build instances are imaged, never a production disk
        {"Sid": "OnlyBuildInstances", "Effect": "Allow",
         "Action": ["ec2:StopInstances", "ec2:TerminateInstances", "ec2:CreateImage"],
         "Resource": arns.ec2("instance/*"), "Condition": {"StringEquals": MANAGED}},
    ]
    if not s.security_group_ids:  # Packer 1.6.6 then makes a temporary group, untagged: nothing to scope it by
        statements.append({"Sid": "PackersTemporarySecurityGroup", "Effect": "Allow",
                           "Action": ["ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress",
                                      "ec2:DeleteSecurityGroup"],
                           "Resource": [arns.ec2("security-group/*"), arns.ec2("vpc/*")]})
    return statements


def _images(s: AwsSettings, arns: Arns) -> list[Statement]:
    """AMIs: made only from bakery's build instances, copied, changed and removed only when bakery's, shared only
    with aws.accounts (snapshots: IAM has no such condition key for AMI launch permissions)."""
    statements: list[Statement] = [
        # the new AMI and snapshots (CreateImage's instance is scoped above; Packer 1.6.6's copies carry no tags)
        {"Sid": "NewImagesAndCopies", "Effect": "Allow", "Action": ["ec2:CreateImage", "ec2:CopyImage"],
         "Resource": arns.images_and_snapshots()},
        {"Sid": "ChangeAndDeleteOwnImages", "Effect": "Allow",
         "Action": ["ec2:ModifyImageAttribute", "ec2:DeregisterImage", "ec2:DeleteSnapshot"],
         "Resource": arns.images_and_snapshots(), "Condition": {"StringEquals": MANAGED}},
    ]
    if s.region_kms_key_ids:
        # Per-region keys turn Packer 1.6.6's encrypt_boot on: it images into an untagged intermediate AMI (random
        # name), copies that, and removes it itself. An AMI or snapshot without a bakery:managed tag: what
        # ClaimUnclaimed lets the role claim and then delete anyway, so this adds no reach; bakery:managed=false
        # still protects.
        statements.append(
            {"Sid": "PackersIntermediateAmi", "Effect": "Allow",
             "Action": ["ec2:DeregisterImage", "ec2:DeleteSnapshot"], "Resource": arns.images_and_snapshots(),
             "Condition": {"Null": {f"aws:ResourceTag/{tags.MANAGED}": "true"}}})
    if s.accounts:
        statements.append(
            {"Sid": "ShareSnapshots", "Effect": "Allow",
             "Action": "ec2:ModifySnapshotAttribute", "Resource": arns.ec2("snapshot/*", owned=False),
             "Condition": {"StringEquals": MANAGED,
                           "ForAllValues:StringEquals": {"ec2:Add/userId": sorted(s.accounts)}}})
    return statements


def _tagging(arns: Arns) -> list[Statement]:
    """CreateTags: at creation, on what is bakery's already, and to claim an AMI or snapshot no one has claimed."""
    created = [arns.ec2("instance/*"), arns.ec2("volume/*"), arns.ec2("network-interface/*"),
               *arns.images_and_snapshots()]
    return [
        {"Sid": "TagOnCreate", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": created,
         "Condition": {"StringEquals": {"ec2:CreateAction": ["RunInstances", "CopyImage"]},
                       "ForAllValues:StringLike": OWN_TAG_KEYS}},
        {"Sid": "RetagOwn", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": [arns.ec2("instance/*"), *arns.images_and_snapshots()],
         "Condition": {"StringEquals": MANAGED, "ForAllValues:StringLike": OWN_TAG_KEYS}},
        # Packer 1.6.6 tags its AMI only after CreateImage (which carries no tags), and a failed run's leftover is
        # claimed by its name: an AMI or snapshot without any bakery:managed tag may be marked bakery's.
        {"Sid": "ClaimUnclaimed", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": arns.images_and_snapshots(),
         "Condition": {"StringEquals": {f"aws:RequestTag/{tags.MANAGED}": "true"},
                       "ForAllValues:StringLike": OWN_TAG_KEYS,
                       "Null": {f"aws:ResourceTag/{tags.MANAGED}": "true"}}},
    ]


def _fleet(arns: Arns) -> list[Statement]:
    """Deploys: new versions of bakery's launch templates, refreshes of bakery's groups, launches through both."""
    group = arns.service("autoscaling", "autoScalingGroup:*:autoScalingGroupName/*")
    launched = [arns.ec2("instance/*"), arns.ec2("volume/*"), arns.ec2("network-interface/*"),
                arns.ec2("subnet/*"), arns.ec2("security-group/*"), arns.ec2("image/*", owned=False)]
    return [
        # Auto Scaling checks ec2:RunInstances on the launch template when a group is pointed at a version of it.
        {"Sid": "OnlyBakerysLaunchTemplates", "Effect": "Allow",
         "Action": ["ec2:CreateLaunchTemplateVersion", "ec2:RunInstances"], "Resource": arns.ec2("launch-template/*"),
         "Condition": {"StringEquals": MANAGED}},
        {"Sid": "RefreshOwnGroups", "Effect": "Allow",
         "Action": ["autoscaling:UpdateAutoScalingGroup", "autoscaling:StartInstanceRefresh",
                    "autoscaling:CancelInstanceRefresh", "autoscaling:RollbackInstanceRefresh"],
         "Resource": group, "Condition": {"StringEquals": MANAGED}},
        {"Sid": "LaunchTemplateResources", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": launched, "Condition": {"Bool": {"ec2:IsLaunchTemplateResource": "true"}}},
    ]


def _roles(s: AwsSettings, arns: Arns) -> list[Statement]:
    """PassRole only for the named roles, only to EC2 (and Image Builder for the build role); the build profile read."""
    statements: list[Statement] = []
    if s.build_role:
        statements.append(
            {"Sid": "PassBuildRole", "Effect": "Allow", "Action": "iam:PassRole",
             "Resource": arns.iam(f"role/{s.build_role}"),
             "Condition": {"StringEquals": {"iam:PassedToService": PASS_TO_BUILD}}})
        statements.append(
            {"Sid": "CheckBuildProfile", "Effect": "Allow",
             "Action": ["iam:GetInstanceProfile", "iam:ListAttachedRolePolicies"],
             "Resource": [arns.iam(f"instance-profile/{s.instance_profile}"), arns.iam(f"role/{s.build_role}")]})
    if s.instance_roles:
        statements.append(
            {"Sid": "PassInstanceRoles", "Effect": "Allow", "Action": "iam:PassRole",
             "Resource": [arns.iam(f"role/{role}") for role in sorted(s.instance_roles)],
             "Condition": {"StringEquals": {"iam:PassedToService": PASS_TO_FLEET}}})
    if s.builder == "imagebuilder" or s.instance_profile:
        statements.append(
            {"Sid": "ImageBuilderServiceLinkedRole", "Effect": "Allow", "Action": "iam:CreateServiceLinkedRole",
             "Resource": arns.iam("role/aws-service-role/imagebuilder.amazonaws.com/*"),
             "Condition": {"StringEquals": {"iam:AWSServiceName": "imagebuilder.amazonaws.com"}}})
    return statements


def _parameters(arns: Arns) -> list[Statement]:
    """Release parameters under /bakery; verification records written once, never overwritten."""
    return [
        {"Sid": "BakeryParameters", "Effect": "Allow",
         "Action": ["ssm:PutParameter", "ssm:GetParameter", "ssm:GetParameters", "ssm:GetParameterHistory",
                    "ssm:GetParametersByPath"],
         "Resource": [arns.service("ssm", "parameter/bakery"), arns.service("ssm", "parameter/bakery/*")]},
        {"Sid": "PublicBaseAmiParameters", "Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": f"arn:{arns.partition}:ssm:*:*:parameter/aws/service/*"},  # public: no account in the ARN
        {"Sid": "RecordsWrittenOnce", "Effect": "Deny", "Action": "ssm:PutParameter",
         "Resource": arns.service("ssm", f"parameter/{VERIFICATIONS}/*"),
         "Condition": {"StringEquals": {"ssm:Overwrite": "true"}}},
    ]


def _image_builder(arns: Arns) -> list[Statement]:
    """Image Builder: create anything named bakery-*, change or build only bakery's (tagged) resources."""
    def ib(resource: str) -> str:
        return arns.service("imagebuilder", resource)

    configurations = [ib(f"infrastructure-configuration/{IMAGE_BUILDER_NAMES}"),
                      ib(f"distribution-configuration/{IMAGE_BUILDER_NAMES}")]
    named = [ib(f"component/{IMAGE_BUILDER_NAMES}/*"), ib(f"image-recipe/{IMAGE_BUILDER_NAMES}/*"),
             *configurations, ib(f"image/{IMAGE_BUILDER_NAMES}/*")]
    return [
        {"Sid": "ImageBuilderBakeryNamed", "Effect": "Allow",
         "Action": ["imagebuilder:CreateComponent", "imagebuilder:CreateImageRecipe",
                    "imagebuilder:CreateInfrastructureConfiguration", "imagebuilder:CreateDistributionConfiguration",
                    "imagebuilder:TagResource", "imagebuilder:GetComponent", "imagebuilder:GetImageRecipe",
                    "imagebuilder:GetInfrastructureConfiguration", "imagebuilder:GetDistributionConfiguration",
                    "imagebuilder:GetImage", "imagebuilder:CancelImageCreation"],
         "Resource": named},
        {"Sid": "ImageBuilderChangeOwn", "Effect": "Allow",
         "Action": ["imagebuilder:UpdateInfrastructureConfiguration", "imagebuilder:UpdateDistributionConfiguration"],
         "Resource": configurations, "Condition": {"StringEquals": MANAGED}},
        # CreateImage's one resource is the new image: only its name and the request's tags can scope it.
        {"Sid": "ImageBuilderBuildTagged", "Effect": "Allow", "Action": "imagebuilder:CreateImage",
         "Resource": named[-1], "Condition": {"StringEquals": {f"aws:RequestTag/{tags.MANAGED}": "true"}}},
    ]


def _storage_and_logs(s: AwsSettings, arns: Arns) -> list[Statement]:
    """S3 only in the artifacts bucket's bundles/, logs only of the configured groups, KMS only through EC2."""
    statements: list[Statement] = [
        {"Sid": "KmsThroughEc2", "Effect": "Allow",
         "Action": ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:Encrypt",
                    "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom", "kms:ReEncryptTo"],
         "Resource": arns.service("kms", "key/*"),
         "Condition": {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}},
    ]
    if s.artifacts_bucket:
        bucket = f"arn:{arns.partition}:s3:::{s.artifacts_bucket}"
        statements += [
            {"Sid": "Bundles", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject"], "Resource": f"{bucket}/{BUNDLES}/*"},
            # Without ListBucket S3 answers a HeadObject of a missing bundle 403, not 404; a HeadObject carries no
            # s3:prefix, hence IfExists (an unprefixed listing of this one bucket's key names is allowed too).
            {"Sid": "ListBundles", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket,
             "Condition": {"StringLikeIfExists": {"s3:prefix": f"{BUNDLES}/*"}}},
        ]
    if s.log_groups:
        groups = [arns.service("logs", f"log-group:{g}") for g in sorted(s.log_groups)]
        groups += [f"{g}:*" for g in groups if not g.endswith("*")]  # the log-stream form of an exact name too
        statements.append({"Sid": "InstanceLogs", "Effect": "Allow",
                           "Action": "logs:FilterLogEvents", "Resource": groups})
    return statements


def _never(arns: Arns) -> list[Statement]:
    """Explicit Denies: hold even when another policy attached to the role allows more."""
    return [
        {"Sid": "NoPublicSnapshots", "Effect": "Deny", "Action": "ec2:ModifySnapshotAttribute",
         "Resource": arns.ec2("snapshot/*", owned=False),
         "Condition": {"ForAnyValue:StringEquals": {"ec2:Add/group": "all"}}},
        # ModifyImageAttribute has no condition key for the accounts or groups added (ec2:Add/* exist only for
        # snapshots); ec2:Public says whether an image has public launch permission (docs/aws.md: unconfirmed whether
        # it sees the result of the request). Block public access for AMIs is the account-level guard.
        {"Sid": "NoPublicImages", "Effect": "Deny", "Action": "ec2:ModifyImageAttribute",
         "Resource": arns.ec2("image/*", owned=False), "Condition": {"Bool": {"ec2:Public": "true"}}},
        {"Sid": "KeepBlockPublicAccess", "Effect": "Deny",
         "Action": ["ec2:DisableImageBlockPublicAccess", "ec2:DisableSnapshotBlockPublicAccess"], "Resource": "*"},
    ]


def render_instance_role_policy(settings: AwsSettings, partition: str = "aws") -> dict[str, Any]:
    """The policy for the role in aws.instance_profile that Image Builder's build and test instances need besides
    the AWS managed AmazonSSMManagedInstanceCore and EC2InstanceProfileForImageBuilder: read the bundles, write the
    build logs (bakery.aws.imagebuilder.instance_profile checks what IAM lets it check)."""
    if not settings.artifacts_bucket:
        raise ConfigError("bakery.yml: aws.artifacts_bucket is empty; the Image Builder instance role reads the "
                          "bundles from it and writes its logs there: set it")
    bucket = f"arn:{partition}:s3:::{settings.artifacts_bucket}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "BuildAndTestPhasesDownloadTheBakeryBundle", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": f"{bucket}/{BUNDLES}/*"},
        {"Sid": "ImageBuilderUploadsTheBuildLogs", "Effect": "Allow", "Action": "s3:PutObject",
         "Resource": f"{bucket}/{IMAGE_BUILDER_LOGS}/*"},
    ]}


def policy_size(policy: dict[str, Any]) -> int:
    """The policy's length as IAM counts it against its limits: without white space (none is inside bakery's values)."""
    return len(json.dumps(policy, separators=(",", ":")))


def split_policy(policy: dict[str, Any], limit: int = MANAGED_POLICY_LIMIT) -> list[dict[str, Any]]:
    """The statements, in order, in as few policies of at most `limit` characters as fit them (for managed
    policies: a role may have several; an explicit Deny holds whichever of them it is in)."""
    parts: list[list[Statement]] = [[]]
    for statement in policy["Statement"]:
        if parts[-1] and policy_size({**policy, "Statement": [*parts[-1], statement]}) > limit:
            parts.append([])
        parts[-1].append(statement)
    return [{**policy, "Statement": statements} for statements in parts]


def size_note(policy: dict[str, Any]) -> str:
    """'' when the policy fits a managed policy; else one line saying how to attach it."""
    size = policy_size(policy)
    if size <= MANAGED_POLICY_LIMIT:
        return ""
    parts = len(split_policy(policy))
    where = (f"attach it inline (aws iam put-role-policy: {INLINE_POLICIES_LIMIT:,} for all of a role's inline "
             "policies) or as " if size <= INLINE_POLICIES_LIMIT else "attach it as ")
    return (f"the policy has {size:,} characters without white space, over the {MANAGED_POLICY_LIMIT:,} of a "
            f"managed policy: {where}{parts} managed policies, printed by --part 1 to --part {parts}")
