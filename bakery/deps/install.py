"""ansible-galaxy and git, run for one requirement at a time into a staging directory.

ansible-galaxy does the downloading and unpacking (bakery never hand-writes a downloader); it always runs with
--no-deps (every role and collection an image uses is listed, and so locked, in requirements.yml), an explicit -p,
the project's ansible.cfg or an empty one (never ~/.ansible.cfg), and the venv's own bin first in PATH.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from bakery.deps.requirements import redact
from bakery.errors import OperationError

COMMIT_RE = re.compile(r"^[0-9a-f]{40}\Z")
TIMEOUT = 900


def galaxy_env(root: Path, staging: Path) -> dict[str, str]:
    cfg = root / "ansible.cfg"
    if not cfg.is_file():
        cfg = staging / "ansible.cfg"
        cfg.touch()
    return {**os.environ,
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "ANSIBLE_CONFIG": str(cfg), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCAL_TEMP": str(staging / "tmp"), "ANSIBLE_COLLECTIONS_PATH": str(staging / "collections"),
            "ANSIBLE_ROLES_PATH": str(staging / "roles"), "GIT_TERMINAL_PROMPT": "0"}


def absolute(root: Path, source: str) -> str:
    """A local path as written in requirements.yml is relative to the project (ansible-galaxy clones in a temporary
    directory, where a relative path means nothing)."""
    prefix = "git+" if source.startswith("git+") else ""
    rest = source.removeprefix("git+")
    if "://" in rest or rest.startswith("git@") or Path(rest).is_absolute() or not (root / rest).exists():
        return source
    return prefix + str((root / rest).resolve())


def galaxy_install(root: Path, staging: Path, what: str, entry: dict[str, str], dest: Path, label: str) -> None:
    """`ansible-galaxy {role|collection} install --no-deps --force -r <one entry> -p dest`; a failure is an
    OperationError naming the requirement and ansible-galaxy's last line."""
    request = staging / f"request-{label.replace('/', '_')[:60]}-{what}.yml"
    request.write_text(yaml.safe_dump({f"{what}s": [entry]}), encoding="utf-8")
    dest.mkdir(parents=True, exist_ok=True)
    (staging / "tmp").mkdir(exist_ok=True)
    command = [str(Path(sys.executable).parent / "ansible-galaxy"), what, "install", "--no-deps", "--force",
               "-r", str(request), "-p", str(dest)]
    try:
        proc = subprocess.run(command, cwd=root, env=galaxy_env(root, staging), capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationError(f"installing {what} '{label}': ansible-galaxy did not finish: {redact(str(exc))}") from exc
    if proc.returncode != 0 or _failed(proc.stdout):
        last = error_line(proc.stdout, proc.stderr) or f"exit status {proc.returncode}"
        raise OperationError(f"installing {what} '{label}' failed: {redact(last)[:400]}")


def error_line(stdout: str, stderr: str) -> str | None:
    """ansible-galaxy's error: the reason of a `- NAME was NOT installed successfully: REASON` line (ansible-core
    2.19 puts it in a warning), else the first `ERROR! ...` (< 2.19) or `[ERROR]: ...` (2.19) line that is not the
    closing "--ignore-errors" hint, from stderr before stdout, else stderr's last line, else stdout's (a progress
    line says least)."""
    streams = [[" ".join(line.split()) for line in text.splitlines() if line.strip()] for text in (stderr, stdout)]
    for lines in streams:
        reason = next((line.split(_NOT_INSTALLED, 1)[1].strip() for line in lines if _NOT_INSTALLED in line), "")
        if reason:
            return reason
    for lines in streams:
        errors = [line for line in lines if line.startswith(("ERROR", "[ERROR]"))]
        if errors:
            return next((line for line in errors if "--ignore-errors" not in line), errors[-1])
    return next((lines[-1] for lines in streams if lines), None)


_NOT_INSTALLED = "was NOT installed successfully:"


def _failed(stdout: str) -> bool:
    """ansible-galaxy role install reports some failures (a role it cannot find) with exit status 0."""
    return any(line.lstrip().startswith("- ") and "was NOT installed" in line for line in stdout.splitlines())


def resolve_commit(root: Path, location: str, ref: str, label: str) -> str:
    """The 40-hex commit a git ref names now: from `git ls-remote` (a tag's peeled commit first), else by a bare
    clone (a short commit id is not a ref)."""
    if COMMIT_RE.match(ref):
        return ref
    url = absolute(root, location)
    refs: dict[str, str] = {}
    for line in _git(root, label, "ls-remote", "--", url).splitlines():
        commit, _, name = line.partition("\t")
        refs[name.strip()] = commit.strip()
    for name in (f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
        if COMMIT_RE.match(refs.get(name, "")):
            return refs[name]
    return _commit_from_clone(root, url, ref, label)


def _commit_from_clone(root: Path, url: str, ref: str, label: str) -> str:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bakery-git-") as tmp:
        _git(root, label, "clone", "--quiet", "--bare", "--", url, tmp)
        try:
            return _git(root, label, "-C", tmp, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
        except OperationError:
            raise OperationError(f"'{label}': version '{ref}' is no tag, branch or commit of {redact(url)}; "
                                 "fix version: in requirements.yml") from None


def _git(root: Path, label: str, *args: str) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        proc = subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationError(f"'{label}': git {args[0]} did not finish: {redact(str(exc))}") from exc
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or [f"exit status {proc.returncode}"]
        line = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1])
        raise OperationError(f"'{label}': git {args[0]} failed: {redact(' '.join(line.split()))}")
    return proc.stdout


def installed_role_version(path: Path) -> str | None:
    info = path / "meta" / ".galaxy_install_info"
    try:
        data = yaml.safe_load(info.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return str(version) if version else None


def collection_manifest(path: Path) -> tuple[str, str]:
    """(ns.coll, version) of an installed collection, from its MANIFEST.json."""
    info = json.loads((path / "MANIFEST.json").read_text(encoding="utf-8"))["collection_info"]
    return f"{info['namespace']}.{info['name']}", str(info["version"])
