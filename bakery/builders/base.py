"""The builder interface: every target's builder takes the same options and returns the same result."""

from __future__ import annotations

import logging
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bakery.base_settings import BaseSettings, project_base_settings
from bakery.catalog import Catalog
from bakery.config import ImageDefinition, Project
from bakery.errors import ConfigError, OperationError
from bakery.progress import Progress
from bakery.runs import Run

log = logging.getLogger("bakery.build")


@dataclass
class BuildOptions:
    no_cache: bool = False
    keep_on_failure: bool = False
    extra_vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class LayerResult:
    role: str
    key: str
    role_digest: str
    cached: bool
    seconds: float = 0.0
    tasks: int = 0
    changed: int = 0


@dataclass
class BuildResult:
    """A bake's outcome as data; the CLI renders it, `--json` prints it."""

    image: str
    version: str
    ref: str
    image_id: str
    input_digest: str
    reused: bool
    run_id: str
    seconds: float
    layers: list[LayerResult]
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Builder(ABC):
    """Bakes one image definition for one target."""

    target = "local"

    def __init__(self, project: Project, catalog: Catalog, progress: Progress):
        self.project = project
        self.catalog = catalog
        self.progress = progress

    def base_settings(self) -> BaseSettings:
        """bakery.yml's `base:` (extra apt sources and packages): which flavour of bakery's base to bake on."""
        return project_base_settings(self.project.settings, str(self.project.root / "bakery.yml"))

    def artifact_inputs(self, definition: ImageDefinition) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """For each role that installs a built artifact: its key inputs (name, digest) and the variables it gets."""
        from bakery.artifacts import LocalArtifactStore, verify

        inputs: dict[str, Any] = {}
        role_vars: dict[str, dict[str, Any]] = {}
        if not definition.artifacts:
            return inputs, role_vars
        store = LocalArtifactStore(self.project.state_dir / "artifacts")
        for role, name in definition.artifacts.items():
            artifact = store.latest(name)
            if artifact is None:
                raise ConfigError(
                    f"image '{definition.name}' bakes artifact '{name}' into role '{role}', but none is built; run: "
                    "./bake.py build-app")
            verify(artifact)
            sha = artifact.sha256.removeprefix("sha256:")
            inputs[role] = {"artifact": name, "sha256": sha, "version": artifact.version}
            role_vars[role] = {f"{role}_artifact_path": str(artifact.path), f"{role}_artifact_sha256": sha,
                               f"{role}_artifact_version": artifact.version}
        return inputs, role_vars

    @abstractmethod
    def build(self, definition: ImageDefinition, options: BuildOptions, run: Run) -> BuildResult:
        """Bake the image, or return the existing version when nothing changed."""


def image_packages(ref: str) -> dict[str, str]:
    """The installed packages of a local image (its dpkg database), for the version's record; {} when unreadable:
    a missing package list must not fail a bake that succeeded."""
    from bakery import podman
    from bakery.gc import leftovers
    from bakery.verify.packages import parse_status

    name = f"bakery-packages-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        podman.run("create", "--name", name, "--label", f"{leftovers.BUILD_LABEL}=1", "--label",
                   f"{leftovers.PID_LABEL}={os.getpid()}", ref, "/bin/true")
        with tempfile.TemporaryDirectory() as tmp:
            podman.run("cp", f"{name}:/var/lib/dpkg/status", str(Path(tmp) / "status"))
            return parse_status((Path(tmp) / "status").read_text(encoding="utf-8", errors="replace"))
    except OperationError as exc:
        log.warning("could not list the packages of %s: %s", ref, exc)
        return {}
    finally:
        podman.remove_container(name)
