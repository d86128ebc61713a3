"""The AWS side of the catalog, read back: versions from AMI tags, releases from SSM.

On AWS the source of truth is AWS itself: every version is an AMI tagged
bakery:image/bakery:version (bakery.aws.tags) and every environment's released
version is `/bakery/<image>/<env>/ami-id` and `/bakery/<image>/<env>/version`
in Parameter Store, in the home region (written by bakery.aws.releases after a
successful refresh). `bake.py images --target aws` and `bake.py gc --target aws` both read them here.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bakery.aws import amis, tags
from bakery.aws.clients import client, resolve_region
from bakery.aws.releases import AMI_ID, VERSION

RELEASE_ROOT = "/bakery/"
RELEASE_PARAMETER = re.compile(rf"^/bakery/(?P<image>[^/]+)/(?P<env>[^/]+)/(?P<key>{AMI_ID}|{VERSION})$")


@dataclass
class Release:
    """What one environment runs of one image, as its SSM parameters say."""

    image: str
    env: str
    region: str = ""
    ami_id: str = ""
    version: str = ""
    parameter: str = ""  # the ami-id parameter's name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AmiVersion:
    """One managed AMI in one region, with the facts its tags carry."""

    region: str
    ami_id: str
    image: str
    version: str
    state: str
    created: str
    git_commit: str = ""
    snapshots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def managed_amis(ec2, region: str, image: str | None = None) -> list[AmiVersion]:
    """Every AMI this tool made in `region` (tag bakery:managed=true), optionally of one image."""
    wanted = {tags.MANAGED: "true", **({tags.IMAGE: image} if image else {})}
    found = []
    for raw in amis.find_amis(ec2, wanted):
        t = tags.from_tag_list(raw.get("Tags"))
        found.append(AmiVersion(region=region, ami_id=raw["ImageId"], image=t.get(tags.IMAGE, ""),
                                version=t.get(tags.VERSION, ""), state=raw.get("State", ""),
                                created=raw.get("CreationDate", ""), git_commit=t.get(tags.GIT_COMMIT, ""),
                                snapshots=amis.snapshot_ids(raw)))
    return found


def read_releases(ssm, image: str | None = None) -> list[Release]:
    """Every environment's release from `/bakery/<image>/<env>/{ami-id,version}` in the client's region.

    Sorted by image and env.
    """
    found: dict[tuple[str, str], Release] = {}
    path = f"{RELEASE_ROOT}{image}/" if image else RELEASE_ROOT
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=path, Recursive=True):
        for parameter in page["Parameters"]:
            match = RELEASE_PARAMETER.match(parameter["Name"])
            if not match:
                continue
            release = found.setdefault((match["image"], match["env"]),
                                       Release(image=match["image"], env=match["env"], region=ssm.meta.region_name))
            if match["key"] == AMI_ID:
                release.ami_id, release.parameter = parameter["Value"], parameter["Name"]
            else:
                release.version = parameter["Value"]
    return [found[key] for key in sorted(found)]


def environment_regions(project) -> list[str]:
    """Regions the project's aws environments deploy to (each keeps its release parameters there)."""
    from bakery.environments import environment_names, load_environment

    regions = []
    for name in environment_names(project):
        env = load_environment(project, name, check_promotion=False)
        if env.target == "aws" and env.aws.get("region"):
            regions.append(env.aws["region"])
    return regions


def aws_images(settings, image: str | None = None, env_regions: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Versions in the home region (newest first per image) and which environment runs which.

    Releases are read in every region given.
    """
    home = resolve_region(settings.region)
    versions = managed_amis(client("ec2", home), home, image)
    released = [r for region in dict.fromkeys([home, *env_regions])
                for r in read_releases(client("ssm", region), image)]
    rows = []
    for ami in sorted(versions, key=lambda a: (a.image, a.version), reverse=True):
        envs = [r.env for r in released
                if r.image == ami.image and (r.ami_id == ami.ami_id or r.version == ami.version)]
        rows.append({**ami.to_dict(), "environments": envs})
    rows.sort(key=lambda r: r["image"])  # stable: images alphabetically, versions newest first within each
    return {"region": home, "versions": rows, "releases": [r.to_dict() for r in released]}
