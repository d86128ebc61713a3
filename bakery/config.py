"""Project and image-definition loading and validation.

Everything a user can get wrong in a file is checked here, before any container
starts, and reported as one line naming the file, the field and what to do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from bakery.disks.layout import Layout, parse_layout
from bakery.errors import ConfigError
from bakery.files import read_text
from bakery.role_includes import every_role, include_target, role_include_names, templated
from bakery.role_paths import (
    FoundRole,
    baked_names,
    collection_names,
    collection_of,
    entry_name,
    find_role,
    meta_file,
    missing_message,
)

PROJECT_FILE = "bakery.yml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
# An image's AWS release parameters are /bakery/<image>/<env>/...; /bakery/verifications/ holds the write-once
# verification records (bakery.aws.verification_record), where the IAM policy denies any overwrite.
RESERVED_IMAGE_NAMES = {"verifications": "/bakery/verifications/ holds the AWS verification records, and the image's "
                                         "release parameters /bakery/<image>/<env>/... would land there"}
# Directories ansible-playbook searches before ANSIBLE_ROLES_PATH / COLLECTIONS_PATH (the layer playbook is written
# into playbooks/): what is there would silently replace roles/ and the locked requirements.
BESIDE_PLAYBOOK = {
    "roles": "roles/ and requirements (ansible searches beside the playbook first): move its roles to roles/ "
             "(or list them in requirements.yml)",
    "collections": "the locked collections and requirements (ansible searches beside the playbook first): list its "
                   "collections in requirements.yml and run: bake.py deps",
}
# Play keys that would run work outside a role: bakery caches one layer per role,
# so such work would either be repeated in every layer or silently skipped.
TASK_KEYS = ("pre_tasks", "tasks", "post_tasks", "handlers", "import_playbook")
IMAGE_SETTING_KEYS = {"base", "description", "artifacts", "health_check", "disk", "verify"}
VERIFY_KEYS = {"role_tests"}
PROJECT_KEYS = {"images", "default_base", "aws", "base"}  # base: bakery.base_settings
DEFAULT_BASE = "bookworm"


def reserved_name(name: str) -> str:
    return (f"image name '{name}' is reserved: {RESERVED_IMAGE_NAMES[name]}; rename playbooks/{name}.yml "
            "(and its entry in bakery.yml)")


def load_yaml(path: Path, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """Parse a YAML file, turning syntax errors into one line with file and position."""
    text = read_text(path)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: malformed YAML: {problem}; fix the syntax") from exc


@dataclass(frozen=True)
class RoleRef:
    """One role entry of a play: the role's directory and the parameters given with it."""

    name: str
    path: Path
    entry: Any  # the entry as written in the playbook (string or mapping)
    dependencies: tuple[RoleRef, ...] = ()
    third_party: bool = False  # installed from requirements.yml (or shipped with ansible), not under roles/
    includes: tuple[RoleRef, ...] = ()  # roles its tasks/handlers include_role/import_role by name
    # (label, directory) of every role, when a task includes a role by a templated name (bakery.role_includes)
    any_role: tuple[tuple[str, Path], ...] = ()


@dataclass(frozen=True)
class Layer:
    """One cached step of a bake: one role of one play."""

    position: int
    play_index: int
    play_header: dict[str, Any]
    role: RoleRef
    playbook: Path | None = None  # its group_vars/, host_vars/ and vars_files apply (bakery.layer_collections)


@dataclass
class ImageDefinition:
    """A playbook in playbooks/<image>.yml plus its base, split into role layers."""

    name: str
    playbook: Path
    base: str
    layers: list[Layer] = field(default_factory=list)
    # role name -> artifact name: the role gets <role>_artifact_path/_sha256/_version at bake time
    artifacts: dict[str, str] = field(default_factory=dict)
    # {port, path}: what `verify` probes from inside an instance booted with no network
    health_check: dict[str, Any] = field(default_factory=dict)
    # the bootable disk's partitions (bakery.yml images.<name>.disk; the CIS layout when absent)
    disk: Layout = field(default_factory=lambda: parse_layout(None, ""))
    # third-party roles whose own molecule/*/tests verify runs too (bakery.yml images.<name>.verify.role_tests)
    role_tests: list[str] = field(default_factory=list)
    root: Path | None = None  # the project's root: where requirements.lock and .bakery/galaxy/ are


class Project:
    """A bakery project: bakery.yml, roles/, playbooks/, inventories/ and .bakery/ state."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.settings = self._load_settings()
        # role directory -> (reached roles on the chain, resolved role, reached roles): see _resolve
        self._resolved: dict[Path, list[tuple[frozenset[str], RoleRef, frozenset[str]]]] = {}

    @classmethod
    def discover(cls, explicit: str | None = None) -> Project:
        """Find the project from --project, $BAKERY_PROJECT or the nearest bakery.yml upwards."""
        start = explicit or os.environ.get("BAKERY_PROJECT")
        if start:
            root = Path(start)
            if not (root / PROJECT_FILE).is_file():
                raise ConfigError(f"{root}: no {PROJECT_FILE} here; point --project at a bakery project")
            return cls(root)
        here = Path.cwd().resolve()
        for candidate in (here, *here.parents):
            if (candidate / PROJECT_FILE).is_file():
                return cls(candidate)
        raise ConfigError(f"no {PROJECT_FILE} in {here} or its parents; run bake.py inside a bakery project")

    @property
    def state_dir(self) -> Path:
        return self.root / ".bakery"

    @property
    def roles_dir(self) -> Path:
        return self.root / "roles"

    @property
    def playbooks_dir(self) -> Path:
        return self.root / "playbooks"

    def _load_settings(self) -> dict[str, Any]:
        path = self.root / PROJECT_FILE
        data = load_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        unknown = sorted(set(data) - PROJECT_KEYS)
        if unknown:
            raise ConfigError(f"{path}: unknown key '{unknown[0]}'; known keys: {', '.join(sorted(PROJECT_KEYS))}")
        images = data.get("images") or {}
        if not isinstance(images, dict):
            raise ConfigError(f"{path}: 'images' must be a mapping of image name to settings")
        for name, settings in images.items():
            if name in RESERVED_IMAGE_NAMES:
                raise ConfigError(f"{path}: images.{name}: {reserved_name(name)}")
            settings = settings or {}
            if not isinstance(settings, dict):
                raise ConfigError(f"{path}: images.{name} must be a mapping")
            bad = sorted(set(settings) - IMAGE_SETTING_KEYS)
            if bad:
                raise ConfigError(
                    f"{path}: images.{name}: unknown key '{bad[0]}'; "
                    f"known keys: {', '.join(sorted(IMAGE_SETTING_KEYS))}"
                )
            if "base" in settings and not isinstance(settings["base"], str):
                raise ConfigError(f"{path}: images.{name}.base must be a string (a release name or an image reference)")
            artifacts = settings.get("artifacts") or {}
            if not isinstance(artifacts, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in artifacts.items()):
                raise ConfigError(f"{path}: images.{name}.artifacts must map a role name to an artifact name, "
                                  "e.g. {webapp: webapp}")
        data["images"] = images
        from bakery.aws.settings import load_aws_settings

        data["aws"] = load_aws_settings(data.get("aws"), str(path))
        return data

    @property
    def aws(self):
        """The project's aws settings (bakery.aws.settings.AwsSettings); defaults when bakery.yml has no `aws:`."""
        return self.settings["aws"]

    def image_names(self) -> list[str]:
        if not self.playbooks_dir.is_dir():
            return []
        return sorted(p.stem for p in self.playbooks_dir.glob("*.yml") if NAME_RE.match(p.stem))

    def image(self, name: str) -> ImageDefinition:
        """Load and validate playbooks/<name>.yml into role layers."""
        self._resolved.clear()
        if not NAME_RE.match(name):
            raise ConfigError(
                f"image name '{name}' is invalid: use lower-case letters, digits, '-' and '_' "
                "(it names playbooks/<image>.yml)"
            )
        if name in RESERVED_IMAGE_NAMES:
            raise ConfigError(reserved_name(name))
        playbook = self.playbooks_dir / f"{name}.yml"
        if not playbook.is_file():
            known = ", ".join(self.image_names()) or "none"
            raise ConfigError(f"unknown image '{name}': {playbook} does not exist (known images: {known})")
        for shadow, why in BESIDE_PLAYBOOK.items():
            if (self.playbooks_dir / shadow).is_dir():
                raise ConfigError(f"playbooks/{shadow}/ would shadow {why}")
        settings = self.settings["images"].get(name) or {}
        base = settings.get("base") or self.settings.get("default_base") or DEFAULT_BASE
        definition = ImageDefinition(name=name, playbook=playbook, base=base,
                                     artifacts=dict(settings.get("artifacts") or {}),
                                     health_check=self._health_check(name, settings.get("health_check")),
                                     disk=parse_layout(settings.get("disk"), f"{PROJECT_FILE}: images.{name}.disk"),
                                     root=self.root)
        definition.layers = self._layers(playbook)
        definition.role_tests = self._role_tests(name, settings.get("verify"), definition.layers)
        roles = {layer.role.name for layer in definition.layers}
        for role in definition.artifacts:
            if role not in roles:
                raise ConfigError(f"{PROJECT_FILE}: images.{name}.artifacts names role '{role}', "
                                  f"which {self._rel(playbook)} does not bake")
        return definition

    def _health_check(self, name: str, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        where = f"{PROJECT_FILE}: images.{name}.health_check"
        if not isinstance(value, dict) or set(value) - {"port", "path"}:
            raise ConfigError(f"{where} must be a mapping with 'port' and 'path', got {value!r}")
        port, path = value.get("port", 8080), value.get("path", "/health")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{where}.port must be a TCP port number, got {port!r}")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(f"{where}.path must start with '/', got {path!r}")
        return {"port": port, "path": path}

    def _role_tests(self, name: str, value: Any, layers: list[Layer]) -> list[str]:
        """verify.role_tests: roles of this image whose own Molecule tests verify runs (community roles' are off)."""
        where = f"{PROJECT_FILE}: images.{name}.verify"
        if value is None:
            return []
        if not isinstance(value, dict) or set(value) - VERIFY_KEYS:
            raise ConfigError(f"{where} must be a mapping with only {', '.join(sorted(VERIFY_KEYS))}, got {value!r}")
        tests = value.get("role_tests") or []
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise ConfigError(f"{where}.role_tests must be a list of role names, got {tests!r}")
        baked = baked_names([layer.role for layer in layers])
        for role in tests:
            if role not in baked:
                raise ConfigError(f"{where}.role_tests names role '{role}', which playbooks/{name}.yml does not bake "
                                  "(as a role or a dependency); remove it or add the role to the playbook")
        return list(dict.fromkeys(tests))

    def _layers(self, playbook: Path) -> list[Layer]:
        plays = load_yaml(playbook)
        rel = self._rel(playbook)
        if not isinstance(plays, list) or not plays:
            raise ConfigError(f"{rel}: a playbook must be a non-empty list of plays")
        layers: list[Layer] = []
        for index, play in enumerate(plays, start=1):
            if not isinstance(play, dict):
                raise ConfigError(f"{rel}: play {index} must be a mapping, got {type(play).__name__}")
            for key in TASK_KEYS:
                if key in play:
                    raise ConfigError(
                        f"{rel}: play {index} has '{key}'; bakery bakes and caches one layer per role, "
                        "so move this work into a role"
                    )
            roles = play.get("roles")
            if not isinstance(roles, list) or not roles:
                raise ConfigError(f"{rel}: play {index} needs a non-empty 'roles' list")
            header = {k: v for k, v in play.items() if k != "roles"}
            collections = collection_names(play.get("collections"), f"{rel}: play {index}")
            for entry in roles:
                role = self.role(entry, where=f"{rel}: play {index}", collections=collections)
                layers.append(Layer(len(layers), index, header, role, playbook))
        return layers

    def role(self, entry: Any, where: str, chain: tuple[str, ...] = (), within: str | None = None,
             collections: tuple[str, ...] = ()) -> RoleRef:
        """Resolve a role entry (name or mapping) to its directory and its dependencies (bakery.role_paths).

        A short name resolves first in `within` (the collection of the role that depends on this one), then in
        `collections` (the play's `collections:`, or the depending role's meta one), then in the roles paths.
        """
        return self._role(entry, where, chain, within, collections)[0]

    def _role(self, entry: Any, where: str, chain: tuple[str, ...], within: str | None,
              collections: tuple[str, ...]) -> tuple[RoleRef, frozenset[str]]:
        name = entry_name(entry, where)
        found = find_role(self.root, name, within, collections)
        if found is None:
            raise ConfigError(f"{where}: {missing_message(name, self._rel(self.roles_dir))}")
        if found.name in chain:
            raise ConfigError(f"{where}: role dependency cycle: {' -> '.join((*chain, found.name))}")
        return self._resolve(found, entry, chain)

    def _resolve(self, found: FoundRole, entry: Any, chain: tuple[str, ...]) -> tuple[RoleRef, frozenset[str]]:
        """The role with its dependencies and includes, and the names of every role it reaches.

        What a role resolves to depends only on its directory and on which of the roles it reaches are already
        on the chain (those are cycle errors or skipped includes), so it is worked out once per image for each
        such set: a diamond of includes stays linear instead of doubling per level.
        """
        on_chain = set(chain)
        for hits, known, reach in self._resolved.get(found.path, []):
            if reach & on_chain == hits:
                return replace(known, entry=entry), reach
        meta = self._rel(meta_file(found.path) or found.path / "meta" / "main.yml")
        dependencies, searched = self._dependencies(found.path)
        inner, reached = (*chain, found.name), {found.name}
        deps = []
        for dep in dependencies:
            ref, below = self._role(dep, meta, inner, collection_of(found.path), searched)
            deps.append(ref)
            reached |= below
        includes, any_role, included = self._includes(found.path, inner, searched)
        role = RoleRef(name=found.name, path=found.path, entry=entry, dependencies=tuple(deps),
                       third_party=found.third_party, includes=includes,
                       any_role=every_role(self.root) if any_role else ())
        reach = frozenset(reached | included)
        self._resolved.setdefault(found.path, []).append((reach & on_chain, role, reach))
        return role, reach

    def _includes(self, role_path: Path, chain: tuple[str, ...],
                  searched: tuple[str, ...]) -> tuple[tuple[RoleRef, ...], bool, set[str]]:
        """Roles the role's tasks include by name, whether some name does not resolve, and every role reached.

        A role already on the chain (a role including itself or its includer) is in the layer's key already.
        A templated name, or one that names no installed role, makes the layer count every role.
        """
        found: dict[str, RoleRef] = {}
        reached: set[str] = set()
        any_role = False
        within = collection_of(role_path)
        for path, name in role_include_names(role_path):
            target = None if templated(name) else include_target(self.root, name, self._rel(path), within, searched)
            if target is None:
                any_role = True
                continue
            reached.add(target.name)
            if target.name in chain or target.name in found:
                continue
            ref, below = self._resolve(target, name, chain)
            found[ref.name] = ref
            reached |= below
        return tuple(found.values()), any_role, reached

    def _dependencies(self, role_path: Path) -> tuple[list[Any], tuple[str, ...]]:
        """The role's meta dependencies and its meta `collections:` (searched first for their short names)."""
        meta = meta_file(role_path)
        if meta is None:
            return [], ()
        data = load_yaml(meta) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{self._rel(meta)}: expected a mapping")
        deps = data.get("dependencies") or []
        if not isinstance(deps, list):
            raise ConfigError(f"{self._rel(meta)}: 'dependencies' must be a list")
        return deps, collection_names(data.get("collections"), self._rel(meta))

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def parse_extra_vars(pairs: tuple[str, ...]) -> dict[str, Any]:
    """Parse -e KEY=VALUE pairs (values as YAML scalars) the way ansible-playbook does."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--extra-var '{pair}': expected KEY=VALUE")
        try:
            result[key.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            result[key.strip()] = value
    return result
