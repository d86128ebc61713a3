"""The Image Builder bundle: everything the build instance needs to run an image's playbook, in one S3 object.

A deterministic .tar.gz (packed like application artifacts: sorted entries,
owner root, mtime 0) of the image's playbook and the group_vars/host_vars
beside it, the roles it bakes (with their dependencies, installed ones under
roles/<name> too; Molecule scenarios and caches left out, as in the layer keys),
the collections its layers use (bakery.layer_collections: those of its collection
roles and the locked ones it names) under collections/ansible_collections/, the
app artifacts it bakes, the image's
testinfra suite, and an inventory and extra-vars file for `ansible-playbook -c
local`. The same inputs give the same bytes, so the S3 key
`bundles/<image>/<sha256>.tar.gz` names the content and an unchanged bundle is
never uploaded twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError

from bakery.artifacts import pack
from bakery.config import PROJECT_FILE, ImageDefinition, Project, RoleRef
from bakery.errors import ConfigError
from bakery.layer_collections import used_collections
from bakery.layers import locked_collections, vars_files_digest
from bakery.provenance import DIGEST_EXCLUDE_PATHS, DIGEST_EXCLUDE_SUFFIXES, digest_dirs
from bakery.role_paths import baked_roles, collection_dir, collection_of

# Where the build phase unpacks the bundle on the build instance (the component removes it before the snapshot).
WORK_DIR = "/var/tmp/bakery-build"
BUNDLE_ROOT = f"{WORK_DIR}/bundle"
KEY_PREFIX = "bundles"


@dataclass
class Bundle:
    image: str
    data: bytes
    sha256: str  # hex
    files: list[str]

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}/{self.image}/{self.sha256}.tar.gz"

    def uri(self, bucket: str) -> str:
        return f"s3://{bucket}/{self.key}"


def _tree(root: Path, arc_root: str) -> dict[str, Path]:
    """Every file under root that can change what a role does (the layer keys' view of a role)."""
    found: dict[str, Path] = {}
    # A symlinked directory is followed: the build instance needs its files (the layer key holds its target).
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = digest_dirs(root, dirpath, dirnames)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if not name.endswith(DIGEST_EXCLUDE_SUFFIXES) and rel not in DIGEST_EXCLUDE_PATHS:
                found[f"{arc_root}/{rel}"] = path
    return found


def _roles(refs: list[RoleRef]) -> dict[str, Path]:
    """Each role once, with the roles it depends on or includes (every role of the project and the installed ones,
    when an include's name is templated); a collection's roles travel with their collection."""
    baked = baked_roles(refs)
    found = {label.rpartition("/")[2]: path for role in baked.values() for label, path in role.any_role}
    found.update((name, role.path) for name, role in baked.items())
    return dict(sorted((name, path) for name, path in found.items() if collection_of(path) is None))


def _collections(project: Project, definition: ImageDefinition) -> dict[str, Path]:
    """`ns.coll` -> its installed directory, for every collection a layer of the image can use."""
    locked = locked_collections(definition)
    used = sorted({name for layer in definition.layers for name in used_collections(layer, locked)})
    found = {name: collection_dir(project.root, name) for name in used}
    return {name: path for name, path in found.items() if path is not None}


def bundle_sources(project: Project, definition: ImageDefinition) -> dict[str, Path]:
    """Archive name -> file on disk, for everything of the project the bake reads."""
    playbook_dir = definition.playbook.parent.resolve()
    sources = {f"playbooks/{definition.playbook.name}": definition.playbook}
    for name in ("group_vars", "host_vars"):
        if (playbook_dir / name).is_dir():
            sources.update(_tree(playbook_dir / name, f"playbooks/{name}"))
    for layer in definition.layers:
        for name in vars_files_digest(layer.play_header, playbook_dir):
            path = (playbook_dir / name).resolve()
            if path.is_relative_to(playbook_dir):
                sources[f"playbooks/{path.relative_to(playbook_dir).as_posix()}"] = path
    for role, path in _roles([layer.role for layer in definition.layers]).items():
        sources.update(_tree(path, f"roles/{role}"))
    for collection, path in _collections(project, definition).items():
        sources.update(_tree(path, f"collections/ansible_collections/{collection.replace('.', '/')}"))
    if (project.root / "ansible.cfg").is_file():
        sources["ansible.cfg"] = project.root / "ansible.cfg"
    suite = image_suite(project, definition)
    if suite is not None:
        sources[f"tests/images/{suite.name}"] = suite
    return sources


def image_suite(project: Project, definition: ImageDefinition) -> Path | None:
    suite = project.root / "tests" / "images" / f"test_{definition.name}.py"
    """The image's testinfra suite, which Image Builder's test phase runs (None: the image has none)."""
    return suite if suite.is_file() else None


def instance_vars(extra_vars: dict[str, Any],
                  role_vars: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Path]]:
    """The bake's extra vars as the build instance sees them: artifact paths point into the unpacked bundle."""
    merged = dict(extra_vars)
    artifacts: dict[str, Path] = {}
    for role, values in sorted(role_vars.items()):
        for key, value in values.items():
            if key == f"{role}_artifact_path":
                local = Path(value)
                arcname = f"artifacts/{role}/{local.name}"
                artifacts[arcname] = local
                value = f"{BUNDLE_ROOT}/{arcname}"
            merged[key] = value
    return merged, artifacts


def build_bundle(project: Project, definition: ImageDefinition, extra_vars: dict[str, Any],
                 role_vars: dict[str, dict[str, Any]]) -> Bundle:
    """Pack the bundle; nothing here depends on the version being baked, so unchanged inputs give the same key."""
    sources = bundle_sources(project, definition)
    merged, artifacts = instance_vars(extra_vars, role_vars)
    sources.update(artifacts)
    groups = ["bakery_build", definition.name.replace("-", "_")]
    host = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_become_method": "su"}
    generated = {
        "bakery/inventory.yml": yaml.safe_dump({"all": {"children": {g: {"hosts": {"localhost": host}}
                                                                     for g in groups}}}, sort_keys=True),
        "bakery/extra-vars.json": json.dumps(merged, indent=2, sort_keys=True, default=str) + "\n",
    }
    with tempfile.TemporaryDirectory(prefix="bakery-bundle-") as tmp:
        staging = Path(tmp)
        for arcname, path in sources.items():
            link = staging / arcname
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
        for arcname, text in generated.items():
            target = staging / arcname
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        files = sorted([*sources, *generated])
        data, _ = pack(staging, files)
    return Bundle(definition.name, data, hashlib.sha256(data).hexdigest(), files)


def require_bucket(bucket: str) -> str:
    if not bucket:
        raise ConfigError(f"{PROJECT_FILE}: aws.artifacts_bucket is empty; the Image Builder builder uploads its "
                          "bundle there: set it to an S3 bucket the build instance profile can read")
    return bucket


def upload_bundle(s3, bucket: str, bundle: Bundle) -> bool:
    """Put the bundle under its content-addressed key unless it is there already; True when uploaded.

    Without s3:ListBucket, S3 answers a missing key's HEAD with 403, not 404:
    that counts as absent too. The key names the content, so putting an object
    that was there after all changes nothing; a denied put still fails clearly.
    """
    try:
        s3.head_object(Bucket=bucket, Key=bundle.key)
        return False
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound", "403"):
            raise
    s3.put_object(Bucket=bucket, Key=bundle.key, Body=bundle.data, ContentType="application/gzip",
                  Metadata={"sha256": bundle.sha256, "bakery-image": bundle.image})
    return True
