"""Image Builder's part of the CI role's policy (bakery.aws.iam_policy renders it for aws.builder imagebuilder only),
and the policy of the role its build and test instances use (docs/aws-imagebuilder-instance-role.json). Pure: no AWS
call.
"""

from __future__ import annotations

from typing import Any, Protocol

from bakery.aws import tags
from bakery.aws.settings import AwsSettings
from bakery.errors import ConfigError

Statement = dict[str, Any]
BUNDLES = "bundles"  # the Image Builder bundles' key prefix (bakery.aws.bundle)
IMAGE_BUILDER_LOGS = "imagebuilder-logs"  # Image Builder's build logs (bakery.aws.imagebuilder.resources)
IMAGE_BUILDER_NAMES = "bakery-*"  # bakery.aws.imagebuilder.resources.resource_name


class Arns(Protocol):
    """What of bakery.aws.iam_policy.Arns this needs (that module imports this one)."""

    partition: str

    def service(self, service: str, resource: str) -> str: ...


def image_builder_statements(s: AwsSettings, arns: Arns) -> list[Statement]:
    """Image Builder: create anything named bakery-*, build only with the request tag; the bundles in S3.

    Get* (reads: bakery's component, recipe, configurations and images) keeps the policy within IAM's size limits.
    Update*Configuration by name only: UpdateDistributionConfiguration has no condition keys (the Service
    Authorization Reference), so an aws:ResourceTag condition on it would never match. A distribution may share
    with anyone (launchPermission, targetAccountIds) and a recipe may start from any parent image: these
    statements are rendered only for aws.builder imagebuilder (docs/aws.md, residual risk)."""
    def ib(resource: str) -> str:
        return arns.service("imagebuilder", resource)

    configurations = [ib(f"infrastructure-configuration/{IMAGE_BUILDER_NAMES}"),
                      ib(f"distribution-configuration/{IMAGE_BUILDER_NAMES}")]
    named = [ib(f"component/{IMAGE_BUILDER_NAMES}/*"), ib(f"image-recipe/{IMAGE_BUILDER_NAMES}/*"),
             *configurations, ib(f"image/{IMAGE_BUILDER_NAMES}/*")]
    statements: list[Statement] = [
        {"Sid": "ImageBuilderBakeryNamed", "Effect": "Allow",
         "Action": ["imagebuilder:CreateComponent", "imagebuilder:CreateImageRecipe",
                    "imagebuilder:CreateInfrastructureConfiguration", "imagebuilder:CreateDistributionConfiguration",
                    "imagebuilder:UpdateInfrastructureConfiguration", "imagebuilder:UpdateDistributionConfiguration",
                    "imagebuilder:TagResource", "imagebuilder:Get*", "imagebuilder:CancelImageCreation"],
         "Resource": named},
        # CreateImage's one resource is the new image: only its name and the request's tags can scope it.
        {"Sid": "ImageBuilderBuildTagged", "Effect": "Allow", "Action": "imagebuilder:CreateImage",
         "Resource": named[-1], "Condition": {"StringEquals": {f"aws:RequestTag/{tags.MANAGED}": "true"}}},
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
    return statements


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
