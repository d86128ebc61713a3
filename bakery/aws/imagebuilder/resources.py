"""The EC2 Image Builder resources one bake needs: component, image recipe, infrastructure and distribution configs.

Each resource is named `bakery-<image>` and found again by that name, so a
project never piles up configurations. Components and recipes are immutable
per semantic version: a component is reused while its document is unchanged
(its digest is in the description) and otherwise created with the next patch
version, both decided over every version of it (ListComponents with byName
false: byName true answers one aggregated entry per name); a recipe gets
`<YYYYMMDD>.<NNN>.<n>` from the bakery version it bakes, n bumped past any left
by an earlier attempt (ListImageRecipes has no byName: one summary per
version). Infrastructure and distribution configurations are updated in place.
The distribution never updates a launch template: bakery pins launch template
versions itself at deploy time.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bakery.aws import tags as tag_names
from bakery.aws.imagebuilder import instance_profile
from bakery.config import PROJECT_FILE
from bakery.errors import ConfigError

TEMPLATE = Path(__file__).parent.parent / "templates" / "imagebuilder-component.yml"
TEST_DIR = "/var/tmp/bakery-test"
# Installed on the build/test instance in throwaway venvs; kept equal to requirements.txt (a test checks).
ANSIBLE_CORE_VERSION = "2.19.14"
PYTEST_VERSION = "9.2.0"
TESTINFRA_VERSION = "10.2.2"
LOG_PREFIX = "imagebuilder-logs"
IMDS_HOP_LIMIT = 2
ROOT_VOLUME_TYPE = "gp3"
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)\Z")
_PLACEHOLDER = re.compile(r"__[A-Z0-9_]+__")


def resource_name(image: str) -> str:
    return f"bakery-{image}"


def resource_tags(image: str) -> dict[str, str]:
    return {tag_names.MANAGED: "true", tag_names.IMAGE: image}


def component_document(image: str, bundle_uri: str, bundle_sha256: str) -> str:
    """The component's YAML document for this image and bundle; parsed here so a broken template never reaches AWS."""
    from bakery.aws.bundle import WORK_DIR

    values = {
        "__IMAGE__": image, "__BUNDLE_URI__": bundle_uri, "__BUNDLE_SHA256__": bundle_sha256, "__WORK_DIR__": WORK_DIR,
        "__TEST_DIR__": TEST_DIR, "__ANSIBLE_CORE_VERSION__": ANSIBLE_CORE_VERSION,
        "__PYTEST_VERSION__": PYTEST_VERSION, "__TESTINFRA_VERSION__": TESTINFRA_VERSION,
    }
    checks = {"__IMAGE__": r"[a-z0-9][a-z0-9_-]*", "__BUNDLE_URI__": r"s3://[a-z0-9.-]+/[A-Za-z0-9/_.-]+",
              "__BUNDLE_SHA256__": r"[0-9a-f]{64}"}
    for key, pattern in checks.items():
        if not re.fullmatch(pattern, values[key]):
            raise ConfigError(f"cannot put {values[key]!r} into the Image Builder component ({key.strip('_').lower()})")
    text = TEMPLATE.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(key, value)
    left = _PLACEHOLDER.search(text)
    if left:
        raise ConfigError(f"{TEMPLATE}: placeholder {left.group()} has no value")
    document = yaml.safe_load(text)
    phases = [p["name"] for p in document.get("phases", [])] if isinstance(document, dict) else None
    if phases != ["build", "validate", "test"]:
        raise ConfigError(f"{TEMPLATE}: must be a component document with the phases build, validate, test")
    return text


def document_digest(document: str) -> str:
    return "sha256:" + hashlib.sha256(document.encode()).hexdigest()


def component_parameters(version: str, git_commit: str, release_file: str) -> list[dict[str, Any]]:
    """The per-version values the component reads: what /etc/image-release says and what the test phase checks."""
    if not re.fullmatch(r"\d{8}\.\d{3}", version) or not re.fullmatch(r"[0-9a-f]{7,40}|unknown", git_commit):
        raise ConfigError(f"version {version!r} / commit {git_commit!r} "
                          "cannot be passed to the Image Builder component")
    release = base64.b64encode(release_file.encode()).decode()
    return [{"name": "ImageVersion", "value": [version]}, {"name": "GitCommit", "value": [git_commit]},
            {"name": "ImageRelease", "value": [release]}]


def _all(call: Callable[..., dict[str, Any]], key: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Every item of a paginated Image Builder list call."""
    items: list[dict[str, Any]] = []
    while True:
        page = call(**kwargs)
        items += page.get(key, [])
        if not page.get("nextToken"):
            return items
        kwargs["nextToken"] = page["nextToken"]


def _by_name(name: str) -> list[dict[str, Any]]:
    return [{"name": "name", "values": [name]}]


def _semver(text: str) -> tuple[int, int, int] | None:
    found = _SEMVER.match(text)
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def component_versions(ib, name: str) -> list[dict[str, Any]]:
    """Every version of the named component, one entry each, deprecated ones included.

    byName=True would answer one entry per name with all its versions
    aggregated, so neither an older version's document nor the highest number
    could be seen; byName=False answers one entry per version. The default
    listing leaves DEPRECATED versions out, and their numbers are still taken,
    so they are asked for with the status filter.
    """
    found: list[dict[str, Any]] = []
    for extra in ([], [{"name": "status", "values": ["DEPRECATED"]}]):
        found += _all(ib.list_components, "componentVersionList", owner="Self", filters=[*_by_name(name), *extra],
                      byName=False)
    return [version for version in found if version.get("name") == name]


def ensure_component(ib, image: str, document: str, token: str) -> tuple[str, bool]:
    """The component for this exact document: (arn, created).

    An active version with the same document is reused, whichever version it
    is; else a new version one patch above the highest one.
    """
    name = resource_name(image)
    digest = document_digest(document)
    versions = component_versions(ib, name)
    for found in versions:
        if digest in found.get("description", "") and found.get("status", "ACTIVE") == "ACTIVE":
            return found["arn"], False
    numbers = [v for v in (_semver(found.get("version", "")) for found in versions) if v]
    major, minor, patch = max(numbers) if numbers else (1, 0, -1)
    created = ib.create_component(
        name=name, semanticVersion=f"{major}.{minor}.{patch + 1}", platform="Linux", data=document,
        description=f"bakery image {image}: Ansible bake, validate, testinfra; document {digest}",
        changeDescription=f"document {digest}", tags=resource_tags(image), clientToken=token,
    )
    return created["componentBuildVersionArn"], True


def recipe_version(version: str, existing: list[str]) -> str:
    """`<YYYYMMDD>.<NNN>.<n>` for bakery version YYYYMMDD.NNN: ordered like the versions, n past earlier attempts."""
    day, number = (int(part) for part in version.split("."))
    patches = [v[2] for v in map(_semver, existing) if v and v[:2] == (day, number)]
    return f"{day}.{number}.{max(patches) + 1 if patches else 0}"


def ensure_recipe(ib, image: str, version: str, *, component_arn: str, parameters: list[dict[str, Any]],
                  parent_ami: str, root_device: str, volume_size: int, kms_key_id: str, token: str) -> str:
    """A new recipe version on the base AMI, with the component and an encrypted root volume."""
    name = resource_name(image)
    existing = [found["arn"].rsplit("/", 1)[-1] for found in
                _all(ib.list_image_recipes, "imageRecipeSummaryList", owner="Self", filters=_by_name(name))]
    ebs: dict[str, Any] = {"encrypted": True, "deleteOnTermination": True, "volumeSize": volume_size,
                           "volumeType": ROOT_VOLUME_TYPE}
    if kms_key_id:
        ebs["kmsKeyId"] = kms_key_id
    created = ib.create_image_recipe(
        name=name, semanticVersion=recipe_version(version, existing),
        description=f"bakery image {image} version {version}",
        components=[{"componentArn": component_arn, "parameters": parameters}], parentImage=parent_ami,
        blockDeviceMappings=[{"deviceName": root_device, "ebs": ebs}],
        # Image Builder installs the SSM agent it drives the build with; it must not stay in the image.
        additionalInstanceConfiguration={"systemsManagerAgent": {"uninstallAfterBuild": True}},
        tags=resource_tags(image), clientToken=token,
    )
    return created["imageRecipeArn"]


def instance_role_needs(bucket: str) -> str:
    """What the build instance's role needs for the bundles and logs bakery puts in `bucket` (for messages)."""
    from bakery.aws.bundle import KEY_PREFIX

    return instance_profile.needs(bucket, LOG_PREFIX, KEY_PREFIX)


def infrastructure_spec(image: str, settings, bucket: str) -> dict[str, Any]:
    """Where builds run: the build instance's profile, size and network; IMDSv2 only; no instance kept on failure."""
    if not settings.instance_profile:
        raise ConfigError(f"{PROJECT_FILE}: aws.instance_profile is empty; Image Builder needs an instance profile "
                          f"for its build and test instances, whose role has {instance_role_needs(bucket)}: set it")
    spec: dict[str, Any] = {
        "description": f"bakery build instances for image {image}",
        "instanceTypes": [settings.instance_type],
        "instanceProfileName": settings.instance_profile,
        "terminateInstanceOnFailure": True,
        "instanceMetadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": IMDS_HOP_LIMIT},
        "logging": {"s3Logs": {"s3BucketName": bucket, "s3KeyPrefix": f"{LOG_PREFIX}/{image}"}},
        "resourceTags": resource_tags(image),
    }
    if settings.subnet_id:
        spec["subnetId"] = settings.subnet_id
    if settings.security_group_ids:
        spec["securityGroupIds"] = list(settings.security_group_ids)
    return spec


def distribution_spec(image: str, version: str, keys: dict[str, str], accounts: list[str],
                      ami_tags: dict[str, str]) -> dict[str, Any]:
    """Where the AMI goes: every region of `keys` (region -> its EBS key, '' = the region's default key).

    Each copy is encrypted with its region's key and carries the provenance tags.
    No launch permission for `accounts`: nothing is shared before the version
    passed `bake.py verify --target aws`, so `bake.py distribute` shares it then
    (`accounts` stays in the signature for the builder's call). No launch
    template update.
    """
    distributions = []
    for region, key in keys.items():
        ami: dict[str, Any] = {
            "name": f"bakery-{image}-{version}-{{{{ imagebuilder:buildDate }}}}",
            "description": f"bakery image {image} version {version}",
            "amiTags": dict(ami_tags),
        }
        if key:
            ami["kmsKeyId"] = key
        distributions.append({"region": region, "amiDistributionConfiguration": ami})
    return {"description": f"bakery AMIs of image {image}", "distributions": distributions}


def _ensure_config(ib, kind: str, name: str, spec: dict[str, Any], tags: dict[str, str], token: str) -> str:
    """Create the named configuration, or update it in place when it exists already."""
    listing = {"infrastructure": ("list_infrastructure_configurations", "infrastructureConfigurationSummaryList"),
               "distribution": ("list_distribution_configurations", "distributionConfigurationSummaryList")}[kind]
    arn_key = f"{kind}ConfigurationArn"
    found = [c for c in _all(getattr(ib, listing[0]), listing[1], filters=_by_name(name)) if c.get("name") == name]
    if found:
        getattr(ib, f"update_{kind}_configuration")(**{arn_key: found[0]["arn"]}, **spec, clientToken=token)
        return found[0]["arn"]
    created = getattr(ib, f"create_{kind}_configuration")(name=name, **spec, tags=tags, clientToken=token)
    return created[arn_key]


def ensure_infrastructure(ib, image: str, spec: dict[str, Any], token: str) -> str:
    return _ensure_config(ib, "infrastructure", resource_name(image), spec, resource_tags(image), token)


def ensure_distribution(ib, image: str, spec: dict[str, Any], token: str) -> str:
    return _ensure_config(ib, "distribution", resource_name(image), spec, resource_tags(image), token)
