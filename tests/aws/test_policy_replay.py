"""Replay every flow's AWS calls against docs/aws-iam-policy.json: no call of bakery (or of Packer 1.6.6 driven by it)
may be denied, and every escalation path of the role must be.

Each call is what AWS authorizes: the IAM action, the resource ARN (one call per resource of a multi-resource action
such as RunInstances, as EC2 authorizes each), the resource's tags at that moment (aws:ResourceTag/...), the
request's tags (aws:RequestTag/..., aws:TagKeys) and the other context keys the request carries. The flows follow the
code: bakery/builders/packer*.py and packer/aws.pkr.hcl run through Packer 1.6.6's amazon-ebs steps in their order
(StepPreValidate, StepSourceAMIInfo, StepNetworkInfo, StepKeyPair, StepSecurityGroup, StepIamInstanceProfile,
StepRunSourceInstance, StepStopEBSBackedInstance, stepCreateAMI (home region only: no encrypt_boot, no
ami_regions), StepModifyAMIAttributes (nothing: the template sets no description or users), StepCreateTags, then
the clean-ups in reverse), then bakery after Packer (attributes, its own tagged copies through
bakery/aws/distribute.py, the record) and its undo (bakery/aws/amis.py claim), bakery/builders/imagebuilder.py with
bakery/aws/imagebuilder/ (against an imagebuilder rendering: the example bakes with Packer), bakery/fleets/aws*.py,
bakery/aws/distribute.py, bakery/gc/aws.py with bakery/gc/aws_leftovers.py, bakery/observe/ and bakery/aws/adopt.py
with the verification record, bakery/builders/disk.py with bakery/aws/ebs_direct.py (the EBS direct APIs, against a
disk rendering), `verify --target aws` (bakery/verify/aws_readback.py, bakery/aws/readback_record.py). Nothing is
shared before distribute, which reads the readback record first. The per-environment roles (`iam-policy --env`,
`--no-build`) are replayed too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import cache

import pytest

from tests.aws.test_docs_aws import iam_action
from tests.conftest import REPO, bake
from tests.iam_evaluator import evaluate

pytestmark = pytest.mark.aws

POLICY = json.loads((REPO / "docs" / "aws-iam-policy.json").read_text(encoding="utf-8"))
ACCOUNT, SHARED, STRANGER = "111122223333", "444455556666", "999988887777"
HOME, OTHER = "eu-west-1", "eu-central-1"
RUN = "20261128T222627Z-build-813933"
VERSION = "20261128.001"
BUCKET = "example-bakery-artifacts"


def ec2(resource: str, region: str = HOME) -> str:
    return f"arn:aws:ec2:{region}:{ACCOUNT}:{resource}"


def image(ami: str, region: str = HOME) -> str:
    return f"arn:aws:ec2:{region}::image/{ami}"


def snapshot(snap: str, region: str = HOME) -> str:
    return f"arn:aws:ec2:{region}::snapshot/{snap}"


def iam(resource: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:{resource}"


def ssm(name: str) -> str:
    return f"arn:aws:ssm:{HOME}:{ACCOUNT}:parameter{name}"


def ib(resource: str) -> str:
    return f"arn:aws:imagebuilder:{HOME}:{ACCOUNT}:{resource}"


GROUP = f"arn:aws:autoscaling:{HOME}:{ACCOUNT}:autoScalingGroup:0f1e2d3c-aaaa-bbbb:autoScalingGroupName/"
RUN_TAGS = {"Name": "bakery-build-webapp-813933", "bakery:managed": "true", "bakery:image": "webapp",
            "bakery:version": VERSION, "bakery:run": RUN}
AMI_TAGS = {"Name": f"webapp-{VERSION}", "bakery:managed": "true", "bakery:image": "webapp", "bakery:version": VERSION,
            "bakery:input-digest": "sha256:0123", "bakery:git-commit": "0123456789ab", "bakery:git-message": "x",
            "bakery:git-branch": "main", "bakery:git-dirty": "false", "bakery:build-time": "2026-11-28T22:26:27Z",
            "bakery:base-image": "ami-0debianbase", "bakery:tool-version": "0.1.0", "bakery:roles": "web=sha256:0",
            "bakery:artifacts": "", "bakery:run": RUN}  # bakery/aws/tags.py provenance_tags and the run
VERIFIED = {"bakery:verified": "passed", "bakery:verification": "packer build: 12 passed"}
MANAGED = {"bakery:managed": "true"}
PROFILE = iam("instance-profile/bakery-build")


@dataclass
class Call:
    action: str
    resource: str = "*"
    tags: dict[str, str] = field(default_factory=dict)  # the resource's tags when the call is made
    request_tags: dict[str, str] | None = None  # tags the request sets (tag-on-create or CreateTags)
    context: dict = field(default_factory=dict)  # other condition keys of the request

    def keys(self) -> dict:
        """The request's condition keys."""
        context = {f"aws:ResourceTag/{k}": v for k, v in self.tags.items()}
        if self.request_tags is not None:
            context |= {f"aws:RequestTag/{k}": v for k, v in self.request_tags.items()}
            context["aws:TagKeys"] = list(self.request_tags)
        return {**context, **self.context}

    def decide(self, policy: dict = POLICY, *more: dict) -> str:
        return evaluate([policy, *more], self.action, self.resource, self.keys())

    def __str__(self) -> str:
        return f"{self.action} on {self.resource} (tags {self.tags}, request tags {self.request_tags}, {self.context})"


def run_instances(resources: dict[str, dict], request_tags: dict[str, str]) -> list[Call]:
    """RunInstances is authorized per resource it touches; request tags apply to each."""
    return [Call("ec2:RunInstances", arn, request_tags=request_tags, **extra) for arn, extra in resources.items()]


def set_attributes(region: str, ami: str) -> list[Call]:
    """packer_bake._set_attributes, after the AMI is tagged: IMDSv2 and the description; no sharing (distribute
    shares, after the readback record passed)."""
    return [
        Call("ec2:ModifyImageAttribute", image(ami, region), AMI_TAGS, context={"ec2:Attribute": "imdsSupport"}),
        Call("ec2:ModifyImageAttribute", image(ami, region), AMI_TAGS, context={"ec2:Attribute": "description"})]


def share(region: str, ami: str, snap: str) -> list[Call]:
    """distribute.share: launch and create-volume permission for aws.accounts where they lack them."""
    return [
        Call("ec2:DescribeImageAttribute", image(ami, region), AMI_TAGS),
        Call("ec2:DescribeSnapshotAttribute", snapshot(snap, region), AMI_TAGS),
        # LaunchPermission Add: ec2:Attribute as for Attribute=launchPermission (unconfirmed for the structure)
        Call("ec2:ModifyImageAttribute", image(ami, region), AMI_TAGS, context={"ec2:Attribute": "launchPermission"}),
        Call("ec2:ModifySnapshotAttribute", snapshot(snap, region), AMI_TAGS,
             context={"ec2:Add/userId": [SHARED], "ec2:Attribute": "createVolumePermission"}),
    ]


def kms_via_ec2(action: str, region: str, service: str = "ec2") -> Call:
    return Call(action, f"arn:aws:kms:{region}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                context={"kms:ViaService": f"{service}.{region}.amazonaws.com"})


def kms_via_ebs(*actions: str) -> list[Call]:
    """The EBS direct APIs use the snapshot's key on the caller's behalf; which kms:ViaService they present is
    undocumented (bakery/aws/iam_policy_snapshots.py): both EC2's and their endpoint's are replayed."""
    return [kms_via_ec2(action, HOME, service) for action in actions for service in ("ec2", "ebs")]


def reserve(image_name: str = "webapp") -> list[Call]:
    """The catalog reserves a version unless an AMI or a verification record has it (packer_bake._bake)."""
    return [Call("ec2:DescribeImages"), Call("ssm:GetParameter", ssm(f"/bakery/verifications/{image_name}/{VERSION}"))]


def packer_build() -> list[Call]:
    key_pair = ec2("key-pair/packer_5f1a2b3c-0000-1111-2222-333344445555")
    launch = run_instances({
        ec2("instance/*"): {"context": {"ec2:InstanceProfile": PROFILE}},
        ec2("volume/*"): {"context": {"ec2:Encrypted": True}},
        ec2("network-interface/*"): {}, ec2("subnet/subnet-0123456789abcdef0"): {},
        ec2("security-group/sg-0123456789abcdef0"): {}, key_pair: {}, image("ami-0debianbase"): {},
    }, RUN_TAGS)
    new_image = [image("ami-0new"), snapshot("snap-0new")]
    copy = [image("ami-0copy", OTHER), snapshot("snap-0copy", OTHER)]
    copy_tags = {**AMI_TAGS, **VERIFIED}
    return [
        # bakery before Packer: credentials, base AMI, an AMI of the same inputs to reuse?, the version, root device
        Call("sts:GetCallerIdentity"), Call("ssm:GetParameter", f"arn:aws:ssm:{HOME}::parameter/aws/service/debian/"
                                                                 "release/12/latest/amd64"),
        Call("ec2:DescribeImages"), *reserve(), Call("ec2:DescribeImages"),
        Call("ec2:DescribeRegions"),  # Packer: StepPreValidate
        Call("ec2:DescribeSubnets"), Call("ec2:DescribeVpcs"),  # StepNetworkInfo
        Call("ec2:CreateKeyPair", key_pair),  # StepKeyPair: Packer 1.6.6 cannot tag it
        Call("ec2:DescribeSecurityGroups"),  # StepSecurityGroup: the configured groups
        Call("iam:GetInstanceProfile", PROFILE),  # StepIamInstanceProfile validates the profile
        Call("iam:PassRole", iam("role/bakery-build"), context={"iam:PassedToService": "ec2.amazonaws.com"}),
        *launch,
        Call("ec2:CreateTags", ec2("instance/i-0build"), request_tags=RUN_TAGS,
             context={"ec2:CreateAction": "RunInstances"}),
        kms_via_ec2("kms:CreateGrant", HOME), kms_via_ec2("kms:GenerateDataKeyWithoutPlaintext", HOME),
        Call("ec2:DescribeInstances"), Call("ec2:DescribeInstanceStatus"),
        Call("ec2:StopInstances", ec2("instance/i-0build"), RUN_TAGS),  # StepStopEBSBackedInstance
        # stepCreateAMI: the home region's AMI only (no encrypt_boot, no ami_regions), no tags on the request
        Call("ec2:CreateImage", ec2("instance/i-0build"), RUN_TAGS),
        *[Call("ec2:CreateImage", arn) for arn in new_image],
        # StepCreateTags: the AMI and its snapshot with the tags, then the snapshot with snapshot_tags
        *[Call("ec2:CreateTags", arn, request_tags=AMI_TAGS) for arn in new_image],
        Call("ec2:CreateTags", new_image[1], AMI_TAGS, request_tags=AMI_TAGS),
        # the clean-ups, in reverse: the build instance and its key pair
        Call("ec2:TerminateInstances", ec2("instance/i-0build"), RUN_TAGS), Call("ec2:DeleteKeyPair", key_pair),
        # bakery after Packer (packer_bake): the AMI visible and tagged, the build's result tagged for humans, IMDSv2
        # and the description on the tagged AMI; then its copies, tagged at creation with each region's key, waited
        # for, tags they lack, IMDSv2; then the write-once verification record. Nothing is shared: distribute does.
        Call("ec2:DescribeImages"),
        *[Call("ec2:CreateTags", arn, AMI_TAGS, request_tags=VERIFIED) for arn in new_image],
        *set_attributes(HOME, "ami-0new"),
        Call("ec2:CopyImage", new_image[0], AMI_TAGS, request_tags=copy_tags),
        *[Call("ec2:CopyImage", arn, request_tags=copy_tags) for arn in copy],
        *[Call("ec2:CreateTags", arn, request_tags=copy_tags, context={"ec2:CreateAction": "CopyImage"})
          for arn in copy],
        kms_via_ec2("kms:ReEncryptFrom", HOME), kms_via_ec2("kms:ReEncryptTo", OTHER),
        kms_via_ec2("kms:DescribeKey", OTHER),
        Call("ec2:DescribeImages"), Call("ec2:DescribeSnapshots"),
        Call("ec2:CreateTags", copy[1], AMI_TAGS, request_tags=copy_tags),  # tag_missing
        Call("ec2:ModifyImageAttribute", copy[0], copy_tags, context={"ec2:Attribute": "imdsSupport"}),
        Call("ssm:PutParameter", ssm(f"/bakery/verifications/webapp/{VERSION}"), context={"ssm:Overwrite": "false"}),
    ]


def packer_clean_up_of_a_failed_run() -> list[Call]:
    """_undo: what this run registered, by its run tag or by its unique AMI name (Packer died before StepCreateTags:
    no tags at all), claimed (amis.claim: the AMI, then its snapshots looked up) and removed with its snapshots."""
    claim = {"bakery:managed": "true", "bakery:run": RUN}
    untagged = [image("ami-0orphan"), snapshot("snap-0orphan")]
    tagged = [image("ami-0copy", OTHER), snapshot("snap-0copy", OTHER)]  # a copy Packer had tagged already
    return [Call("ec2:DescribeImages"), Call("ec2:DescribeImages"),  # by tag bakery:run, by name
            Call("ec2:DescribeSnapshots"),
            *[Call("ec2:CreateTags", arn, request_tags=claim) for arn in untagged],
            Call("ec2:DescribeImages"), Call("ec2:DeregisterImage", untagged[0], claim),
            Call("ec2:DeleteSnapshot", untagged[1], claim),
            Call("ec2:DescribeImages"), Call("ec2:DescribeImages"), Call("ec2:DescribeSnapshots"),
            Call("ec2:DescribeImages"), Call("ec2:DeregisterImage", tagged[0], AMI_TAGS),
            Call("ec2:DeleteSnapshot", tagged[1], AMI_TAGS)]


def imagebuilder_build() -> list[Call]:
    config_tags = {"bakery:managed": "true", "bakery:image": "webapp"}
    infra, dist = ib("infrastructure-configuration/bakery-webapp"), ib("distribution-configuration/bakery-webapp")
    new_image = ib("image/bakery-webapp/20261128.1.0/1")
    bundle = f"arn:aws:s3:::{BUCKET}/bundles/webapp/0123abcd.tar.gz"
    return [
        Call("sts:GetCallerIdentity"), Call("ssm:GetParameter", f"arn:aws:ssm:{HOME}::parameter/aws/service/debian/"
                                                                 "release/12/latest/amd64"),
        Call("ec2:DescribeImages"),  # an AMI of the same inputs to reuse?
        # the build instance's profile, before anything is uploaded or created (imagebuilder/instance_profile.py)
        Call("iam:GetInstanceProfile", PROFILE), Call("iam:ListAttachedRolePolicies", iam("role/bakery-build")),
        # HeadObject (GetObject; ListBucket makes a missing key 404), then the upload
        Call("s3:GetObject", bundle), Call("s3:ListBucket", f"arn:aws:s3:::{BUCKET}"), Call("s3:PutObject", bundle),
        Call("ec2:DescribeImages"), Call("ec2:DescribeImages"),  # root device; the version reserved
        Call("imagebuilder:ListComponents"), Call("imagebuilder:ListComponents"),  # every version; DEPRECATED ones
        Call("imagebuilder:CreateComponent", ib("component/bakery-webapp/1.0.3"), request_tags=config_tags),
        Call("imagebuilder:TagResource", ib("component/bakery-webapp/1.0.3"), request_tags=config_tags),
        Call("imagebuilder:ListImageRecipes"),
        Call("imagebuilder:CreateImageRecipe", ib("image-recipe/bakery-webapp/20261128.1.0"),
             request_tags=config_tags),
        Call("imagebuilder:GetComponent", ib("component/bakery-webapp/1.0.3/1")),
        Call("imagebuilder:ListInfrastructureConfigurations"),
        Call("imagebuilder:UpdateInfrastructureConfiguration", infra, config_tags),
        Call("imagebuilder:CreateInfrastructureConfiguration", infra, request_tags=config_tags),
        Call("iam:PassRole", iam("role/bakery-build"), context={"iam:PassedToService": "imagebuilder.amazonaws.com"}),
        Call("imagebuilder:ListDistributionConfigurations"),
        # no condition keys at all (the Service Authorization Reference): its resource's tags are not in the context
        Call("imagebuilder:UpdateDistributionConfiguration", dist),
        Call("imagebuilder:CreateDistributionConfiguration", dist, request_tags=config_tags),
        Call("imagebuilder:CreateImage", new_image,
             request_tags={"bakery:managed": "true", "bakery:image": "webapp", "bakery:version": VERSION}),
        Call("iam:CreateServiceLinkedRole",
             iam("role/aws-service-role/imagebuilder.amazonaws.com/AWSServiceRoleForImageBuilder"),
             context={"iam:AWSServiceName": "imagebuilder.amazonaws.com"}),
        Call("imagebuilder:GetImageRecipe", ib("image-recipe/bakery-webapp/20261128.1.0")),
        Call("imagebuilder:GetInfrastructureConfiguration", infra),
        Call("imagebuilder:GetDistributionConfiguration", dist),
        Call("imagebuilder:GetImage", new_image),
        Call("imagebuilder:CancelImageCreation", new_image),  # Ctrl-C or a timeout
        # the distribution tagged the AMIs (amiTags); bakery tags them and their (untagged) snapshots afterwards,
        # in one call per region
        *[call for region in (HOME, OTHER) for call in (
            Call("ec2:DescribeImages"),
            Call("ec2:CreateTags", image("ami-0ib", region), AMI_TAGS, request_tags={**AMI_TAGS, **VERIFIED}),
            Call("ec2:CreateTags", snapshot("snap-0ib", region), request_tags={**AMI_TAGS, **VERIFIED}))],
        Call("ssm:PutParameter", ssm(f"/bakery/verifications/webapp/{VERSION}"), context={"ssm:Overwrite": "false"}),
    ]


def owned(env: str) -> dict[str, str]:
    """The tags docs/cloudformation/environment.yaml puts on an environment's group and launch template."""
    return {"bakery:managed": "true", "bakery:environment": env}


PINNED = {"autoscaling:LaunchTemplateVersionSpecified": True}  # a version number, never $Latest/$Default


def launch_check(env: str, ami: str) -> list[Call]:
    """What Auto Scaling checks whenever a request gives the group a launch template version (UpdateAutoScalingGroup
    naming one, an instance refresh's desired configuration): ec2:RunInstances on the template and what it names,
    iam:PassRole for the role of its instance profile, ec2:CreateTags for its tag specifications (EC2 Auto Scaling
    User Guide: launch template support; API permissions). The subnets are the group's (VPCZoneIdentifier), not the
    template's; the template names a key pair; its tag specifications (copied by launch_data) carry keys of the
    template's owner, such as team."""
    template = ec2(f"launch-template/lt-0{env}")
    from_template = {"ec2:IsLaunchTemplateResource": True, "ec2:LaunchTemplate": template}
    launched = {arn: {"context": from_template} for arn in (
        ec2("instance/*"), ec2("volume/*"), ec2("network-interface/*"), ec2("security-group/sg-0app"),
        ec2("key-pair/ops"), image(ami))}
    launched[ec2("subnet/subnet-0app")] = {"context": {"ec2:IsLaunchTemplateResource": False,
                                                       "ec2:LaunchTemplate": template}}
    instance_tags = {"bakery:environment": env, "bakery:image": "webapp", "bakery:version": VERSION, "team": "web"}
    return [Call("ec2:RunInstances", template, owned(env), context=from_template),
            *run_instances(launched, instance_tags),
            Call("iam:PassRole", iam(f"role/bakery-{env}-instance"),
                 context={"iam:PassedToService": "ec2.amazonaws.com"}),
            Call("ec2:CreateTags", ec2("instance/*"), request_tags=instance_tags,
                 context={"ec2:CreateAction": "RunInstances"})]


def deploy(env: str = "qa") -> list[Call]:
    """A group on $Latest or $Default (fleets/aws.py refresh): pinned to the number that resolves to before the new
    version exists, then the new version, the refresh to it, AWS's pin confirmed, the release recorded."""
    group, template = GROUP + f"bakery-{env}", ec2(f"launch-template/lt-0{env}")
    return [
        Call("autoscaling:DescribeInstanceRefreshes"),  # one running already?
        Call("autoscaling:DescribeAutoScalingGroups"), Call("ec2:DescribeLaunchTemplates"),
        Call("ec2:DescribeLaunchTemplateVersions"), Call("ec2:DescribeImages"),
        Call("ssm:GetParameter", ssm(f"/bakery/verifications/webapp/{VERSION}")),  # adopting a CI-baked version
        *readback_gate(),  # an environment requiring the aws verification
        Call("autoscaling:UpdateAutoScalingGroup", group, owned(env), context=PINNED),  # _pin_number
        *launch_check(env, "ami-0old"),
        Call("ec2:DescribeLaunchTemplateVersions"),
        Call("ec2:CreateLaunchTemplateVersion", template, owned(env)),
        Call("autoscaling:StartInstanceRefresh", group, owned(env)), *launch_check(env, "ami-0new"),
        Call("autoscaling:DescribeInstanceRefreshes"), Call("autoscaling:DescribeAutoScalingGroups"),
        Call("autoscaling:UpdateAutoScalingGroup", group, owned(env), context=PINNED),  # _confirm_pin
        *launch_check(env, "ami-0new"),
        Call("ssm:GetParameters", ssm(f"/bakery/webapp/{env}/ami-id")),
        Call("ssm:PutParameter", ssm(f"/bakery/webapp/{env}/ami-id"), context={"ssm:Overwrite": "true"}),
        Call("ssm:PutParameter", ssm(f"/bakery/webapp/{env}/version"), context={"ssm:Overwrite": "true"}),
    ]


def deploy_to_an_empty_group(env: str = "qa") -> list[Call]:
    """Nothing to refresh: the group is pinned to the new version with its capacity (fleets/aws.py _pin_empty)."""
    group = GROUP + f"bakery-{env}"
    return [Call("autoscaling:DescribeAutoScalingGroups"), Call("ec2:DescribeLaunchTemplateVersions"),
            Call("ec2:CreateLaunchTemplateVersion", ec2(f"launch-template/lt-0{env}"), owned(env)),
            Call("autoscaling:UpdateAutoScalingGroup", group, owned(env), context=PINNED),
            *launch_check(env, "ami-0new"),
            Call("autoscaling:DescribeAutoScalingGroups"),
            Call("ssm:PutParameter", ssm(f"/bakery/webapp/{env}/ami-id"), context={"ssm:Overwrite": "true"})]


def down(env: str = "qa") -> list[Call]:
    """Capacity only: no launch template in the request (whether AWS then sets LaunchTemplateVersionSpecified is
    unconfirmed: docs/aws.md)."""
    return [Call("autoscaling:DescribeAutoScalingGroups"),
            Call("autoscaling:UpdateAutoScalingGroup", GROUP + f"bakery-{env}", owned(env))]


def promote() -> list[Call]:
    return [Call("ssm:GetParameters", ssm("/bakery/webapp/qa/ami-id")),
            Call("ssm:GetParametersByPath", ssm("/bakery/webapp")), *deploy("prod")]


def rollback() -> list[Call]:
    group = GROUP + "bakery-qa"
    return [Call("autoscaling:RollbackInstanceRefresh", group, owned("qa")),
            Call("autoscaling:CancelInstanceRefresh", group, owned("qa")),
            Call("ssm:GetParameterHistory", ssm("/bakery/webapp/qa/ami-id")), *deploy("qa")]


def readback_gate(ami: str = "ami-0new") -> list[Call]:
    """readback_record.verdict on an AMI: its own readback records (one GetParametersByPath on the AMI's level of
    the home region), else, for a copy distribute recorded, the copy record and the bake's record."""
    return [Call("ssm:GetParametersByPath", ssm(readback_path(ami))),
            Call("ssm:GetParameter", ssm(f"/bakery/verifications/webapp/copies/{VERSION}/{OTHER}/ami-0copy")),
            Call("ssm:GetParameter", ssm(f"/bakery/verifications/webapp/{VERSION}"))]


def readback_path(ami: str = "ami-0new", region: str = HOME) -> str:
    return f"/bakery/verifications/webapp/readback/{VERSION}/{region}/{ami}"


def distribute() -> list[Call]:
    """The source AMI, its passing record and its passing readback record (home region: distribute refuses an
    unverified version before anything); a copy per region, tagged at creation; the copy's own write-once record in
    the home region (verification_record.write_copy_record); tags it lacks; sharing, only here. A copy found from an
    earlier run: its copy record is read instead, and it is shared only when its readback or copy record vouches
    for it."""
    source_tags = {**AMI_TAGS, **VERIFIED}  # a bake's AMI
    copy_tags = {k: v for k, v in source_tags.items() if k.startswith("bakery:") or k == "Name"}
    copies = f"/bakery/verifications/webapp/copies/{VERSION}/{OTHER}"
    return [
        Call("ec2:DescribeImages"), Call("ssm:GetParameter", ssm(f"/bakery/verifications/webapp/{VERSION}")),
        *readback_gate(), Call("ec2:DescribeSnapshots"),
        Call("ec2:DescribeImages"),  # a copy there already?
        Call("ec2:CopyImage", image("ami-0new"), source_tags, request_tags=copy_tags),
        Call("ec2:CopyImage", image("ami-0copy", OTHER), request_tags=copy_tags),
        Call("ec2:CopyImage", snapshot("snap-0copy", OTHER), request_tags=copy_tags),
        *[Call("ec2:CreateTags", arn, request_tags=copy_tags, context={"ec2:CreateAction": "CopyImage"})
          for arn in (image("ami-0copy", OTHER), snapshot("snap-0copy", OTHER))],
        kms_via_ec2("kms:ReEncryptFrom", HOME), kms_via_ec2("kms:ReEncryptTo", OTHER),
        Call("ec2:DescribeImages"),  # until the copy is available
        *share(HOME, "ami-0new", "snap-0new"),
        Call("ssm:PutParameter", ssm(f"{copies}/ami-0copy"), context={"ssm:Overwrite": "false"}),
        Call("ssm:GetParameter", ssm(f"{copies}/ami-0found")),  # a copy this run did not make
        # shared only when readback_record.verdict vouches for it (distribute_share.refusal): its own readback records
        Call("ssm:GetParametersByPath", ssm(readback_path("ami-0found", OTHER))),
        Call("ec2:DescribeSnapshots"),
        Call("ec2:CreateTags", snapshot("snap-0copy", OTHER), AMI_TAGS, request_tags=copy_tags),
        *share(OTHER, "ami-0copy", "snap-0copy"),
    ]


IMAGE_BUILDER_TAGS = {"CreatedBy": f"arn:aws:sts::{ACCOUNT}:assumed-role/AWSServiceRoleForImageBuilder/x",
                      "Ec2ImageBuilderArn": "arn:aws:imagebuilder:eu-west-1:111122223333:image/bakery-webapp/1.0/1"}


def distribute_an_image_builder_ami() -> list[Call]:
    """An Image Builder AMI carries Image Builder's tags too: the copy's request carries bakery:* and Name only."""
    source_tags = {**AMI_TAGS, **VERIFIED, **IMAGE_BUILDER_TAGS}
    copy_tags = {k: v for k, v in source_tags.items() if k.startswith("bakery:") or k == "Name"}
    copy = (image("ami-0copy", OTHER), snapshot("snap-0copy", OTHER))
    return [Call("ec2:DescribeImages"), Call("ssm:GetParameter", ssm(f"/bakery/verifications/webapp/{VERSION}")),
            *readback_gate("ami-0ib"), Call("ec2:DescribeImages"),
            Call("ec2:CopyImage", image("ami-0ib"), source_tags, request_tags=copy_tags),
            *[Call("ec2:CopyImage", arn, request_tags=copy_tags) for arn in copy],
            *[Call("ec2:CreateTags", arn, request_tags=copy_tags, context={"ec2:CreateAction": "CopyImage"})
              for arn in copy]]


def gc() -> list[Call]:
    old = {**AMI_TAGS, "bakery:version": "20261001.001"}
    return [Call("ec2:DescribeImages"), Call("autoscaling:DescribeAutoScalingGroups"),
            Call("autoscaling:DescribeLaunchConfigurations"), Call("ec2:DescribeLaunchTemplateVersions"),
            Call("ec2:DescribeInstances"), Call("ec2:DescribeImageAttribute", image("ami-0old"), old),
            Call("ec2:DescribeSnapshots"),
            Call("ssm:GetParametersByPath", ssm("/bakery/")),
            Call("ssm:GetParameterHistory", ssm("/bakery/webapp/qa/ami-id")),
            # DeregisterImage with DeleteAssociatedSnapshots: EC2 answers "missing-permissions" per snapshot it
            # may not delete, so each snapshot is authorized as a DeleteSnapshot; any left are deleted one by one
            *[call for region in (HOME, OTHER) for call in (
                Call("ec2:DescribeImages"),
                Call("ec2:DeregisterImage", image("ami-0old", region), old),
                Call("ec2:DeleteSnapshot", snapshot("snap-0old", region), old), Call("ec2:DescribeSnapshots"),
                Call("ec2:DeleteSnapshot", snapshot("snap-0old", region), old))]]


def gc_leftovers() -> list[Call]:
    """An AMI a dead bake registered but never tagged (gc/aws_leftovers.py): found by its run's name in every region,
    claimed for bakery:run unknown-build-<suffix> (or the catalog's run), then removed like any other."""
    claim = {"bakery:managed": "true", "bakery:run": "unknown-build-813933"}
    return [*disk_leftovers(), *[call for region in (HOME, OTHER) for call in (
        Call("ec2:DescribeImages"),  # by name <image>-<version>-<suffix>
        Call("ec2:DescribeInstances"), Call("autoscaling:DescribeAutoScalingGroups"),  # in use since the plan?
        Call("ec2:DescribeSnapshots"),
        Call("ec2:CreateTags", image("ami-0orphan", region), request_tags=claim),
        Call("ec2:CreateTags", snapshot("snap-0orphan", region), request_tags=claim),
        Call("ec2:DescribeImages"),
        Call("ec2:DeregisterImage", image("ami-0orphan", region), claim),
        Call("ec2:DeleteSnapshot", snapshot("snap-0orphan", region), claim))]]


DEAD_RUN = "20261127T101010Z-build-424242"
DISK = "0f" * 32  # the disk's sha256
DISK_TAGS = {**AMI_TAGS, "bakery:disk-sha256": DISK, "bakery:builder": "disk",
             "bakery:local-verification": "vm passed 20261128T220000Z-verify-vm-813900; container passed", **VERIFIED}
NEW_SNAPSHOT = snapshot("*")  # StartSnapshot is authorized before the snapshot has an id


def disk_leftovers(run: str = DEAD_RUN) -> list[Call]:
    """ebs_direct.run_snapshots / leftover_snapshots: a pending or errored snapshot a dead run started (tagged at
    StartSnapshot), no AMI using it, deleted (by a disk bake of the image first, and by gc --target aws)."""
    dead = {**DISK_TAGS, "bakery:run": run}
    return [call for region in (HOME, OTHER) for call in (
        Call("ec2:DescribeSnapshots"), Call("ec2:DescribeImages"),
        Call("ec2:DeleteSnapshot", snapshot("snap-0partial", region), dead))]


def start_snapshot(parent: str = "") -> list[Call]:
    """ebs_direct.publish's StartSnapshot: tagged at creation (authorized as ec2:CreateTags too: the Service
    Authorization Reference), encrypted with the region's key (a parent's key too, for an incremental one)."""
    keys = {"ebs:VolumeSize": "2", "ebs:Description": f"webapp {VERSION}",
            **({"ebs:ParentSnapshot": parent} if parent else {})}
    return [Call("ebs:StartSnapshot", NEW_SNAPSHOT, request_tags=DISK_TAGS, context=keys),
            Call("ec2:CreateTags", NEW_SNAPSHOT, request_tags=DISK_TAGS, context={"ec2:CreateAction": "StartSnapshot"}),
            *kms_via_ebs("kms:DescribeKey", "kms:CreateGrant", "kms:GenerateDataKeyWithoutPlaintext",
                         "kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo")]


def disk_build(parent: str = "") -> list[Call]:
    """bakery/builders/disk.py: an AMI of this disk to reuse (bakery:disk-sha256), the version's AMI, the parent
    (newest AMI of the image with a disk digest); dead runs' snapshots removed; StartSnapshot, the changed blocks,
    CompleteSnapshot, waited for 'completed'; RegisterImage (tagged at creation, from that snapshot only); the
    snapshot tagged; the bake's write-once record. Nothing shared: distribute shares."""
    new = snapshot("snap-0disk")
    return [
        Call("sts:GetCallerIdentity"), Call("ec2:DescribeImages"), *reserve(), Call("ec2:DescribeImages"),
        *disk_leftovers(),
        *start_snapshot(parent),
        Call("ebs:PutSnapshotBlock", new, DISK_TAGS), Call("ebs:CompleteSnapshot", new, DISK_TAGS),
        Call("ec2:DescribeSnapshots"),
        Call("ec2:RegisterImage", image("ami-0disk"), request_tags=DISK_TAGS),
        Call("ec2:RegisterImage", new, DISK_TAGS),
        Call("ec2:CreateTags", image("ami-0disk"), request_tags=DISK_TAGS,
             context={"ec2:CreateAction": "RegisterImage"}),
        Call("ec2:DescribeImages"),
        Call("ec2:CreateTags", new, DISK_TAGS, request_tags=DISK_TAGS),
        Call("ssm:PutParameter", ssm(f"/bakery/verifications/webapp/{VERSION}"), context={"ssm:Overwrite": "false"}),
    ]


def disk_build_incremental() -> list[Call]:
    """Only the blocks that differ from the parent's (the catalog's block digests), on top of an earlier version's
    root snapshot (ebs:ParentSnapshot: its id; IAM does not see its tags)."""
    return disk_build(parent="snap-0earlier")


def disk_clean_up() -> list[Call]:
    """A failed or interrupted publish: the snapshot it started (any state) and any AMI it registered, by its run."""
    new = snapshot("snap-0disk")
    return [Call("ec2:DescribeImages"), Call("ec2:DescribeSnapshots"),
            Call("ec2:DeregisterImage", image("ami-0disk"), DISK_TAGS), Call("ec2:DeleteSnapshot", new, DISK_TAGS)]


def aws_verify(ami: str = "ami-0new", snap: str = "snap-0new") -> list[Call]:
    """`verify IMAGE:VERSION --target aws` (bakery/verify/aws_readback.py): the AMI by its tags and its root snapshot,
    read back block by block (decrypted through EBS), the disk's layout from the bake's record, the earlier readback
    records, then this run's, written once. Any builder's AMI: Packer's snapshot carries the bake's tags
    (StepCreateTags), Image Builder's bakery's, the disk builder's its own (StartSnapshot)."""
    tagged = {**AMI_TAGS, **VERIFIED}
    return [Call("ec2:DescribeImages"), Call("ec2:DescribeSnapshots"),
            Call("ssm:GetParameter", ssm(f"/bakery/verifications/webapp/{VERSION}")),
            Call("ebs:ListSnapshotBlocks", snapshot(snap), tagged),
            Call("ebs:GetSnapshotBlock", snapshot(snap), tagged),
            *kms_via_ebs("kms:Decrypt", "kms:DescribeKey"),
            *readback_gate(ami),
            Call("ssm:PutParameter", ssm(f"{readback_path(ami)}/{RUN}"), context={"ssm:Overwrite": "false"})]


def logs() -> list[Call]:
    return [Call("autoscaling:DescribeAutoScalingGroups"), Call("ec2:DescribeInstances"),
            Call("ec2:DescribeImages"),  # the version each instance runs (observe/cloudwatch.py)
            Call("logs:FilterLogEvents", f"arn:aws:logs:{HOME}:{ACCOUNT}:log-group:/bakery/qa"),
            Call("logs:FilterLogEvents", f"arn:aws:logs:{HOME}:{ACCOUNT}:log-group:/bakery/qa:*")]


def top() -> list[Call]:
    return [Call("autoscaling:DescribeAutoScalingGroups"), Call("ec2:DescribeInstances"), Call("ec2:DescribeImages"),
            Call("cloudwatch:ListMetrics"), Call("cloudwatch:GetMetricData")]


def adopt() -> list[Call]:
    """The version's record, always from the home region; for a copy, also the record distribute wrote for it."""
    return [Call("ec2:DescribeImages"), Call("ssm:GetParameter", ssm(f"/bakery/verifications/webapp/{VERSION}")),
            Call("ssm:GetParameter", ssm(f"/bakery/verifications/webapp/copies/{VERSION}/{OTHER}/ami-0copy"))]


PARAMETERS = {"qa": ["ssm:/webapp/qa/feature-new-checkout", "ssm:/webapp/qa/database-password", "ssm:/webapp/qa/flags/",
                      "secretsmanager:webapp/qa/db#password"],
              "prod": ["ssm:/webapp/prod/database-password"]}


def secret(name: str) -> str:
    return f"arn:aws:secretsmanager:{HOME}:{ACCOUNT}:secret:{name}-AbCdEf"  # Secrets Manager appends 6 characters


def kms_via(action: str, service: str) -> Call:
    return Call(action, f"arn:aws:kms:{HOME}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                context={"kms:ViaService": f"{service}.{HOME}.amazonaws.com"})


def param() -> list[Call]:
    """`bake.py param set|get|list` on qa (bakery/params/aws_store.py): SSM PutParameter (a SecureString with the
    environment's key: SSM encrypts through KMS on the caller's behalf), GetParameterHistory (who, when, version),
    GetParameter with decryption for --reveal, a group listed by GetParametersByPath; a secret described, created
    with the key or given a new value, read for --reveal; an SSM ARN reference asks whose account it is."""
    return [
        Call("sts:GetCallerIdentity"),
        Call("ssm:PutParameter", ssm("/webapp/qa/database-password"), context={"ssm:Overwrite": "true"}),
        kms_via("kms:Encrypt", "ssm"), kms_via("kms:GenerateDataKey", "ssm"),
        Call("ssm:GetParameterHistory", ssm("/webapp/qa/database-password")),
        Call("ssm:GetParameter", ssm("/webapp/qa/database-password")), kms_via("kms:Decrypt", "ssm"),
        Call("ssm:PutParameter", ssm("/webapp/qa/flags/beta"), context={"ssm:Overwrite": "true"}),
        Call("ssm:GetParametersByPath", ssm("/webapp/qa/flags")),
        Call("ssm:GetParameterHistory", ssm("/webapp/qa/flags/beta")),
        Call("secretsmanager:DescribeSecret", secret("webapp/qa/db")),
        Call("secretsmanager:CreateSecret", secret("webapp/qa/db")),
        kms_via("kms:GenerateDataKey", "secretsmanager"), kms_via("kms:Encrypt", "secretsmanager"),
        Call("secretsmanager:PutSecretValue", secret("webapp/qa/db")),
        Call("secretsmanager:GetSecretValue", secret("webapp/qa/db")), kms_via("kms:Decrypt", "secretsmanager"),
    ]


def instance_resolve() -> list[Call]:
    """A qa instance's applier with its instance role (roles/base/files/bakery-runtime-config, Contract 2): each
    parameter, a group's parameters, the secret, decrypted through the services."""
    return [
        Call("ssm:GetParameter", ssm("/webapp/qa/feature-new-checkout")),
        Call("ssm:GetParameters", ssm("/webapp/qa/database-password")),
        Call("ssm:GetParameter", ssm("/webapp/qa/database-password")),
        Call("ssm:GetParametersByPath", ssm("/webapp/qa/flags")),
        Call("ssm:GetParameter", ssm("/webapp/qa/flags/beta")),
        Call("secretsmanager:GetSecretValue", secret("webapp/qa/db")),
        kms_via("kms:Decrypt", "ssm"), kms_via("kms:Decrypt", "secretsmanager"),
    ]


def data_volume_tags(env: str = "qa", slot: str = "0") -> dict[str, str]:
    """The tags bakery/fleets/aws_volumes.py puts on a slot's volume at CreateVolume (hand-over mark included)."""
    return {"Name": f"webapp-{env}-data-{slot}", "bakery:managed": "true", "bakery:environment": env,
            "bakery:image": "webapp", "bakery:volume": "data", "bakery:slot": slot, "bakery:handover": "attach:i-0new"}


def fleet_instance_tags(env: str = "qa") -> dict[str, str]:
    """What a deployed instance carries (bakery/aws/launch_templates.py release_tags)."""
    return {"Name": f"webapp-{env}-{VERSION}", "bakery:managed": "true", "bakery:environment": env,
            "bakery:image": "webapp", "bakery:version": VERSION, "bakery:release": "7"}


def data_volume_hand_over(env: str = "qa") -> list[Call]:
    """A refresh of an environment with a data volume (bakery/fleets/aws_volumes.py, bakery/aws/lifecycle_hooks.py):
    the hooks put on the group; the replacement in Pending:Wait gets a new slot volume (encrypted gp3 with the
    environment's key, tagged at creation) or a free one, marked, attached, let go, unmarked; the old instance in
    Terminating:Wait is marked, stopped, its volume detached, let go. Never DeleteVolume."""
    group, volume = GROUP + f"bakery-{env}", ec2("volume/vol-0data")
    tagged, held = data_volume_tags(env), {k: v for k, v in data_volume_tags(env).items() if k != "bakery:handover"}
    new, old = ec2("instance/i-0new"), ec2("instance/i-0old")
    return [
        Call("autoscaling:DescribeLifecycleHooks"),
        *[Call("autoscaling:PutLifecycleHook", group, owned(env)) for _ in ("launching", "terminating")],
        Call("autoscaling:DescribeAutoScalingGroups"), Call("ec2:DescribeVolumes"), Call("ec2:DescribeInstances"),
        Call("ec2:CreateVolume", ec2("volume/*"), request_tags=tagged,
             context={"ec2:Encrypted": True, "ec2:VolumeType": "gp3", "ec2:VolumeSize": 8,
                      "ec2:AvailabilityZone": f"{HOME}a"}),
        Call("ec2:CreateTags", ec2("volume/*"), request_tags=tagged, context={"ec2:CreateAction": "CreateVolume"}),
        *[kms_via_ec2(action, HOME) for action in ("kms:DescribeKey", "kms:CreateGrant",
                                                  "kms:GenerateDataKeyWithoutPlaintext", "kms:Decrypt")],
        Call("ec2:CreateTags", volume, held, request_tags={"bakery:handover": "attach:i-0new"}),  # a free volume
        Call("ec2:AttachVolume", volume, tagged), Call("ec2:AttachVolume", new, fleet_instance_tags(env)),
        kms_via_ec2("kms:CreateGrant", HOME),
        Call("autoscaling:CompleteLifecycleAction", group, owned(env)),
        Call("ec2:DeleteTags", volume, tagged, request_tags={"bakery:handover": ""}),
        Call("ec2:CreateTags", volume, held, request_tags={"bakery:handover": "detach:i-0old"}),
        Call("ec2:StopInstances", old, fleet_instance_tags(env)),
        Call("ec2:DetachVolume", volume, {**held, "bakery:handover": "detach:i-0old"}),
        Call("ec2:DetachVolume", old, fleet_instance_tags(env)),
        Call("autoscaling:CompleteLifecycleAction", group, owned(env)),
        Call("ec2:DeleteTags", volume, {**held, "bakery:handover": "detach:i-0old"},
             request_tags={"bakery:handover": ""}),
    ]


def _instance_policy(env: str = "qa") -> dict:
    from bakery.aws.iam_policy_params import render_instance_read_policy

    return render_instance_read_policy(env, PARAMETERS[env], ACCOUNT)


def _settings(**changes):
    """The example settings with changes; aws.builder is set after loading (the replay does not depend on which
    builders bakery.aws.settings accepts)."""
    import yaml

    from bakery.aws.settings import load_aws_settings

    example = REPO / "docs" / "aws-iam-policy.example.yml"
    builder = changes.pop("builder", "")
    settings = load_aws_settings({**yaml.safe_load(example.read_text(encoding="utf-8"))["aws"], **changes},
                                 str(example))
    return replace(settings, builder=builder) if builder else settings


def _render(*envs: str, build: bool = True, parameters=None, data_volumes=None, **changes) -> dict:
    from bakery.aws.iam_policy import render_policy

    return render_policy(_settings(**changes), ACCOUNT, envs=envs, build=build, parameters=parameters,
                         data_volumes=data_volumes)


FLOWS = {"packer build": packer_build, "packer clean-up": packer_clean_up_of_a_failed_run,
         "deploy": deploy, "deploy to an empty group": deploy_to_an_empty_group, "down": down, "promote": promote,
         "rollback": rollback, "distribute": distribute,
         "distribute an Image Builder AMI": distribute_an_image_builder_ami, "gc": gc, "gc leftovers": gc_leftovers,
         "logs": logs, "top": top, "adopt": adopt, "aws verify": aws_verify,
         "data volume hand-over": data_volume_hand_over}
# the disk builder's flows, against a rendering with aws.builder disk (the example bakes with Packer)
DISK_FLOWS = {"disk build": disk_build, "disk build incremental": disk_build_incremental,
              "disk clean-up": disk_clean_up}


# parameters: `bake.py param` against a rendering for the environments' references, the instance's reads against
# the instance role's read policy (bake.py iam-policy --for instance --env qa)
PARAM_FLOWS = {"param": param, "instance resolve": instance_resolve}
ALL_FLOWS = {**FLOWS, "imagebuilder build": imagebuilder_build, **DISK_FLOWS, **PARAM_FLOWS}
# The flows the calls of each test file belong to (tests/aws/conftest.py replayed_calls: every AWS call bakery makes in
# a test is checked against them); a file not named here is checked against every flow.
FLOWS_OF_TESTS = {
    "test_adopt": ["adopt"],
    "test_distribute": ["distribute", "distribute an Image Builder AMI"],
    "test_disk_builder": [*DISK_FLOWS],
    "test_ebs_direct": [*DISK_FLOWS, "aws verify", "gc leftovers"],
    "test_fleet_aws": ["deploy", "deploy to an empty group", "down", "promote", "rollback", "adopt"],
    "test_gc_aws": ["gc", "gc leftovers"],
    "test_imagebuilder": ["imagebuilder build"],
    "test_observe_aws": ["logs", "top"],
    "test_packer": ["packer build", "packer clean-up"],
    "test_verify_aws": [*DISK_FLOWS, "aws verify"],  # the round trip publishes with the disk builder first
    "test_params_aws": ["param"],
    "test_params_arn_aws": ["param"],
    "test_runtime_resolve_aws": ["instance resolve", "param"],  # the test writes its parameters with bake.py param
    "test_data_volume_aws": ["data volume hand-over", "deploy", "deploy to an empty group", "down", "adopt"],
}
# A test that itself writes or reads a verification record (bakery/aws/verification_record.py is the outermost code of
# bakery's on the stack) stands in for the bake, distribute or adoption that does.
FLOWS_OF_ENTRIES = {"bakery/aws/verification_record.py": ["packer build", "imagebuilder build", "disk build",
                                                           "distribute", "adopt"],
                    "bakery/aws/readback_record.py": ["aws verify", "distribute", "deploy"]}


@cache
def _tag_keys_the_policies_name() -> frozenset[str]:
    """The tag keys some aws:RequestTag/<key> condition of a rendering names (bakery:managed, ...)."""
    text = json.dumps([POLICY, _render(builder="imagebuilder"), _render(builder="disk"), _render("qa"),
                       _render("prod", build=False)])
    return frozenset(re.findall(r'"aws:RequestTag/([^"]+)"', text, re.IGNORECASE))


def _models(call: Call, action: str, request_tags: dict[str, str] | None, context: dict[str, str]) -> bool:
    """A replayed call is decided as the recorded one: the same action and condition keys from the parameters, and
    request tags whose keys include the recorded ones (aws:TagKeys) with the same values where a policy names the
    key (aws:RequestTag/<key>). A new key, or bakery:managed missing, is a call the replay does not model."""
    if call.action != action or any(call.context.get(key) != value for key, value in context.items()):
        return False
    if request_tags is None or call.request_tags is None:
        return request_tags is None and call.request_tags is None
    named = _tag_keys_the_policies_name() & (set(request_tags) | set(call.request_tags))
    return set(request_tags) <= set(call.request_tags) and all(
        request_tags.get(key) == call.request_tags.get(key) for key in named)


@cache
def _calls_of(flow: str) -> list[Call]:
    return ALL_FLOWS[flow]()


def unmodelled(test_file: str, recorded: list[dict]) -> list[str]:
    """The recorded calls (tests/aws/call_recorder.py) that no call of their flows models (_models): the flows of
    the test file, or of the entry into bakery's code for a test standing in for another flow."""
    missing = set()
    for entry in recorded:
        flows = FLOWS_OF_ENTRIES.get(entry["entry"]) or FLOWS_OF_TESTS.get(test_file, sorted(ALL_FLOWS))
        action, tags = iam_action(entry["service"], entry["operation"], entry["signing_name"]), entry["request_tags"]
        if not any(_models(call, action, tags, entry["context"]) for flow in flows for call in _calls_of(flow)):
            named = {k: v for k, v in (tags or {}).items() if k in _tag_keys_the_policies_name()}
            keys = f"{sorted(tags) if tags is not None else None}{f' {named}' if named else ''}"
            missing.add(f"{action} with request tag keys {keys} and {entry['context'] or 'no condition keys'} "
                        f"(bakery's call at {entry['where']}), in none of the flows {', '.join(flows)}")
    return sorted(missing)


def test_the_recorder_sees_bakery_s_calls_here_and_in_bake_py_but_not_the_tests_own(aws, replayed_calls):
    """The link is alive: a call of bakery's code in the test process and one of bake.py (a process of its own) are
    recorded with their tags and condition keys; a call the test makes with a client of its own is not."""
    import boto3

    from bakery.aws import amis, clients, verification_record
    from tests.aws import call_recorder
    from tests.aws.test_amis import register_ami

    ec2 = boto3.client("ec2")
    untagged = ec2.describe_images(ImageIds=[register_ami(ec2, "webapp-20261128.001-813933", {"team": "web"})])
    amis.claim(clients.client("ec2"), untagged["Images"][0], RUN)
    verification_record.write_record(clients.client("ssm"), image="webapp", version=VERSION, passed=True, amis={},
                                     snapshots={}, report_sha256="0" * 64, summary="1 passed", run_id=RUN)
    assert bake(REPO, "iam-policy", "--settings", "docs/aws-iam-policy.example.yml").rc == 0  # sts: the caller
    seen = [(e["operation"], e["request_tags"], e["context"]) for e in call_recorder.read(replayed_calls)]
    assert seen == [("DescribeSnapshots", None, {}),
                    ("CreateTags", {"bakery:managed": "true", "bakery:run": RUN}, {}),
                    ("PutParameter", None, {"ssm:Overwrite": "false"}),
                    ("GetCallerIdentity", None, {})], seen
    assert not unmodelled("test_distribute", call_recorder.read(replayed_calls)[2:3])  # distribute writes records
    assert unmodelled("test_observe_aws", call_recorder.read(replayed_calls))  # logs and top write nothing


def test_a_new_call_a_new_tag_key_or_a_missing_bakery_managed_is_not_modelled():
    def made(operation: str, request_tags: dict | None = None, **context: str) -> dict:
        return {"service": "ec2", "signing_name": "ec2", "operation": operation, "request_tags": request_tags,
                "context": context, "where": "bakery/aws/distribute.py:1", "entry": "bakery/cli/__init__.py"}

    copy_tags = {"Name": "webapp-1", "bakery:managed": "true", "bakery:version": "1"}
    assert not unmodelled("test_distribute", [made("CopyImage", copy_tags), made("DescribeImages")])
    for call in (made("CopyImage", {**copy_tags, "team": "web"}), made("CopyImage", {"bakery:version": "1"}),
                 made("CopyImage", {**copy_tags, "bakery:managed": "false"}), made("CopyImage"),
                 made("CopyImage", {**copy_tags, **IMAGE_BUILDER_TAGS}), made("DeleteVolume"),
                 made("ModifyImageAttribute", **{"ec2:Attribute": "productCodes"})):
        assert unmodelled("test_distribute", [call]), call


def test_a_copy_of_an_image_builder_ami_is_allowed_only_without_image_builder_s_tags():
    """Image Builder tags its AMIs CreatedBy and Ec2ImageBuilderArn; the copy's request may carry bakery:* and Name
    only (distribute.copyable), which the replay's flow models; with Image Builder's keys it would be denied."""
    copy = [call for call in distribute_an_image_builder_ami() if call.action == "ec2:CreateTags"]
    with_its_keys = [Call(c.action, c.resource, c.tags, {**c.request_tags, **IMAGE_BUILDER_TAGS}, c.context)
                     for c in copy]
    assert copy and all(c.decide() == "allow" for c in copy)
    assert all(c.decide() == "implicit_deny" for c in with_its_keys)


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_the_policy_allows_every_call_of_the_flow(flow):
    denied = [f"{call}: {decision}" for call in FLOWS[flow]() if (decision := call.decide()) != "allow"]
    assert not denied, f"{flow}: " + "\n".join(denied)


def test_an_image_builder_project_s_policy_allows_its_build():
    """The example bakes with Packer; aws.builder imagebuilder renders the Image Builder statements (and only it)."""
    policy = _render(builder="imagebuilder")
    denied = [f"{call}: {decision}" for call in imagebuilder_build() if (decision := call.decide(policy)) != "allow"]
    assert not denied, "\n".join(denied)


FOREIGN = {"Name": "payments-db", "team": "payments"}
PROTECTED = {**FOREIGN, "bakery:managed": "false"}
ESCALATIONS = {
    "pass an admin role to EC2": Call("iam:PassRole", iam("role/admin"),
                                      context={"iam:PassedToService": "ec2.amazonaws.com"}),
    "pass the build role to Lambda": Call("iam:PassRole", iam("role/bakery-build"),
                                          context={"iam:PassedToService": "lambda.amazonaws.com"}),
    "launch in another subnet": Call("ec2:RunInstances", ec2("subnet/subnet-0prod"), request_tags=RUN_TAGS),
    "launch with another profile": Call("ec2:RunInstances", ec2("instance/*"), request_tags=RUN_TAGS,
                                        context={"ec2:InstanceProfile": iam("instance-profile/admin")}),
    "launch an untagged instance": Call("ec2:RunInstances", ec2("instance/*"), request_tags={"Name": "x"},
                                        context={"ec2:InstanceProfile": PROFILE}),
    "launch with an unencrypted volume": Call("ec2:RunInstances", ec2("volume/*"), request_tags=RUN_TAGS,
                                              context={"ec2:Encrypted": False}),
    "launch from a foreign launch template": Call("ec2:RunInstances", ec2("launch-template/lt-0payments"), FOREIGN),
    "launch in another subnet through a foreign account's template": Call(
        "ec2:RunInstances", ec2("subnet/subnet-0prod"),
        context={"ec2:LaunchTemplate": "arn:aws:ec2:eu-west-1:999988887777:launch-template/lt-0x"}),
    "image a production instance": Call("ec2:CreateImage", ec2("instance/i-0prod"), FOREIGN),
    "share a snapshot with another account": Call("ec2:ModifySnapshotAttribute", snapshot("snap-0new"), AMI_TAGS,
                                                  context={"ec2:Add/userId": [SHARED, STRANGER]}),
    "make a snapshot public": Call("ec2:ModifySnapshotAttribute", snapshot("snap-0new"), AMI_TAGS,
                                  context={"ec2:Add/group": ["all"]}),
    "share a foreign AMI": Call("ec2:ModifyImageAttribute", image("ami-0payments"), FOREIGN),
    "lift block public access": Call("ec2:DisableImageBlockPublicAccess"),
    # Auto Scaling checks the launch permissions only when a group is given a version: on $Latest, a later version
    # (with an admin profile) would launch unchecked ("Launch template support", EC2 Auto Scaling User Guide)
    "point a group at $Latest": Call("autoscaling:UpdateAutoScalingGroup", GROUP + "bakery-qa", owned("qa"),
                                     context={"autoscaling:LaunchTemplateVersionSpecified": False}),
    "copy an AMI without bakery's tags": Call("ec2:CopyImage", image("ami-0payments"), FOREIGN,
                                              request_tags={"Name": "mine"}),
    "copy an AMI untagged": Call("ec2:CopyImage", image("ami-0copy", OTHER)),
    "deregister an untagged AMI without claiming it": Call("ec2:DeregisterImage", image("ami-0intermediate")),
    "delete an untagged snapshot without claiming it": Call("ec2:DeleteSnapshot", snapshot("snap-0intermediate")),
    "read another bucket": Call("s3:GetObject", "arn:aws:s3:::payments-exports/bundles/data.csv"),
    "write another bucket": Call("s3:PutObject", "arn:aws:s3:::payments-exports/x"),
    "list another bucket": Call("s3:ListBucket", "arn:aws:s3:::payments-exports", context={"s3:prefix": "bundles/"}),
    "read outside bundles/": Call("s3:GetObject", f"arn:aws:s3:::{BUCKET}/imagebuilder-logs/x"),
    "read other log groups": Call("logs:FilterLogEvents", f"arn:aws:logs:{HOME}:{ACCOUNT}:log-group:/payments/api"),
    "delete a security group": Call("ec2:DeleteSecurityGroup", ec2("security-group/sg-0temp")),
    "open a security group": Call("ec2:AuthorizeSecurityGroupIngress", ec2("security-group/sg-0prod"), FOREIGN),
    "create a key pair of its own": Call("ec2:CreateKeyPair", ec2("key-pair/mine")),
    "delete a foreign key pair": Call("ec2:DeleteKeyPair", ec2("key-pair/prod-admin")),
    # an AMI or snapshot with no bakery:managed tag can be claimed and then removed (docs/aws.md, residual risk);
    # bakery:managed=false is what keeps one out of reach
    "deregister a protected AMI": Call("ec2:DeregisterImage", image("ami-0payments"), PROTECTED),
    "delete a protected snapshot": Call("ec2:DeleteSnapshot", snapshot("snap-0payments"), PROTECTED),
    "deregister a foreign AMI": Call("ec2:DeregisterImage", image("ami-0payments"), {**FOREIGN, "bakery:managed": ""}),
    "terminate a foreign instance": Call("ec2:TerminateInstances", ec2("instance/i-0prod"), FOREIGN),
    "change an Image Builder distribution (the project bakes with Packer)": Call(
        "imagebuilder:UpdateDistributionConfiguration", ib("distribution-configuration/bakery-webapp")),
    "create an Image Builder recipe (the project bakes with Packer)": Call(
        "imagebuilder:CreateImageRecipe", ib("image-recipe/bakery-webapp/1.0.0"), request_tags=MANAGED),
    "claim an AMI protected with bakery:managed=false": Call(
        "ec2:CreateTags", image("ami-0payments"), {**FOREIGN, "bakery:managed": "false"},
        request_tags={"bakery:managed": "true"}),
    "mark a foreign instance as bakery's": Call("ec2:CreateTags", ec2("instance/i-0prod"), FOREIGN,
                                                request_tags={"bakery:managed": "true"}),
    "tag a foreign AMI with other keys": Call("ec2:CreateTags", image("ami-0payments"), request_tags={
        "bakery:managed": "true", "team": "bakery"}),
    "overwrite a verification record": Call("ssm:PutParameter", ssm(f"/bakery/verifications/webapp/{VERSION}"),
                                            context={"ssm:Overwrite": "true"}),
    "overwrite a copy's record": Call("ssm:PutParameter", ssm(
        f"/bakery/verifications/webapp/copies/{VERSION}/{OTHER}/ami-0copy"), context={"ssm:Overwrite": "true"}),
    "read other parameters": Call("ssm:GetParameter", ssm("/payments/db-password")),
    "refresh a foreign group": Call("autoscaling:StartInstanceRefresh", GROUP + "payments", FOREIGN),
    "new version of a foreign launch template": Call("ec2:CreateLaunchTemplateVersion",
                                                     ec2("launch-template/lt-0payments"), FOREIGN),
    "use a KMS key directly": Call("kms:Decrypt", f"arn:aws:kms:{HOME}:{ACCOUNT}:key/1234"),
    "read a foreign snapshot's blocks": Call("ebs:GetSnapshotBlock", snapshot("snap-0payments"), FOREIGN),
    "read a protected snapshot's blocks": Call("ebs:ListSnapshotBlocks", snapshot("snap-0payments"), PROTECTED),
    "start a snapshot (the project bakes with Packer)": Call("ebs:StartSnapshot", snapshot("*"),
                                                             request_tags=MANAGED),
    "register an AMI (the project bakes with Packer)": Call("ec2:RegisterImage", image("ami-0mine"),
                                                            request_tags=MANAGED),
    "overwrite a readback record": Call("ssm:PutParameter", ssm(
        f"/bakery/verifications/webapp/readback/{VERSION}/{HOME}/ami-0new/{RUN}"), context={"ssm:Overwrite": "true"}),
}


@pytest.mark.parametrize("path", sorted(ESCALATIONS))
def test_the_policy_denies_the_escalation(path):
    call = ESCALATIONS[path]
    assert call.decide() != "allow", f"{path}: {call} is allowed"


@pytest.mark.parametrize("flow", sorted(DISK_FLOWS))
def test_a_disk_builder_project_s_policy_allows_its_build(flow):
    """aws.builder disk renders the EBS direct APIs and RegisterImage (and only it): the disk is published, tagged at
    StartSnapshot, registered from that snapshot only, tagged at RegisterImage; a failed run's leftovers removed."""
    policy = _render(builder="disk")
    denied = [f"{call}: {decision}" for call in DISK_FLOWS[flow]() if (decision := call.decide(policy)) != "allow"]
    assert not denied, f"{flow}: " + "\n".join(denied)


@pytest.mark.parametrize("builder", ["packer", "imagebuilder", "disk"])
def test_every_builder_s_policy_reads_back_and_records_but_shares_only_in_distribute(builder):
    """verify --target aws reads back any builder's AMI (its snapshot tagged bakery:managed) and writes its readback
    record once; no bake shares: the sharing calls are distribute's (after its readback record check)."""
    policy = _render(builder=builder)
    denied = [f"{call}: {decision}" for call in aws_verify() if (decision := call.decide(policy)) != "allow"]
    assert not denied, "\n".join(denied)
    bake = {"packer": packer_build, "imagebuilder": imagebuilder_build, "disk": disk_build}[builder]()
    sharing = {"ec2:ModifySnapshotAttribute", "ec2:DescribeSnapshotAttribute", "ec2:DescribeImageAttribute"}
    assert not [str(c) for c in bake if c.action in sharing or c.context.get("ec2:Attribute") == "launchPermission"]
    gate = [c for c in distribute() if c.action == "ssm:GetParametersByPath"]
    first_share = next(i for i, c in enumerate(distribute()) if c.action == "ec2:ModifyImageAttribute")
    assert gate and distribute().index(gate[0]) < first_share and "/readback/" in gate[0].resource


FOREIGN_SNAPSHOT = snapshot("snap-0payments")
DISK_ESCALATIONS = {
    "start a snapshot without bakery's tag": Call("ebs:StartSnapshot", NEW_SNAPSHOT, request_tags={"Name": "mine"}),
    "start a snapshot untagged": Call("ebs:StartSnapshot", NEW_SNAPSHOT),
    "start a snapshot with other tag keys": Call("ebs:StartSnapshot", NEW_SNAPSHOT,
                                                 request_tags={**DISK_TAGS, "team": "web"}),
    "start a snapshot marked bakery:managed=false": Call("ebs:StartSnapshot", NEW_SNAPSHOT,
                                                         request_tags={**DISK_TAGS, "bakery:managed": "false"}),
    "write blocks into a foreign snapshot": Call("ebs:PutSnapshotBlock", FOREIGN_SNAPSHOT, FOREIGN),
    "write blocks into a protected snapshot": Call("ebs:PutSnapshotBlock", FOREIGN_SNAPSHOT, PROTECTED),
    "complete a foreign snapshot": Call("ebs:CompleteSnapshot", FOREIGN_SNAPSHOT, FOREIGN),
    "register an AMI without bakery's tag": Call("ec2:RegisterImage", image("ami-0mine"), request_tags={"Name": "x"}),
    "register an AMI untagged": Call("ec2:RegisterImage", image("ami-0mine")),
    "register an AMI with other tag keys": Call("ec2:RegisterImage", image("ami-0mine"),
                                                request_tags={**DISK_TAGS, "team": "web"}),
    "register an AMI from a foreign snapshot": Call("ec2:RegisterImage", FOREIGN_SNAPSHOT, FOREIGN),
    "register an AMI from a protected snapshot": Call("ec2:RegisterImage", FOREIGN_SNAPSHOT, PROTECTED),
    "read a foreign snapshot's blocks": Call("ebs:GetSnapshotBlock", FOREIGN_SNAPSHOT, FOREIGN),
    "list a protected snapshot's blocks": Call("ebs:ListSnapshotBlocks", FOREIGN_SNAPSHOT, PROTECTED),
    "compare snapshots (ListChangedBlocks is not bakery's)": Call("ebs:ListChangedBlocks", snapshot("snap-0new"),
                                                                  AMI_TAGS),
    "tag a started snapshot with other keys": Call("ec2:CreateTags", NEW_SNAPSHOT, request_tags={"team": "web"},
                                                   context={"ec2:CreateAction": "StartSnapshot"}),
    "use a KMS key through another service": Call("kms:Decrypt", f"arn:aws:kms:{HOME}:{ACCOUNT}:key/1234",
                                                  context={"kms:ViaService": f"s3.{HOME}.amazonaws.com"}),
}


@pytest.mark.parametrize("path", sorted(DISK_ESCALATIONS))
def test_the_disk_builder_s_policy_denies_the_escalation(path):
    call = DISK_ESCALATIONS[path]
    assert call.decide(_render(builder="disk")) != "allow", f"{path}: {call} is allowed"


def test_only_the_disk_builder_s_policy_writes_snapshots_or_registers_amis():
    """The EBS direct writes and RegisterImage are rendered for aws.builder disk only; no rendering allows comparing
    snapshots, and the promote-only role reads no snapshot back."""
    disk = [c for c in disk_build_incremental() if c.action in {"ebs:StartSnapshot", "ebs:PutSnapshotBlock",
                                                                 "ebs:CompleteSnapshot", "ec2:RegisterImage"}]
    assert {c.action for c in disk} == {"ebs:StartSnapshot", "ebs:PutSnapshotBlock", "ebs:CompleteSnapshot",
                                        "ec2:RegisterImage"}
    for policy in (POLICY, _render(builder="imagebuilder"), _render("qa")):
        assert all(call.decide(policy) != "allow" for call in disk), [str(c) for c in disk if c.decide(policy)]
    reads = [c for c in aws_verify() if c.action.startswith("ebs:")]
    assert reads and all(call.decide(_render("prod", build=False)) != "allow" for call in reads)


def test_iam_sees_only_the_id_of_a_parent_snapshot():
    """ebs:ParentSnapshot is the parent's id, and StartSnapshot authorizes only the new snapshot: no condition can
    require the parent to be bakery's, so a bakery-tagged child of any snapshot the role can read is allowed, and
    its blocks (the parent's included) can be read back. docs/aws.md names this residual risk and what closes it."""
    child = Call("ebs:StartSnapshot", NEW_SNAPSHOT, request_tags=DISK_TAGS,
                 context={"ebs:ParentSnapshot": "snap-0payments"})
    assert child.decide(_render(builder="disk")) == "allow"
    text = (REPO / "docs" / "aws.md").read_text(encoding="utf-8")
    assert "`ebs:ParentSnapshot`" in text and "Residual risk" in text


def test_the_record_public_sharing_and_pinning_denies_are_explicit():
    """Explicit: they hold even if another policy attached to the role allows the action."""
    for path in ("overwrite a verification record", "overwrite a copy's record", "overwrite a readback record",
                 "make a snapshot public",
                 "lift block public access", "point a group at $Latest"):
        assert ESCALATIONS[path].decide() == "explicit_deny", path


def test_without_accounts_no_ami_launch_permission_can_be_changed():
    """ec2:Public is the image's state before the request, so no condition stops a private AMI from being made
    public; with no aws.accounts the launch permission is never changed at all (ec2:Attribute). With accounts IAM
    cannot limit an AMI's launch permission to them (docs/aws.md: block public access for AMIs must be on)."""
    private = {"ec2:Public": False, "ec2:Attribute": "launchPermission"}
    make_public = Call("ec2:ModifyImageAttribute", image("ami-0new"), AMI_TAGS, context=private)
    assert make_public.decide(_render(accounts=[])) == "explicit_deny"
    for attribute in ("description", "imdsSupport"):  # what a bake sets on its AMI without accounts
        call = Call("ec2:ModifyImageAttribute", image("ami-0new"), AMI_TAGS, context={"ec2:Attribute": attribute})
        assert call.decide(_render(accounts=[])) == "allow", attribute


def test_packer_needs_named_security_groups_and_the_policy_never_touches_one():
    """Packer 1.6.6 creates an untagged temporary group when aws.security_group_ids is empty, which would need
    every group of the account opened and deleted: the settings refuse it (exit 2) and no rendering allows it."""
    from bakery.errors import ConfigError

    with pytest.raises(ConfigError, match="aws.security_group_ids is empty and aws.builder is packer"):
        _render(subnet_id="", security_group_ids=[])
    for policy in (POLICY, _render("qa"), _render(builder="imagebuilder")):
        actions = {a for st in policy["Statement"] for a in
                   (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])}
        assert not actions & {"ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress",
                              "ec2:DeleteSecurityGroup"}


QA_ROLE_MUST_NOT = {
    "refresh prod's group": Call("autoscaling:StartInstanceRefresh", GROUP + "bakery-prod", owned("prod")),
    "pin prod's group": Call("autoscaling:UpdateAutoScalingGroup", GROUP + "bakery-prod", owned("prod"),
                             context=PINNED),
    "new version of prod's template": Call("ec2:CreateLaunchTemplateVersion", ec2("launch-template/lt-0prod"),
                                           owned("prod")),
    "launch through prod's template": Call("ec2:RunInstances", ec2("launch-template/lt-0prod"), owned("prod")),
    "pass prod's instance role": Call("iam:PassRole", iam("role/bakery-prod-instance"),
                                      context={"iam:PassedToService": "ec2.amazonaws.com"}),
    "write prod's release": Call("ssm:PutParameter", ssm("/bakery/webapp/prod/ami-id"),
                                 context={"ssm:Overwrite": "true"}),
    "read prod's logs": Call("logs:FilterLogEvents", f"arn:aws:logs:{HOME}:{ACCOUNT}:log-group:/bakery/prod"),
}


@pytest.mark.parametrize("path", sorted(QA_ROLE_MUST_NOT))
def test_the_qa_role_cannot_touch_prod(path):
    """`iam-policy --env qa`: the qa job's role bakes and deploys qa, and nothing of prod."""
    assert QA_ROLE_MUST_NOT[path].decide(_render("qa")) != "allow", path


@pytest.mark.parametrize("flow", ["packer build", "packer clean-up", "deploy", "down", "rollback", "distribute",
                                  "gc", "gc leftovers", "logs", "adopt", "aws verify", "data volume hand-over"])
def test_the_qa_role_does_the_qa_job(flow):
    qa = _render("qa")
    denied = [f"{call}: {decision}" for call in FLOWS[flow]() if (decision := call.decide(qa)) != "allow"]
    assert not denied, f"{flow}: " + "\n".join(denied)


def test_the_prod_promote_role_promotes_and_bakes_nothing():
    """`iam-policy --env prod --no-build`: promote (reading qa's release) and deploy prod; no bake, no copy, no
    record, no gc, nothing of qa's fleet; small enough for one managed policy."""
    from bakery.aws.iam_policy import MANAGED_POLICY_LIMIT, policy_size

    prod = _render("prod", build=False)
    denied = [f"{call}: {decision}" for call in promote() if (decision := call.decide(prod)) != "allow"]
    assert not denied, "\n".join(denied)
    bakes = [call for call in packer_build() + distribute() + gc() + aws_verify()
             if call.action in {"ec2:RunInstances", "ec2:CreateImage", "ec2:CopyImage", "ec2:DeregisterImage",
                                "ec2:ModifyImageAttribute", "ssm:PutParameter", "ebs:GetSnapshotBlock"}
             and "webapp/prod" not in call.resource]
    assert bakes and all(call.decide(prod) != "allow" for call in bakes), [str(c) for c in bakes if
                                                                            c.decide(prod) == "allow"]
    assert all(call.decide(prod) != "allow" for call in deploy("qa") if call.action in {
        "autoscaling:UpdateAutoScalingGroup", "ec2:CreateLaunchTemplateVersion", "iam:PassRole"})
    assert policy_size(prod) <= MANAGED_POLICY_LIMIT


# A promote-only role's Releases grant covers parameter/bakery/* (or /bakery/*/<env>/*): without an explicit Deny it
# could write a new readback leaf (write-once only forbids Overwrite) that out-votes a failed verification.
NO_BUILD_ROLE_MUST_NOT = {
    "forge a passing readback record": Call("ssm:PutParameter", ssm(f"{readback_path()}/20991231T000000Z-forged"),
                                            context={"ssm:Overwrite": "false"}),
    "forge a readback record of an image named like the environment": Call(
        "ssm:PutParameter", ssm(f"/bakery/verifications/prod/readback/{VERSION}/{HOME}/ami-0new/forged"),
        context={"ssm:Overwrite": "false"}),
    "forge a copy's record": Call("ssm:PutParameter", ssm(
        f"/bakery/verifications/webapp/copies/{VERSION}/{OTHER}/ami-0forged"), context={"ssm:Overwrite": "false"}),
    "write a version's record before its bake": Call(
        "ssm:PutParameter", ssm("/bakery/verifications/webapp/29991231.001"), context={"ssm:Overwrite": "false"}),
}


@pytest.mark.parametrize("envs", [(), ("prod",)], ids=["every env", "prod"])
@pytest.mark.parametrize("path", sorted(NO_BUILD_ROLE_MUST_NOT))
def test_a_no_build_role_writes_no_verification_record(path, envs):
    """`iam-policy --no-build` (with or without --env): an explicit Deny of PutParameter under
    parameter/bakery/verifications/*, which holds whatever else the role is allowed; its releases still work."""
    policy = _render(*envs, build=False)
    assert NO_BUILD_ROLE_MUST_NOT[path].decide(policy) == "explicit_deny", path
    releases = [c for c in promote() if c.action == "ssm:PutParameter"]
    assert releases and all(call.decide(policy) == "allow" for call in releases)
    assert NO_BUILD_ROLE_MUST_NOT[path].decide(_render(*envs)) != "explicit_deny"  # building roles write records


def test_env_needs_instance_roles_by_environment():
    from bakery.errors import ConfigError

    with pytest.raises(ConfigError, match="aws.instance_roles is a list, which names no environment"):
        _render("qa", instance_roles=["bakery-qa-instance"])
    with pytest.raises(ConfigError, match="names no role for --env staging"):
        _render("staging")
    assert _render(instance_roles=["bakery-qa-instance", "bakery-prod-instance"]) == POLICY  # a list still works


def test_bake_py_names_the_settings_file_it_rendered_from(tmp_path):
    """With --settings, a refusal names that file's field, not bakery.yml's (exit 2, one line)."""
    refused = bake(REPO, "iam-policy", "--settings", "docs/aws-iam-policy.example.yml", "--account", "111122223333",
                   "--env", "staging")
    assert refused.rc == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("bake.py: error: docs/aws-iam-policy.example.yml: aws.instance_roles names no "
                                     "role for --env staging"), refused.stderr


def test_a_larger_project_s_policy_fits_a_role_s_inline_policies_with_room():
    """3 regions (each with its key), 3 environments (an instance role each; their log groups /bakery/<env> under
    the default /bakery/*), 5 accounts, two security groups and longer names than the example: still 5 % under
    IAM's 10,240 characters for a role's inline policies (white space not counted), with either builder."""
    from bakery.aws.iam_policy import INLINE_POLICIES_LIMIT, policy_size

    envs = ("qa", "staging", "production")
    larger = dict(
        regions=["eu-west-1", "eu-central-1", "us-east-1"],
        region_kms_key_ids={"eu-central-1": "alias/bakery-ami", "us-east-1": "alias/bakery-ami"},
        accounts=[f"4444555566{n:02d}" for n in range(5)],
        security_group_ids=["sg-0123456789abcdef0", "sg-0fedcba9876543210"],
        instance_profile="bakery-build-instance-profile", build_role="bakery-build-instance-role",
        instance_roles={env: f"bakery-{env}-instance-role" for env in envs},
        artifacts_bucket="example-company-bakery-artifacts")
    for builder in ("packer", "imagebuilder", "disk"):
        for scope in ((), envs[:2]):
            size = policy_size(_render(*scope, builder=builder, **larger))
            assert size <= INLINE_POLICIES_LIMIT - 512, f"{builder} {scope}: {size} characters"


def test_iam_policy_says_on_stderr_when_the_policy_is_too_big_for_a_managed_policy(capsys):
    from bakery.aws.iam_policy import MANAGED_POLICY_LIMIT, policy_size
    from bakery.cli import main

    assert main(["iam-policy", "--settings", str(REPO / "docs" / "aws-iam-policy.example.yml"),
                 "--account", ACCOUNT]) == 0
    out, err = capsys.readouterr()
    assert policy_size(json.loads(out)) > MANAGED_POLICY_LIMIT  # the example is, today
    assert err.count("\n") == 1 and "attach it inline (aws iam put-role-policy" in err and "6,144" in err
    assert "as 2 managed policies, printed by --part 1 to --part 2" in err


def test_the_parts_are_managed_policies_that_together_decide_as_the_whole(capsys):
    """--part N: the statements in order, each part within a managed policy's 6,144 characters; every flow's call and
    every escalation is decided the same by the parts attached together (an explicit Deny holds in either)."""
    from bakery.aws.iam_policy import MANAGED_POLICY_LIMIT, policy_size
    from bakery.cli import main

    parts = []
    for number in (1, 2):
        assert main(["iam-policy", "--settings", str(REPO / "docs" / "aws-iam-policy.example.yml"),
                     "--account", ACCOUNT, "--part", str(number)]) == 0
        out, err = capsys.readouterr()
        parts.append(json.loads(out))
        assert err == f"bake.py iam-policy: part {number} of 2\n"
    assert all(policy_size(part) <= MANAGED_POLICY_LIMIT for part in parts)
    assert [s for part in parts for s in part["Statement"]] == POLICY["Statement"]
    for call in [*(call for flow in FLOWS.values() for call in flow()), *ESCALATIONS.values()]:
        assert call.decide(*parts) == call.decide(), call
    assert main(["iam-policy", "--settings", str(REPO / "docs" / "aws-iam-policy.example.yml"),
                 "--account", ACCOUNT, "--part", "3"]) == 2
    assert "--part 3: the policy has 2 part(s)" in capsys.readouterr().err


def test_the_imagebuilder_instance_role_doc_is_the_rendering_of_the_example_settings(capsys):
    """docs/aws-imagebuilder-instance-role.json is `bake.py iam-policy --for imagebuilder-instance` for the example
    settings, for the prefixes the code writes and reads; it needs no account (no STS call)."""
    from bakery.aws import iam_policy
    from bakery.aws.bundle import KEY_PREFIX
    from bakery.aws.imagebuilder.instance_profile import ROLE_POLICY_DOC
    from bakery.aws.imagebuilder.resources import LOG_PREFIX
    from bakery.cli import main

    assert (iam_policy.BUNDLES, iam_policy.IMAGE_BUILDER_LOGS) == (KEY_PREFIX, LOG_PREFIX)
    rendered = iam_policy.render_instance_role_policy(_settings())
    assert json.loads((REPO / ROLE_POLICY_DOC).read_text(encoding="utf-8")) == rendered, (
        "regenerate: ./bake.py iam-policy --settings docs/aws-iam-policy.example.yml --for imagebuilder-instance "
        f"> {ROLE_POLICY_DOC}")
    assert main(["iam-policy", "--settings", str(REPO / "docs" / "aws-iam-policy.example.yml"),
                 "--for", "imagebuilder-instance"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == rendered and err == ""
    with pytest.raises(Exception, match="aws.artifacts_bucket is empty"):
        iam_policy.render_instance_role_policy(_settings(artifacts_bucket=""))


# ---- parameters (issue 17): the operator's `bake.py param` and the instance role's reads


@pytest.mark.parametrize("envs", [(), ("qa",)], ids=["every env", "qa"])
def test_the_ci_role_sets_and_reads_the_environment_s_parameters(envs):
    policy = _render(*envs, parameters=PARAMETERS)
    denied = [f"{call}: {decision}" for call in param() if (decision := call.decide(policy)) != "allow"]
    assert not denied, "\n".join(denied)
    assert all(call.decide(_render(*envs)) != "allow" for call in param() if "secretsmanager" in call.action)


PARAM_ROLE_MUST_NOT = {
    "write prod's parameter": Call("ssm:PutParameter", ssm("/webapp/prod/database-password"),
                                   context={"ssm:Overwrite": "true"}),
    "write a parameter no config references": Call("ssm:PutParameter", ssm("/webapp/qa/other"),
                                                   context={"ssm:Overwrite": "true"}),
    "read other parameters": Call("ssm:GetParameter", ssm("/payments/db-password")),
    "list a whole tree": Call("ssm:GetParametersByPath", ssm("/webapp")),
    "delete a parameter": Call("ssm:DeleteParameter", ssm("/webapp/qa/database-password")),
    "read another secret": Call("secretsmanager:GetSecretValue", secret("payments/db")),
    "read a secret named like qa's plus more": Call("secretsmanager:GetSecretValue", secret("webapp/qa/db-admin")),
    "delete the secret": Call("secretsmanager:DeleteSecret", secret("webapp/qa/db")),
    "change the secret's key": Call("secretsmanager:UpdateSecret", secret("webapp/qa/db")),
    "decrypt with the key directly": Call("kms:Decrypt", f"arn:aws:kms:{HOME}:{ACCOUNT}:key/1234"),
    "decrypt through S3": kms_via("kms:Decrypt", "s3"),
}


@pytest.mark.parametrize("path", sorted(PARAM_ROLE_MUST_NOT))
def test_the_qa_role_touches_only_qa_s_references(path):
    assert PARAM_ROLE_MUST_NOT[path].decide(_render("qa", parameters=PARAMETERS)) != "allow", path


def test_the_instance_role_reads_exactly_its_environment_s_references():
    policy = _instance_policy()
    denied = [f"{call}: {decision}" for call in instance_resolve() if (decision := call.decide(policy)) != "allow"]
    assert not denied, "\n".join(denied)
    must_not = [*PARAM_ROLE_MUST_NOT.values(), *[c for c in param() if c.action.split(":")[1].startswith(
        ("Put", "Create", "Describe"))], Call("ssm:GetParameter", ssm("/webapp/prod/database-password")),
        Call("ssm:GetParameterHistory", ssm("/webapp/qa/database-password"))]
    allowed = [str(call) for call in must_not if call.decide(policy) == "allow"]
    assert not allowed, "\n".join(allowed)
    # prod's role decrypts through SSM too, but only what it may read: none of qa's parameters or secrets
    assert all(call.decide(_instance_policy("prod")) != "allow" for call in instance_resolve()
               if not call.action.startswith("kms:"))


def test_an_environment_without_references_needs_no_instance_read_policy():
    from bakery.aws.iam_policy_params import render_instance_read_policy
    from bakery.errors import ConfigError

    with pytest.raises(ConfigError, match="environment 'dev' references no parameter"):
        render_instance_read_policy("dev", ["file:/etc/x"], ACCOUNT)


def test_iam_policy_prints_the_instance_read_policy_of_an_aws_environment(tmp_path):
    import shutil

    shutil.copy(REPO / "bakery.yml", tmp_path / "bakery.yml")
    folder = tmp_path / "inventories" / "qa" / "group_vars" / "all"
    folder.mkdir(parents=True)
    (folder / "deploy.yml").write_text("bakery_deploy: {target: aws, image: webapp, aws: {auto_scaling_group: g, "
                                       "launch_template: t}}\n")
    (folder / "runtime.yml").write_text("bakery_runtime:\n" + "".join(
        f"  K{n}: {ref}\n" for n, ref in enumerate(PARAMETERS["qa"])))
    out = bake(tmp_path, "iam-policy", "--for", "instance", "--env", "qa", "--account", ACCOUNT)
    assert out.rc == 0, out.stderr
    assert json.loads(out.stdout) == _instance_policy()
    ci = bake(tmp_path, "iam-policy", "--settings", str(REPO / "docs" / "aws-iam-policy.example.yml"),
              "--account", ACCOUNT, "--env", "qa")
    assert ci.rc == 0 and json.loads(ci.stdout) == _render("qa", parameters={"qa": PARAMETERS["qa"]}), ci.stderr


# ---- data volumes (issue 17): one tagged EBS volume per slot, handed from an instance to its replacement


@pytest.mark.parametrize("envs, build", [((), True), (("qa",), True), (("qa",), False)],
                         ids=["every env", "qa", "qa without build"])
def test_the_role_hands_the_environment_s_data_volumes_over(envs, build):
    """The reconciler's calls, with the role of every environment, of qa, and of qa that only deploys (which has no
    KmsThroughEc2AndEbs: EBS uses the environment's key through EC2 all the same)."""
    policy = _render(*envs, build=build)
    denied = [f"{call}: {decision}" for call in data_volume_hand_over() if (decision := call.decide(policy)) != "allow"]
    assert not denied, "\n".join(denied)


def _volume(env: str = "qa", **changes: str) -> dict[str, str]:
    return {**{k: v for k, v in data_volume_tags(env).items() if k != "bakery:handover"}, **changes}


def _new_volume(request_tags: dict | None, **context) -> Call:
    return Call("ec2:CreateVolume", ec2("volume/*"), request_tags=request_tags,
                context={"ec2:Encrypted": True, "ec2:VolumeType": "gp3", **context})


# what the qa role must not do to volumes and instances, in either rendering of it (building or not)
DATA_VOLUME_MUST_NOT = {
    "attach prod's volume": Call("ec2:AttachVolume", ec2("volume/vol-0prod"), _volume("prod")),
    "attach a volume to prod's instance": Call("ec2:AttachVolume", ec2("instance/i-0prod"),
                                               fleet_instance_tags("prod")),
    "detach prod's volume": Call("ec2:DetachVolume", ec2("volume/vol-0prod"), _volume("prod")),
    "detach from prod's instance": Call("ec2:DetachVolume", ec2("instance/i-0prod"), fleet_instance_tags("prod")),
    "stop prod's instance": Call("ec2:StopInstances", ec2("instance/i-0prod"), fleet_instance_tags("prod")),
    "terminate prod's instance": Call("ec2:TerminateInstances", ec2("instance/i-0prod"), fleet_instance_tags("prod")),
    "image prod's instance": Call("ec2:CreateImage", ec2("instance/i-0prod"), fleet_instance_tags("prod")),
    "retag prod's instance as qa's": Call("ec2:CreateTags", ec2("instance/i-0prod"), fleet_instance_tags("prod"),
                                          request_tags={"bakery:environment": "qa"}),
    "stop a foreign instance": Call("ec2:StopInstances", ec2("instance/i-0payments"), FOREIGN),
    "attach a foreign volume": Call("ec2:AttachVolume", ec2("volume/vol-0payments"), FOREIGN),
    "attach a volume to a foreign instance": Call("ec2:AttachVolume", ec2("instance/i-0payments"), FOREIGN),
    "create an unencrypted volume": _new_volume(data_volume_tags(), **{"ec2:Encrypted": False}),
    "create a volume of another type": _new_volume(data_volume_tags(), **{"ec2:VolumeType": "io2"}),
    "create a volume for prod": _new_volume(data_volume_tags("prod")),
    "create an untagged volume": _new_volume(None),
    "create a volume with other tag keys": _new_volume({**data_volume_tags(), "team": "web"}),
    "create a volume from prod's snapshot": Call("ec2:CreateVolume", snapshot("snap-0prod"), AMI_TAGS,
                                                 request_tags=data_volume_tags()),
    "move a volume to prod": Call("ec2:CreateTags", ec2("volume/vol-0data"), _volume(),
                                  request_tags={"bakery:environment": "prod"}),
    "disown a volume": Call("ec2:CreateTags", ec2("volume/vol-0data"), _volume(),
                            request_tags={"bakery:managed": "false"}),
    "tag a volume with a key of bakery's and the hand-over": Call(
        "ec2:CreateTags", ec2("volume/vol-0data"), _volume(),
        request_tags={"bakery:handover": "attach:i-0new", "bakery:slot": "3"}),
    "delete every tag of a volume": Call("ec2:DeleteTags", ec2("volume/vol-0data"), _volume()),
    "delete a volume's bakery:managed": Call("ec2:DeleteTags", ec2("volume/vol-0data"), _volume(),
                                             request_tags={"bakery:managed": ""}),
    "mark a hand-over on prod's volume": Call("ec2:CreateTags", ec2("volume/vol-0prod"), _volume("prod"),
                                              request_tags={"bakery:handover": "attach:i-0new"}),
    "delete a data volume": Call("ec2:DeleteVolume", ec2("volume/vol-0data"), _volume()),
    "put a lifecycle hook on prod's group": Call("autoscaling:PutLifecycleHook", GROUP + "bakery-prod",
                                                 owned("prod")),
    "complete prod's lifecycle action": Call("autoscaling:CompleteLifecycleAction", GROUP + "bakery-prod",
                                             owned("prod")),
    "hook a foreign group": Call("autoscaling:PutLifecycleHook", GROUP + "payments", FOREIGN),
    "delete a lifecycle hook": Call("autoscaling:DeleteLifecycleHook", GROUP + "bakery-qa", owned("qa")),
    "use the key through S3": kms_via_ec2("kms:Decrypt", HOME, "s3"),
}
# what no rendering may allow, whatever environments it deploys to
EVERY_ROLE_MUST_NOT = ["stop a foreign instance", "attach a foreign volume", "attach a volume to a foreign instance",
                       "create an unencrypted volume",
                       "create a volume of another type", "create an untagged volume",
                       "create a volume with other tag keys", "create a volume from prod's snapshot", "disown a volume",
                       "tag a volume with a key of bakery's and the hand-over", "delete every tag of a volume",
                       "delete a volume's bakery:managed", "delete a data volume", "hook a foreign group",
                       "delete a lifecycle hook", "use the key through S3"]


@pytest.mark.parametrize("build", [True, False], ids=["building", "deploying only"])
@pytest.mark.parametrize("path", sorted(DATA_VOLUME_MUST_NOT))
def test_the_qa_role_moves_only_qa_s_data_volumes(path, build):
    """IAM decides AttachVolume for the volume and for the instance apart: a role of qa only keeps qa's volumes on qa's
    instances. A building role's statements for Packer's instance (StopInstances, TerminateInstances, CreateImage)
    and its RetagOwn must not reach a fleet's instance either."""
    assert DATA_VOLUME_MUST_NOT[path].decide(_render("qa", build=build)) != "allow", path


@pytest.mark.parametrize("path", EVERY_ROLE_MUST_NOT)
def test_no_role_touches_what_is_not_a_data_volume_of_bakery_s(path):
    for policy in (POLICY, _render("qa", "prod", build=False), _render(builder="disk")):
        assert DATA_VOLUME_MUST_NOT[path].decide(policy) != "allow", path


def test_data_volume_statements_only_for_environments_with_a_data_volume():
    """data_volumes (the project's environments with bakery_deploy.data_volume): none, nothing of the hand-over is
    granted; qa's, the volumes and instances of qa only, also in a role of every environment (the lifecycle hooks
    ride on RefreshOwnGroups: every group the role refreshes). Not known (docs/aws-iam-policy.json, --settings outside
    a project): every environment the role deploys to."""
    import fnmatch

    moves = {"ec2:CreateVolume", "ec2:AttachVolume", "ec2:DetachVolume", "ec2:DeleteTags",
             "autoscaling:PutLifecycleHook", "autoscaling:CompleteLifecycleAction"}
    none = _render(data_volumes=[])
    assert all(call.decide(none) != "allow" for call in data_volume_hand_over() if call.action in moves)
    assert all(call.decide(_render("prod", data_volumes=["qa"])) != "allow" for call in data_volume_hand_over("prod")
               if call.action in moves)
    qa_only = _render(data_volumes=["qa"])
    assert all(call.decide(qa_only) == "allow" for call in data_volume_hand_over("qa"))
    assert all(call.decide(qa_only) != "allow" for call in data_volume_hand_over("prod")
               if call.action in moves and not call.action.startswith("autoscaling:"))
    assert _render("qa", data_volumes=["qa", "prod"]) == _render("qa")
    granted = [pattern for policy in (POLICY, _render("qa", build=False), _render(builder="imagebuilder"))
               for s in policy["Statement"] if s["Effect"] == "Allow"
               for pattern in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])]
    assert not [p for p in granted if fnmatch.fnmatchcase("ec2:DeleteVolume", p)]  # never, in any rendering
