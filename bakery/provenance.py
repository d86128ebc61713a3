"""Provenance facts: git state, content digests and their safe rendering.

Every value here ends up in an OCI label, /etc/image-release and (on AWS) a tag,
so values are sanitised once, here, to what all three accept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TAG_VALUE_MAX = 255
# What AWS accepts in tag values across services: letters, digits, spaces and _ . : / = + - @
_UNSAFE_TAG_CHARS = re.compile(r"[^\w .:/=+\-@]", re.UNICODE)
# Caches: never part of anything, at any depth.
DIGEST_CACHE_DIRS = {"__pycache__", ".pytest_cache", ".cache"}
# Left out of a layer key at any depth: a nested checkout's own history does not change what the role does.
DIGEST_EXCLUDE_DIRS = DIGEST_CACHE_DIRS | {".git"}
# Left out of a layer key at the role's top level only: its scenarios and tests. Deeper down (files/tests/...)
# a directory of that name is payload the role copies onto the image.
DIGEST_EXCLUDE_ROOT_DIRS = {"molecule", "tests"}
DIGEST_EXCLUDE_SUFFIXES = (".pyc", ".swp", "~")
# A role's own documentation does not change the image either.
DIGEST_EXCLUDE_ROOT_FILES = {"README.md", "README.rst", "CHANGELOG.md"}
# ansible-galaxy writes the install date here: two installs of the same role must have the same digest.
DIGEST_EXCLUDE_PATHS = {"meta/.galaxy_install_info"}


def sanitize_tag_value(value: str, limit: int = TAG_VALUE_MAX) -> str:
    """Make free text safe for an AWS tag value, an OCI label and a shell-style file.

    Control characters (newlines included) become spaces, characters outside the
    AWS tag alphabet are dropped, runs of white space collapse, and the result is
    cut to `limit` characters.
    """
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in value)
    text = _UNSAFE_TAG_CHARS.sub("", text)
    text = " ".join(text.split())
    return text[:limit].rstrip()


def sha256_json(data: Any) -> str:
    """A stable digest of JSON-able data (keys sorted, no whitespace)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def digest_dirs(root: Path, dirpath: str, dirnames: list[str], *, everything: bool = False) -> list[str]:
    """The subdirectories of dirpath (under root) that a digest covers, sorted; symlinked ones included."""
    excludes = DIGEST_CACHE_DIRS if everything else DIGEST_EXCLUDE_DIRS
    top = set() if everything or dirpath != str(root) else DIGEST_EXCLUDE_ROOT_DIRS
    return sorted(d for d in dirnames if d not in excludes and d not in top)


def tree_digest(root: Path, *, everything: bool = False) -> str:
    """Digest of every file under root: relative path, executable bit and content.

    Symlinks (to files or directories) contribute their target; a symlinked directory is not followed, so
    repointing it changes the digest. The role's top-level molecule/ and tests/, caches and .git are left out:
    they do not change what the role does to an image; so is the install date ansible-galaxy records in an
    installed role. `everything` keeps tests, scenarios, .git and documentation in (only caches and the install
    date are left out): what a lock pins, since verify may run a role's own tests.
    """
    h = hashlib.sha256()
    root_files = set() if everything else DIGEST_EXCLUDE_ROOT_FILES
    for dirpath, dirnames, filenames in os.walk(root):
        kept = []
        for name in digest_dirs(root, dirpath, dirnames, everything=everything):
            path = Path(dirpath) / name
            if path.is_symlink():  # os.walk lists it among the directories and never descends into it
                h.update(f"L {path.relative_to(root).as_posix()}\0{os.readlink(path)}\n".encode())
            else:
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.endswith(DIGEST_EXCLUDE_SUFFIXES) or (dirpath == str(root) and name in root_files):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel in DIGEST_EXCLUDE_PATHS:
                continue
            if path.is_symlink():
                h.update(f"L {rel}\0{os.readlink(path)}\n".encode())
                continue
            mode = "x" if os.access(path, os.X_OK) else "-"
            h.update(f"F {rel}\0{mode}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
            h.update(b"\n")
    return "sha256:" + h.hexdigest()


@dataclass
class GitFacts:
    commit: str = "unknown"
    message: str = ""
    branch: str = "unknown"
    dirty: bool = False


def git_facts(root: Path) -> GitFacts:
    """Commit id, sanitised message, branch and dirty flag of the project's checkout."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return GitFacts(dirty=bool(git("rev-parse", "--is-inside-work-tree")))
    status = git("status", "--porcelain", "--untracked-files=normal")
    branch = git("rev-parse", "--abbrev-ref", "HEAD") or "unknown"
    return GitFacts(
        commit=commit,
        message=sanitize_tag_value(git("log", "-1", "--format=%B") or ""),
        branch=sanitize_tag_value(branch, 128) or "unknown",
        dirty=bool(status),
    )


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Provenance:
    """Everything needed to tell where an image came from; identical in labels, file and catalog."""

    image: str
    version: str
    git_commit: str
    git_message: str
    git_branch: str
    git_dirty: bool
    build_time: str
    base_image: str
    base_digest: str
    input_digest: str
    bakery_version: str
    roles: dict[str, str]  # role name -> role digest, in bake order
    artifacts: dict[str, str] = field(default_factory=dict)  # artifact name -> version baked in
    # requirements.lock's roles and collections: name -> "version[@commit12] digest" (bakery.deps.gate.check_lock)
    requirements: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def labels(self) -> dict[str, str]:
        """OCI labels (org.opencontainers.image.* where a standard key exists)."""
        return {
            "org.opencontainers.image.title": self.image,
            "org.opencontainers.image.version": self.version,
            "org.opencontainers.image.revision": self.git_commit,
            "org.opencontainers.image.created": self.build_time,
            "org.opencontainers.image.base.name": self.base_image,
            "org.opencontainers.image.base.digest": self.base_digest,
            "io.bakery.image": self.image,
            "io.bakery.version": self.version,
            "io.bakery.git.message": self.git_message,
            "io.bakery.git.branch": self.git_branch,
            "io.bakery.git.dirty": str(self.git_dirty).lower(),
            "io.bakery.input-digest": self.input_digest,
            "io.bakery.tool-version": self.bakery_version,
            "io.bakery.roles": " ".join(f"{k}={v}" for k, v in self.roles.items()),
            "io.bakery.artifacts": " ".join(f"{k}={v}" for k, v in self.artifacts.items()),
            "io.bakery.requirements": render_requirements(self.requirements),
        }

    def release_file(self) -> str:
        """/etc/image-release: KEY="value" lines, readable by sh, systemd and Python alike."""
        fields = {
            "IMAGE_NAME": self.image,
            "IMAGE_VERSION": self.version,
            "GIT_COMMIT": self.git_commit,
            "GIT_MESSAGE": self.git_message,
            "GIT_BRANCH": self.git_branch,
            "GIT_DIRTY": str(self.git_dirty).lower(),
            "BUILD_TIME": self.build_time,
            "BASE_IMAGE": self.base_image,
            "BASE_DIGEST": self.base_digest,
            "INPUT_DIGEST": self.input_digest,
            "BAKERY_VERSION": self.bakery_version,
            "ROLES": " ".join(f"{k}={v}" for k, v in self.roles.items()),
            "ARTIFACTS": " ".join(f"{k}={v}" for k, v in self.artifacts.items()),
            "REQUIREMENTS": render_requirements(self.requirements),
        }
        whole = {"REQUIREMENTS"}  # kept whole, as in the label: versions may hold any character (feature#42)
        return "".join(f'{key}="{_quote(str(value)) if key in whole else sanitize_tag_value(str(value), 4096)}"\n'
                       for key, value in fields.items())


def _quote(value: str) -> str:
    """A double-quoted sh value: \\, ", $ and ` escaped (sh, systemd and parse_release_file undo it)."""
    return re.sub(r'([\\"$`])', r"\\\1", value)


def render_requirements(requirements: dict[str, str]) -> str:
    """`name=version[@commit] sha256:... name=...`: one line (control characters become spaces), read back by
    parse_requirements."""
    text = " ".join(f"{name}={value}" for name, value in requirements.items())
    return "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)


def parse_requirements(text: str) -> dict[str, str]:
    """The inverse of render_requirements: a word with `=` starts an entry, the words after it are its value."""
    found: dict[str, str] = {}
    name = ""
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and not key.startswith("sha256:"):
            name = key
            found[name] = value
        elif name:
            found[name] = f"{found[name]} {word}".strip()
    return found


def parse_release_file(text: str) -> dict[str, str]:
    """Read /etc/image-release back (the inverse of Provenance.release_file)."""
    facts = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            facts[key.strip()] = value
    return facts
