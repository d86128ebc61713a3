"""The Image Builder build instance's profile: what it needs, and the part of it IAM lets bakery check up front.

Image Builder launches the build instance (and later the test instance) with
`aws.instance_profile` and drives it through Systems Manager; the instance
itself fetches the component, downloads the bundle and uploads its logs. So the
profile's role needs the AWS managed policies AmazonSSMManagedInstanceCore and
EC2InstanceProfileForImageBuilder, read of the bundles and write of the logs
(`bake.py iam-policy --for imagebuilder-instance`). A profile without them fails only
after the build instance has been waited for (many minutes), so before a build
starts bakery checks what it can read: the profile exists, has a role, and the
role has AmazonSSMManagedInstanceCore attached. The S3 grants may live in any
policy (inline or managed), which only a policy simulation could tell, so they
are named in the messages, not checked.
"""

from __future__ import annotations

import re

from botocore.exceptions import ClientError

from bakery.config import PROJECT_FILE
from bakery.errors import ConfigError

ROLE_POLICY_DOC = "docs/aws-imagebuilder-instance-role.json"
SSM_CORE = "AmazonSSMManagedInstanceCore"
IMAGE_BUILDER_PROFILE = "EC2InstanceProfileForImageBuilder"
_SSM_CORE_ARN = re.compile(rf"^arn:aws[a-z-]*:iam::aws:policy/{SSM_CORE}$")


def needs(bucket: str, log_prefix: str, bundle_prefix: str) -> str:
    """Everything the build instance's role needs, in one phrase (for error messages)."""
    return (f"the AWS managed policies {SSM_CORE} and {IMAGE_BUILDER_PROFILE} attached, s3:GetObject on "
            f"s3://{bucket}/{bundle_prefix}/* and s3:PutObject on s3://{bucket}/{log_prefix}/* "
            f"(./bake.py iam-policy --for imagebuilder-instance prints that policy; {ROLE_POLICY_DOC})")


def check_instance_profile(iam, name: str, what_it_needs: str) -> str:
    """Fail with one line unless profile `name` exists with a role that has AmazonSSMManagedInstanceCore; its role."""
    field = f"{PROJECT_FILE}: aws.instance_profile '{name}'"
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchEntity":
            raise ConfigError(f"{field}: no such instance profile in this account; create it with a role that has "
                              f"{what_it_needs}, or name an existing one") from exc
        raise
    roles = [role["RoleName"] for role in profile.get("Roles") or []]
    if not roles:
        raise ConfigError(f"{field} has no role; add one (aws iam add-role-to-instance-profile) that has "
                          f"{what_it_needs}")
    role = roles[0]  # an instance profile holds at most one role
    attached = [policy["PolicyArn"] for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=role)
                for policy in page.get("AttachedPolicies", [])]
    if not any(_SSM_CORE_ARN.match(arn) for arn in attached):
        raise ConfigError(f"{field}: its role {role} does not have the AWS managed policy {SSM_CORE} attached "
                          f"(Image Builder drives the build instance through Systems Manager); attach it: aws iam "
                          f"attach-role-policy --role-name {role} --policy-arn arn:aws:iam::aws:policy/{SSM_CORE} "
                          f"(the role needs {what_it_needs})")
    return role
