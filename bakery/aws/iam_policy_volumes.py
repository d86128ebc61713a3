"""The IAM statements of an aws environment's data volumes (bakery.fleets.aws_volumes, bakery.aws.lifecycle_hooks).

IAM authorizes AttachVolume and DetachVolume once for the volume and once for the instance, each against its own
tags, and cannot compare the two: only a role scoped to environments (`iam-policy --env qa`) keeps a volume of one
environment off an instance of another. Within that scope everything is bakery's by its tags:
- the groups' lifecycle hooks are put and completed on bakery's groups only (bakery.aws.iam_policy's
  RefreshOwnGroups), a volume's tags at CreateVolume are its TagLaunches;
- CreateVolume only encrypted gp3, tagged at creation as bakery's (of the environment) with bakery's keys; never from
  a snapshot (its snapshot resource is not granted), and never DeleteVolume;
- the hand-over mark (bakery:handover) is the one tag set or removed afterwards; DeleteTags must name its keys (with
  none it removes every tag, bakery:managed included);
- Attach, Detach and StopInstances (the hand-over stops the old instance) only on the environment's volumes and
  instances, whose bakery:environment tag nothing lets the role change after they were made.
A volume's and an instance's statement are one to keep the policy small (IAM's size limits): the role may attach a
root volume of its environment's stopped instance too.
KMS: EBS encrypts with the environment's key on the caller's behalf (kms:ViaService ec2); a building role has that
already (KmsThroughEc2AndEbs). Pure: no AWS call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bakery.aws import tags
from bakery.aws.iam_policy_snapshots import MANAGED, OWN_TAG_KEYS

Statement = dict[str, Any]
HOOK_ACTIONS = ["autoscaling:PutLifecycleHook", "autoscaling:CompleteLifecycleAction"]
VOLUME_TYPE = "gp3"  # bakery.fleets.aws_volumes creates nothing else


def scope(envs: Sequence[str], data_volumes: Sequence[str] | None) -> list[str] | None:
    """The environments the statements are for: [] every environment, None none. data_volumes: the environments with
    a data volume (None: not known, as for docs/aws-iam-policy.json: every one of `envs`)."""
    if data_volumes is None:
        return sorted(envs)
    chosen = sorted(set(data_volumes) & set(envs)) if envs else sorted(set(data_volumes))
    return chosen or None


def volume_statements(partition: str, account: str, envs: list[str] | None, *, build: bool) -> list[Statement]:
    """The data-volume statements for environments `envs` ([] every one, None none: nothing)."""
    if envs is None:
        return []
    owned = {**MANAGED, f"aws:ResourceTag/{tags.ENVIRONMENT}": envs} if envs else MANAGED
    created = {f"aws:RequestTag/{tags.MANAGED}": "true", "ec2:VolumeType": VOLUME_TYPE,
               **({f"aws:RequestTag/{tags.ENVIRONMENT}": envs} if envs else {})}
    volumes, instances = f"arn:{partition}:ec2:*:*:volume/*", f"arn:{partition}:ec2:*:*:instance/*"
    statements: list[Statement] = [
        {"Sid": "NewDataVolumes", "Effect": "Allow", "Action": "ec2:CreateVolume", "Resource": volumes,
         "Condition": {"StringEquals": created, "Bool": {"ec2:Encrypted": "true"},
                       "ForAllValues:StringLike": OWN_TAG_KEYS}},
        # tags: only the hand-over mark; Attach, Detach and StopInstances carry no aws:TagKeys
        {"Sid": "HandOver", "Effect": "Allow",
         "Action": ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:StopInstances", "ec2:CreateTags", "ec2:DeleteTags"],
         "Resource": [volumes, instances],
         "Condition": {"StringEquals": owned, "ForAllValues:StringEquals": {"aws:TagKeys": tags.HANDOVER}}},
        {"Sid": "DeleteTagsByKey", "Effect": "Deny", "Action": "ec2:DeleteTags", "Resource": "*",
         "Condition": {"Null": {"aws:TagKeys": "true"}}},
    ]
    if not build:  # a building role's KmsThroughEc2AndEbs covers these
        statements.append(
            {"Sid": "KmsThroughEc2", "Effect": "Allow",
             "Action": ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext"],
             "Resource": f"arn:{partition}:kms:*:{account}:key/*",
             "Condition": {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}})
    return statements
