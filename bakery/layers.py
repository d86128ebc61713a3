"""Layer cache keys: what decides whether a role must run again.

A layer's key is a digest of its parent (the base digest for the first layer),
every file of the role and of the roles it depends on, the play around it
(play vars, vars_files contents, become and friends), the bake-time group_vars
and host_vars beside the playbook, the extra vars of the bake, and the locked
digest of every collection from requirements.lock the layer can use
(bakery.layer_collections: also those named in the bake vars or vars_files, by
a used collection, or routed to by ansible-core's short names; the field is left out when there is none, so keys
of projects without requirements are what they always were), the version of each collection shipped with the
`ansible` package that the layer uses and the lock does not pin (an FQCN role in it, or its name mentioned; left
out when none), and the project's ansible.cfg. Anything that
can change what the role does to the image is in the key; nothing else is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery.config import ImageDefinition, Layer, RoleRef
from bakery.errors import ConfigError
from bakery.layer_collections import bundled_versions, layer_bundled, layer_collections, vars_files
from bakery.provenance import file_digest, sha256_json, tree_digest

# Bump when the way a layer is produced changes, so old cached layers are not reused.
LAYER_FORMAT = 3  # 2: one ansible-playbook run per bake; 3: each role in a container booted from its parent layer


@dataclass
class PlannedLayer:
    layer: Layer
    key: str
    role_digest: str

    @property
    def role(self) -> str:
        return self.layer.role.name


def role_digest(role: RoleRef, known: dict[int, str] | None = None) -> str:
    """Digest of a role's files and, recursively, of the roles it depends on or includes from its tasks.

    The include fields are there only when the role has includes, so other roles' digests stay what they were.
    `known` (id of a RoleRef -> its digest) lets roles shared by many paths (a diamond of includes) be digested once.
    """
    known = {} if known is None else known
    if id(role) not in known:
        data: dict[str, Any] = {
            "files": tree_digest(role.path),
            "dependencies": [[dep.entry, role_digest(dep, known)] for dep in role.dependencies],
        }
        if role.includes:
            data["includes"] = [[ref.name, role_digest(ref, known)] for ref in role.includes]
        if role.any_role:
            data["any_role"] = [[label, tree_digest(path)] for label, path in role.any_role]
        known[id(role)] = sha256_json(data)
    return known[id(role)]


def vars_files_digest(play_header: dict[str, Any], playbook_dir: Path) -> dict[str, str]:
    """Contents of the play's vars_files, which are read at bake time."""
    digests = {}
    for candidate, path in vars_files(play_header, playbook_dir):
        if path.is_file():
            digests[candidate] = file_digest(path)
        elif "{{" not in candidate:
            raise ConfigError(f"vars_files entry '{candidate}' not found (looked for {path})")
    return digests


def bake_vars_digest(playbook_dir: Path) -> str:
    """group_vars/ and host_vars/ beside the playbook: Ansible loads them for the bake."""
    parts = {}
    for name in ("group_vars", "host_vars"):
        path = playbook_dir / name
        parts[name] = tree_digest(path) if path.is_dir() else None
    return sha256_json(parts)


def plan_layers(definition: ImageDefinition, base_digest: str, extra_vars: dict[str, Any],
                role_inputs: dict[str, Any] | None = None, *,
                collections: dict[str, str] | None = None) -> list[PlannedLayer]:
    """Compute every layer's key in order; each key chains on its parent's.

    `role_inputs` are inputs of one role only (e.g. the digest of the artifact it
    installs): they enter that role's key, so they invalidate it and the layers
    after it, never the layers before. `collections` ({ns.coll: digest}) defaults
    to the project's requirements.lock.
    """
    role_inputs = role_inputs or {}
    locked = locked_collections(definition) if collections is None else collections
    bundled = bundled_versions()
    playbook_dir = definition.playbook.parent
    shared = {"bake_vars": bake_vars_digest(playbook_dir), "extra_vars": extra_vars,
              "ansible_cfg": ansible_cfg_digest(definition)}
    parent = base_digest
    planned = []
    known: dict[int, str] = {}  # the RoleRefs live as long as the definition, so their ids stay theirs
    for layer in definition.layers:
        digest = role_digest(layer.role, known)
        used = layer_collections(layer, locked) if locked else {}
        shipped = layer_bundled(layer, bundled, locked)
        key = sha256_json({
            **({"collections": used} if used else {}),
            **({"bundled_collections": shipped} if shipped else {}),
            "format": LAYER_FORMAT,
            "parent": parent,
            "role": layer.role.name,
            "role_digest": digest,
            "entry": layer.role.entry,
            "play": layer.play_header,
            "vars_files": vars_files_digest(layer.play_header, playbook_dir),
            "role_inputs": role_inputs.get(layer.role.name),
            **shared,
        })
        planned.append(PlannedLayer(layer, key, digest))
        parent = key
    return planned


def project_root(definition: ImageDefinition) -> Path:
    return definition.root or definition.playbook.parent.parent


def ansible_cfg_digest(definition: ImageDefinition) -> str | None:
    """The project's ansible.cfg: ansible-playbook reads it for every layer (hash_behaviour, jinja2_native...)."""
    path = project_root(definition) / "ansible.cfg"
    return file_digest(path) if path.is_file() else None


def locked_collections(definition: ImageDefinition) -> dict[str, str]:
    """{ns.coll: digest} of requirements.lock beside the image's project ({} without one)."""
    from bakery.deps.gate import locked_collections as from_lock

    return from_lock(project_root(definition))


def input_digest(planned: list[PlannedLayer], base_digest: str) -> str:
    """The whole image's inputs: the last layer key chains every earlier one and the base."""
    return planned[-1].key if planned else base_digest
