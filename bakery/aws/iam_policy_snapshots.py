"""The IAM statements of the EBS direct APIs (bakery.aws.ebs_direct) and of registering their snapshots as AMIs, and
the tag conditions every statement of bakery.aws.iam_policy shares.

Sources, the Service Authorization Reference for Amazon Elastic Block Store and Amazon EC2
(https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonelasticblockstore.html,
https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html) and "Control access to EBS
direct APIs using IAM" (https://docs.aws.amazon.com/ebs/latest/userguide/ebsapi-permissions.html):
- ebs:StartSnapshot's resource is the new snapshot (arn:aws:ec2:REGION::snapshot/*, no account); its keys are
  aws:RequestTag, aws:TagKeys, ebs:Description, ebs:VolumeSize and ebs:ParentSnapshot, the parent's id only: IAM
  never sees a parent's tags. Its Tags are authorized as ec2:CreateTags too (the reference's operations table;
  the user guide: "This policy also ensures that the user has access to create tags"), which iam_policy's
  ClaimUnclaimed grants (the new snapshot has no bakery:managed tag yet; whether EBS sets ec2:CreateAction for it
  is undocumented, so no statement relies on it).
- ebs:PutSnapshotBlock, CompleteSnapshot, ListSnapshotBlocks, ListChangedBlocks and GetSnapshotBlock know the
  snapshot and its tags (aws:ResourceTag) only.
- ec2:RegisterImage authorizes the new image (aws:RequestTag, aws:TagKeys; its TagSpecifications, ResourceType image
  only, are the dependent ec2:CreateTags with ec2:CreateAction RegisterImage: ClaimUnclaimed again) and each snapshot
  its block device mappings name (aws:ResourceTag).
- KMS: an encrypted snapshot needs kms:Encrypt, Decrypt, GenerateDataKey, GenerateDataKeyWithoutPlaintext,
  ReEncrypt*, CreateGrant and DescribeKey on its key (the user guide's KMS policy), a parent's key too. Which service
  name EBS direct presents as kms:ViaService is undocumented: its endpoint's (ebs.REGION.amazonaws.com) or EC2's, so
  both are allowed (docs/aws.md, unconfirmed).
"""

from __future__ import annotations

from typing import Any

from bakery.aws import tags

MANAGED = {f"aws:ResourceTag/{tags.MANAGED}": "true"}
OWN_TAG_KEYS = {"aws:TagKeys": ["bakery:*", "Name"]}
REQUEST_TAGGED = {"StringEquals": {f"aws:RequestTag/{tags.MANAGED}": "true"}, "ForAllValues:StringLike": OWN_TAG_KEYS}
KMS_VIA = ["ec2.*.amazonaws.com", "ebs.*.amazonaws.com"]


def disk_statements(images: str, snapshots: str) -> list[dict[str, Any]]:
    """The disk builder (aws.builder disk): start snapshots only tagged as bakery's with bakery's keys, write and
    complete only bakery's, register AMIs only tagged as bakery's and only from bakery's snapshots. Deleting what a
    failed run left is iam_policy's ChangeAndDeleteOwnImages."""
    return [
        {"Sid": "StartTaggedSnapshots", "Effect": "Allow", "Action": "ebs:StartSnapshot", "Resource": snapshots,
         "Condition": REQUEST_TAGGED},
        {"Sid": "WriteOwnSnapshots", "Effect": "Allow", "Action": ["ebs:PutSnapshotBlock", "ebs:CompleteSnapshot"],
         "Resource": snapshots, "Condition": {"StringEquals": MANAGED}},
        {"Sid": "RegisterTaggedImages", "Effect": "Allow", "Action": "ec2:RegisterImage", "Resource": images,
         "Condition": REQUEST_TAGGED},
        {"Sid": "RegisterFromOwnSnapshots", "Effect": "Allow", "Action": "ec2:RegisterImage", "Resource": snapshots,
         "Condition": {"StringEquals": MANAGED}},
    ]


def read_back_statements(snapshots: str) -> list[dict[str, Any]]:
    """`verify --target aws` reads an AMI's root snapshot back, whoever built it: only snapshots tagged
    bakery:managed=true (Packer's and Image Builder's the bake tags, the disk builder's are tagged at StartSnapshot).
    Its record goes under parameter/bakery/verifications/* (iam_policy's VerificationRecords, written once)."""
    return [{"Sid": "ReadBackOwnSnapshots", "Effect": "Allow",
             "Action": ["ebs:ListSnapshotBlocks", "ebs:GetSnapshotBlock"], "Resource": snapshots,
             "Condition": {"StringEquals": MANAGED}}]
