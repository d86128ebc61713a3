"""Application artifacts: one deterministic, content-addressed tarball per build of `app/`.

`build_app` packs the application package into a `.tar.gz` whose bytes depend only on
the packed files' paths, contents and executable bits: entries sorted, owner root,
mtime 0, modes normalised, and a gzip header without time or file name. The same
sources therefore give the same sha256, and an unchanged app never changes the
layer key of the role that installs it.

`ArtifactStore` is the interface; `LocalArtifactStore` keeps artifacts under
`.bakery/artifacts/<name>/` (the AWS target will keep the same files in S3):

    <sha256>.tar.gz          the artifact
    <sha256>.tar.gz.sha256   its checksum, in `sha256sum -c` format
    <sha256>.json            manifest: name, version, sha256, size, created, packed files
    latest                   sha256 of the most recently built artifact

Every file is written atomically (temp file, fsync, rename), the manifest last, so a
manifest only ever names a complete artifact.
"""

from __future__ import annotations

import ast
import builtins
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bakery.errors import ConfigError, OperationError
from bakery.files import write_atomically
from bakery.provenance import utc_now

STORE_DIR = Path(".bakery") / "artifacts"
README = "README.md"
# Never part of an artifact: caches, tests and dotfiles (editor and OS litter included).
EXCLUDED_DIRS = {"__pycache__", "tests", "test"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".swp", "~")
EXCLUDED_FILES = re.compile(r"(test_.*\.py|.*_test\.py|conftest\.py)")
FIXED_MTIME = 0
MIN_PREFIX = 12
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Artifact:
    """One stored artifact; `path` is where its `.tar.gz` is (a local file for this store)."""

    name: str
    version: str
    sha256: str  # hex, no "sha256:" prefix: it is also the file name
    path: Path
    size: int
    created: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


class ArtifactStore(ABC):
    """Where artifacts live: a directory locally, an S3 prefix on AWS."""

    @abstractmethod
    def put(self, name: str, version: str, data: bytes, files: list[dict[str, Any]]) -> Artifact:
        """Store an artifact (idempotent) and make it the latest of `name`."""

    @abstractmethod
    def get(self, name: str, sha256: str) -> Artifact:
        """One artifact by sha256 (a unique prefix of 12+ hex digits, or a version, will do)."""

    @abstractmethod
    def latest(self, name: str) -> Artifact | None:
        """The most recently built artifact of `name`, or None when there is none."""

    @abstractmethod
    def list(self, name: str) -> builtins.list[Artifact]:
        """Every artifact of `name`, newest first."""


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"artifact name {name!r} is invalid; use lower-case letters, digits, '.', '_' and '-'")
    return name


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArtifactStore(ArtifactStore):
    """Artifacts as files under `root/<name>/` (normally `.bakery/artifacts/`)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def for_project(cls, project_root: Path) -> LocalArtifactStore:
        return cls(Path(project_root) / STORE_DIR)

    def _dir(self, name: str) -> Path:
        return self.root / _check_name(name)

    def put(self, name: str, version: str, data: bytes, files: builtins.list[dict[str, Any]]) -> Artifact:
        sha = hashlib.sha256(data).hexdigest()
        directory = self._dir(name)
        archive = directory / f"{sha}.tar.gz"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # An existing, intact artifact is never rewritten; a damaged one is replaced.
            if not (archive.is_file() and _file_sha256(archive) == sha):
                write_atomically(archive, data)
            checksum = directory / f"{archive.name}.sha256"
            line = f"{sha}  {archive.name}\n"
            if not (checksum.is_file() and checksum.read_text() == line):
                write_atomically(checksum, line.encode())
            manifest_path = directory / f"{sha}.json"
            try:
                manifest = self._read_manifest(manifest_path) if manifest_path.is_file() else None
            except OperationError:
                manifest = None  # a damaged manifest is rewritten like a damaged archive
            if manifest is None or manifest.get("sha256") != sha:
                manifest = {
                    "name": name,
                    "version": version,
                    "sha256": sha,
                    "size": len(data),
                    "created": utc_now(),
                    "format": "tar.gz",
                    "files": files,
                }
                write_atomically(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
            pointer = directory / "latest"
            if not (pointer.is_file() and pointer.read_text().strip() == sha):
                write_atomically(pointer, f"{sha}\n".encode())
        except OSError as exc:
            raise OperationError(f"{directory}: cannot store artifact {name}: {exc.strerror or exc}; "
                                 "check the disk and permissions") from exc
        return self._artifact(directory, manifest)

    def get(self, name: str, sha256: str) -> Artifact:
        directory = self._dir(name)
        wanted = sha256.strip().lower().removeprefix("sha256:").rpartition("+")[2]
        if len(wanted) < MIN_PREFIX or not re.fullmatch(r"[0-9a-f]{1,64}", wanted):
            raise ConfigError(f"artifact id {sha256!r} is not a sha256 "
                              f"(or a prefix of at least {MIN_PREFIX} hex digits)")
        matches = [sha for sha in self._shas(directory) if sha.startswith(wanted)]
        if not matches:
            raise ConfigError(f"no artifact {name}@{wanted} in {directory}; build one with: ./bake.py build-app")
        if len(matches) > 1:
            raise ConfigError(f"artifact id {wanted} is ambiguous in {directory} ({len(matches)} match); "
                              "give more digits")
        return self._load(directory, matches[0])

    def latest(self, name: str) -> Artifact | None:
        directory = self._dir(name)
        try:
            sha = (directory / "latest").read_text().strip()
        except OSError:
            sha = ""
        if _SHA256.fullmatch(sha) and (directory / f"{sha}.json").is_file():
            return self._load(directory, sha)
        artifacts = self.list(name)  # no pointer (or a stale one): fall back to the newest manifest
        return artifacts[0] if artifacts else None

    def list(self, name: str) -> builtins.list[Artifact]:
        directory = self._dir(name)
        artifacts = [self._load(directory, sha) for sha in self._shas(directory)]
        return sorted(artifacts, key=lambda a: (a.created, a.sha256), reverse=True)

    # ---- internals

    @staticmethod
    def _shas(directory: Path) -> builtins.list[str]:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return sorted(n[: -len(".json")] for n in names
                      if n.endswith(".json") and _SHA256.fullmatch(n[: -len(".json")]))

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise OperationError(f"{path}: unreadable artifact manifest ({exc}); "
                                 "delete it and run ./bake.py build-app") from exc
        if not isinstance(manifest, dict):
            raise OperationError(f"{path}: artifact manifest is not a JSON object; "
                                 "delete it and run ./bake.py build-app")
        return manifest

    def _load(self, directory: Path, sha: str) -> Artifact:
        manifest = self._read_manifest(directory / f"{sha}.json")
        return self._artifact(directory, manifest)

    @staticmethod
    def _artifact(directory: Path, manifest: dict[str, Any]) -> Artifact:
        sha = manifest["sha256"]
        return Artifact(name=manifest["name"], version=manifest["version"], sha256=sha,
                        path=directory / f"{sha}.tar.gz", size=manifest["size"], created=manifest["created"])


def verify(artifact: Artifact) -> Artifact:
    """Recompute the stored file's sha256; OperationError when it is missing or differs."""
    try:
        actual = _file_sha256(artifact.path)
    except FileNotFoundError as exc:
        raise OperationError(f"{artifact.path}: artifact {artifact.name} {artifact.version} is missing; "
                             "rebuild it with ./bake.py build-app") from exc
    except OSError as exc:
        raise OperationError(f"{artifact.path}: cannot read artifact: {exc.strerror or exc}") from exc
    if actual != artifact.sha256:
        raise OperationError(
            f"{artifact.path}: corrupt artifact: sha256 is {actual}, expected {artifact.sha256}; "
            "rebuild it with ./bake.py build-app (an intact build replaces the file)"
        )
    return artifact


def read_version(init_file: Path) -> str:
    """`__version__ = "X.Y.Z"` from a package's __init__.py, read without importing it."""
    try:
        tree = ast.parse(init_file.read_text(encoding="utf-8"), filename=str(init_file))
    except OSError as exc:
        raise ConfigError(f"{init_file}: cannot read: {exc.strerror or exc}") from exc
    except SyntaxError as exc:
        raise ConfigError(f"{init_file}:{exc.lineno}: syntax error ({exc.msg}); "
                          "fix it before building the app") from exc
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "__version__" for t in targets):
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str) and _VERSION.fullmatch(value.value):
                return value.value
            raise ConfigError(f'{init_file}:{node.lineno}: __version__ must be a plain string literal such as "1.0.0"')
    raise ConfigError(f'{init_file}: no __version__ found; add a line such as __version__ = "1.0.0"')


def _included(name: str) -> bool:
    return not (name.startswith(".") or name.endswith(EXCLUDED_SUFFIXES) or EXCLUDED_FILES.fullmatch(name))


def source_files(source_dir: Path, package: str) -> builtins.list[str]:
    """The files an artifact carries, relative to source_dir, sorted: the package and README.md."""
    found = []
    readme = source_dir / README
    if readme.is_symlink():
        raise ConfigError(f"{readme}: symlinks cannot be packed into an artifact; replace it with the file itself")
    if readme.is_file():
        found.append(README)
    for dirpath, dirnames, filenames in os.walk(source_dir / package):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in EXCLUDED_DIRS]
        for entry in [*dirnames, *filenames]:
            if (here / entry).is_symlink() and (entry in dirnames or _included(entry)):
                raise ConfigError(f"{here / entry}: symlinks cannot be packed into an artifact; "
                                  "replace it with the file itself")
        found.extend((here / f).relative_to(source_dir).as_posix() for f in filenames if _included(f))
    return sorted(found)


def pack(source_dir: Path, files: builtins.list[str]) -> tuple[bytes, builtins.list[dict[str, Any]]]:
    """A reproducible .tar.gz of `files` (with their parent directories) and their manifest entries."""
    dirs = sorted({p.as_posix() for f in files for p in Path(f).parents if p != Path(".")})
    entries = []
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=FIXED_MTIME) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted([*dirs, *files]):
            info = tarfile.TarInfo(rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = FIXED_MTIME
            if rel in dirs:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            path = source_dir / rel
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if os.stat(path).st_mode & 0o100 else 0o644
            tar.addfile(info, io.BytesIO(data))
            entries.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                            "mode": f"{info.mode:04o}"})
    return raw.getvalue(), entries


def build_app(source_dir: Path, store: ArtifactStore, name: str = "webapp") -> Artifact:
    """Pack `source_dir/<name>/` (and README.md) into a versioned artifact in `store`.

    `name` is both the artifact's name and the package directory. The version is the
    package's `__version__` plus the first 12 hex digits of the archive's sha256.
    """
    source_dir = Path(source_dir)
    _check_name(name)
    if not source_dir.is_dir():
        raise ConfigError(f"{source_dir}: application source directory not found; "
                          "run from the project root or create it")
    init_file = source_dir / name / "__init__.py"
    if not init_file.is_file():
        raise ConfigError(f"{init_file}: not found; "
                          f"the application must be a Python package {name}/ inside {source_dir}")
    app_version = read_version(init_file)
    files = source_files(source_dir, name)
    try:
        data, entries = pack(source_dir, files)
    except OSError as exc:
        raise OperationError(f"{exc.filename or source_dir}: cannot pack the application: "
                             f"{exc.strerror or exc}") from exc
    sha = hashlib.sha256(data).hexdigest()
    separator = "." if "+" in app_version else "+"  # a version with a local part already gets ".<sha>"
    return store.put(name, f"{app_version}{separator}{sha[:MIN_PREFIX]}", data, entries)
