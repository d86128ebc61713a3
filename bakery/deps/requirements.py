"""requirements.yml, read and checked before anything is installed.

The file is ansible-galaxy's own format, so the same file works with `ansible-galaxy install -r`; bakery is stricter
than ansible-galaxy where a lock needs it: every git source names a version (a lock of "whatever the default branch
is today" pins nothing a reviewer can read), unknown keys are refused rather than dropped (a misspelt `verison:`
would otherwise silently install the newest), and only git is accepted as a scm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery.config import load_yaml
from bakery.deps.paths import REQUIREMENTS_FILE
from bakery.errors import ConfigError

ROLE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_][A-Za-z0-9_-]*)?\Z")
COLLECTION_NAME_RE = re.compile(r"^[A-Za-z0-9_]+\.[A-Za-z0-9_]+\Z")
ROLE_KEYS = ("name", "src", "version", "scm")
COLLECTION_KEYS = ("name", "version", "type", "source")
COLLECTION_TYPES = ("galaxy", "git", "url", "file", "dir")
TARBALL_SUFFIXES = (".tar.gz", ".tgz")
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s'\"]*[^\s'\".,:;)]")  # not a sentence's final '.' or ':'
_CREDENTIALS = re.compile(r"^([^:]+://)[^/?#]*@")  # userinfo up to the last '@' before the path: `user:p@ss@host`
_PARAMETER = re.compile(r"([?&#;])([^=&#;?]*=)?[^&#;?]*")
HARMLESS_KEYS = frozenset(key.lower() for key in (
    "sha", "ref", "version", "tag", "branch", "commit", "archive", "format", "path",
    "X-Amz-Algorithm", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
    "sv", "se", "st", "sp", "spr", "srt", "ss", "sr"))


def redact(text: str) -> str:
    """Every URL's userinfo (https://u:TOKEN@h/r.git) and every query, fragment or `;` parameter value except those
    of keys known to be harmless (HARMLESS_KEYS: a version, a ref, a signed URL's dates) replaced by ***: auth=,
    jwt=, ;jsessionid= and whatever a server names its token next are hidden without being listed, while
    `?sha=1` -> `?sha=2` still shows as the change it is. No message or lock file repeats a secret."""
    return _URL.sub(lambda url: _redact_url(url.group(0)), text)


def _redact_url(url: str) -> str:
    url = _CREDENTIALS.sub(r"\1***@", url)
    authority = url.find("/", url.find("://") + 3)
    cuts = [i for i in (url.find("?"), url.find("#"), url.find(";", max(authority, 0))) if i >= 0]
    cut = min(cuts, default=len(url))
    return url[:cut] + _PARAMETER.sub(_hidden, url[cut:])


def _hidden(parameter: re.Match[str]) -> str:
    """`?token=value` keeps its key; a bare `?value` (no key to judge it by) is hidden whole; a bare `#/path`
    fragment (a collection's directory in a git repository) is no secret and stays."""
    separator, key = parameter.group(1), parameter.group(2)
    if key:
        return parameter.group(0) if key[:-1].lower() in HARMLESS_KEYS else f"{separator}{key}***"
    if separator == "#" or parameter.group(0) == separator:
        return parameter.group(0)
    return f"{separator}***"


def without_parameters(src: str) -> str:
    """A source without its query string and fragment: what its name and suffix are read from."""
    return re.split(r"[?#]", src, maxsplit=1)[0]


@dataclass(frozen=True)
class RoleRequirement:
    """One role: `kind` is galaxy (author.role from a Galaxy server), git or url (a tarball URL or path)."""

    name: str
    src: str  # as written (credentials included: used only to install)
    kind: str
    version: str | None
    scm: str | None  # as written (`scm: git`), None when given as a git+ prefix or not at all

    @property
    def location(self) -> str:
        """What git or ansible-galaxy fetch: src without the git+ prefix."""
        return self.src.removeprefix("git+")


@dataclass(frozen=True)
class CollectionRequirement:
    """One collection. `name` is ns.coll when written; for a tarball, URL, git or directory source given as the name
    (ansible-galaxy's short form) the collection's name is known only once it is installed."""

    name: str | None
    source: str  # the artifact as written (the name itself for galaxy); credentials included
    kind: str  # galaxy, git, url, file or dir
    version: str | None

    @property
    def label(self) -> str:
        return self.name or redact(self.source)

    @property
    def location(self) -> str:
        return self.source.removeprefix("git+")


@dataclass(frozen=True)
class Requirements:
    roles: tuple[RoleRequirement, ...]
    collections: tuple[CollectionRequirement, ...]

    def names(self) -> set[str]:
        return {r.name for r in self.roles} | {c.name for c in self.collections if c.name}


def load_requirements(root: Path) -> Requirements | None:
    """The project's requirements, or None when it has no requirements.yml."""
    path = root / REQUIREMENTS_FILE
    if not path.is_file():
        return None
    data = load_yaml(path)
    if data is None:
        return Requirements((), ())
    if isinstance(data, list):
        data = {"roles": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a list of roles or a mapping with roles: and collections:, "
                          f"not {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - {"roles", "collections"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key '{unknown[0]}': only roles: and collections: are read")
    roles = tuple(_role(path, i, e) for i, e in enumerate(_entries(path, data, "roles")))
    collections = tuple(_collection(path, i, e) for i, e in enumerate(_entries(path, data, "collections")))
    _unique(path, [r.name for r in roles], "roles")
    _unique(path, [c.name or c.source for c in collections], "collections")
    return Requirements(roles, collections)


def _entries(path: Path, data: dict, key: str) -> list:
    entries = data.get(key) or []
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: {key}: must be a list, not {type(entries).__name__}")
    return entries


def _unique(path: Path, names: list[str], key: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{path}: {key}: '{redact(name)}' is listed twice; keep one entry")
        seen.add(name)


def _text(path: Path, where: str, entry: dict, key: str) -> str | None:
    value = entry.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{path}: {where}: {key} must be a string, not {type(value).__name__}")
    return str(value)


def _mapping(path: Path, where: str, entry: Any, short_key: str, known: Any, expected: str) -> dict[Any, Any]:
    """An entry as a mapping: the short string form becomes {short_key: it}; unknown keys are refused (a misspelt
    `verison:` would otherwise install the newest version without a word)."""
    if isinstance(entry, str):
        entry = {short_key: entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: {where}: expected {expected}, not {type(entry).__name__}")
    unknown = sorted(set(map(str, entry)) - set(known))
    if unknown:
        raise ConfigError(f"{path}: {where}: unknown key '{unknown[0]}' (known: {', '.join(known)})")
    return entry


def _role(path: Path, index: int, entry: Any) -> RoleRequirement:
    where = f"roles[{index}]"
    _refused_role_form(path, where, entry)
    entry = _mapping(path, where, entry, "src", ROLE_KEYS, "a Galaxy name or a mapping with src:")
    src = _text(path, where, entry, "src") or _text(path, where, entry, "name")  # ansible-galaxy's default
    if src is None:
        raise ConfigError(f"{path}: {where}: src: is missing; give a Galaxy name (author.role), a git URL with "
                          "version:, or a tarball")
    version, scm = _text(path, where, entry, "version"), _text(path, where, entry, "scm")
    kind = _role_kind(path, where, src, scm)
    if kind == "git" and version is None:
        raise ConfigError(f"{path}: {where}: git source '{redact(src)}' has no version: pin a tag, branch or commit "
                          "(version: v1.2.0)")
    name = _text(path, where, entry, "name") or _default_role_name(src, kind)
    if not ROLE_NAME_RE.match(name):
        raise ConfigError(f"{path}: {where}: role name '{redact(name)}' is invalid: use letters, digits, '_' and '-', "
                          "with one dot for author.role (give name: when the source does not end in one)")
    return RoleRequirement(name=name, src=src, kind=kind, version=version, scm=scm)


def _refused_role_form(path: Path, where: str, entry: Any) -> None:
    """ansible-galaxy forms bakery does not read, with what to write instead (docs/community-roles.md says why)."""
    if isinstance(entry, str) and "," in entry:
        raise ConfigError(f"{path}: {where}: the 'src,version,name' form '{redact(entry)}' is not read: write a "
                          "mapping with src:, version: and name:")
    if isinstance(entry, dict) and "include" in entry:
        raise ConfigError(f"{path}: {where}: include: is not read: list the included file's roles in "
                          "requirements.yml itself, so one file says what is locked")


def _role_kind(path: Path, where: str, src: str, scm: str | None) -> str:
    bare = without_parameters(src)
    prefix, plus, _rest = src.partition("+")
    if plus and re.match(r"^[a-z]+\Z", prefix):
        if scm and scm != prefix:
            raise ConfigError(f"{path}: {where}: src '{redact(src)}' says {prefix} but scm: says {scm}; keep one")
        scm = prefix
    if scm is not None:
        if scm != "git":
            raise ConfigError(f"{path}: {where}: unknown source type '{scm}' for '{redact(src)}': only git is "
                              "supported (git+URL or scm: git)")
        return "git"
    if src.startswith(("http://", "https://")) and "github.com" in src and not bare.endswith(TARBALL_SUFFIXES):
        return "git"  # ansible-galaxy reads a github.com page URL as its git repository
    if "://" in src or bare.endswith(TARBALL_SUFFIXES):
        return "url"
    if ROLE_NAME_RE.match(src) and "." in src:
        return "galaxy"
    raise ConfigError(f"{path}: {where}: unknown source type for src '{redact(src)}': give a Galaxy name "
                      "(author.role), git+URL with version:, or a .tar.gz")


def _default_role_name(src: str, kind: str) -> str:
    """The name ansible-galaxy gives: the Galaxy name itself, else the last path part without .git/.tar.gz."""
    if kind == "galaxy":
        return src
    tail = without_parameters(src.removeprefix("git+")).rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    for suffix in (".git", *TARBALL_SUFFIXES):
        tail = tail.removesuffix(suffix)
    return tail


def _collection(path: Path, index: int, entry: Any) -> CollectionRequirement:
    where = f"collections[{index}]"
    entry = _mapping(path, where, entry, "name", COLLECTION_KEYS,
                     "a collection name (namespace.collection) or a mapping with name:")
    name, source = _text(path, where, entry, "name"), _text(path, where, entry, "source")
    version, kind = _text(path, where, entry, "version"), _text(path, where, entry, "type")
    if name is None:
        raise ConfigError(f"{path}: {where}: name: is missing; give namespace.collection or the collection's "
                          "tarball, URL or git URL")
    fqcn = name if COLLECTION_NAME_RE.match(name) else None
    artifact = source if (source is not None and fqcn is not None) else name
    kind = kind or ("galaxy" if fqcn else _collection_kind(name))
    if kind == "subdirs":
        raise ConfigError(f"{path}: {where}: type subdirs installs every collection of a directory under one entry; "
                          "list each collection with type: dir so each is locked")
    if kind not in COLLECTION_TYPES:
        raise ConfigError(f"{path}: {where}: unknown source type '{kind}' for '{redact(name)}' "
                          f"(known: {', '.join(COLLECTION_TYPES)})")
    if kind == "galaxy" and fqcn is None:
        raise ConfigError(f"{path}: {where}: collection name '{redact(name)}' is invalid: use namespace.collection "
                          "(letters, digits and '_')")
    if kind == "git" and version is None:
        raise ConfigError(f"{path}: {where}: git source '{redact(artifact)}' has no version: pin a tag, branch or "
                          "commit (version: v1.2.0)")
    return CollectionRequirement(name=fqcn, source=artifact, kind=kind, version=version)


def _collection_kind(artifact: str) -> str:
    """ansible-galaxy's own guess when type: is left out and the name is not namespace.collection."""
    if artifact.startswith(("git+", "git@")):
        return "git"
    if artifact.startswith(("http://", "https://")):
        return "url"
    if artifact.endswith(TARBALL_SUFFIXES):
        return "file"
    return "dir"
