"""The builder interface: every target's builder takes the same options and returns the same result."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from bakery.catalog import Catalog
from bakery.config import ImageDefinition, Project
from bakery.errors import ConfigError
from bakery.progress import Progress
from bakery.runs import Run


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
