"""verify-allowlist.yml: the scan's false positives, each excused by path, one rule and a reason.

Patterns are anchored per path segment: `*` and `?` never cross `/`, `**` is zero or more whole
segments (wcmatch's globmatch). An entry names one specific rule, and its path must hold a literal
segment: an entry that matches everything (`{path: '**', rule: ...}`) would turn a rule off.
Archive members match on their full path, "opt/x.tar.gz!/etc/app.conf".
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from wcmatch import glob

from bakery.config import load_yaml
from bakery.errors import ConfigError
from bakery.verify.secret_content import CONTENT_RULE_NAMES
from bakery.verify.secret_paths import PATH_RULE_NAMES

RULE_NAMES = frozenset(PATH_RULE_NAMES | CONTENT_RULE_NAMES)
FIELDS = ("path", "rule", "reason")
FLAGS = glob.GLOBSTAR | glob.DOTGLOB
CHAR_CLASS = re.compile(r"\[[^\]/]*\]")
GLOB_CHARS = re.compile(r"[*?\[\]{}\\!@+()]")
CANARY_PATHS = ("root/.ssh/id_rsa", "etc/shadow", "home/u/.bash_history", "root/.bash_history", "etc/ssl/private/x.key",
                "home/u/.ssh/authorized_keys")


@dataclass(frozen=True)
class AllowEntry:
    path: str  # a pattern relative to the image's root
    rule: str
    reason: str


def load_allowlist(path: Path) -> list[AllowEntry]:
    """verify-allowlist.yml: a list of {path: pattern, rule: one rule, reason: why this is not a secret}."""
    if not path.is_file():
        return []
    data = load_yaml(path) or []
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of entries with path, rule and reason")
    return [_entry(path, index, item) for index, item in enumerate(data, start=1)]


def _entry(path: Path, index: int, item: object) -> AllowEntry:
    if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip() for k in FIELDS):
        raise ConfigError(f"{path}: entry {index} needs non-empty 'path', 'rule' and 'reason' "
                          "(say why it is not a secret)")
    extra = sorted(str(k) for k in item if k not in FIELDS)
    if extra:
        raise ConfigError(f"{path}: entry {index}: unknown field '{extra[0]}'; an entry has path, rule and reason")
    rule, pattern = item["rule"].strip(), item["path"].strip().lstrip("/")
    if rule == "*":
        raise ConfigError(f"{path}: entry {index}: rule '*' is not allowed; name the one rule this entry excuses "
                          f"(known rules: {', '.join(sorted(RULE_NAMES))})")
    if rule not in RULE_NAMES:
        raise ConfigError(f"{path}: entry {index}: unknown rule '{rule}'; known rules: {', '.join(sorted(RULE_NAMES))}")
    if not has_literal_segment(pattern):
        raise ConfigError(f"{path}: entry {index}: path '{item['path']}' has no literal segment, so it would excuse "
                          f"'{rule}' everywhere; name the directory or file (e.g. 'opt/app/**/test-*.pem')")
    if not has_literal_start(pattern):
        raise ConfigError(f"{path}: entry {index}: path '{item['path']}' must start with a literal directory (no "
                          f"* ? [ ] {{ }} \\ in its first segment), so that it excuses '{rule}' in one place; "
                          "e.g. 'opt/app/**/test-*.pem'")
    canary = next((c for c in canaries() if glob.globmatch(c, pattern, flags=FLAGS)), None)
    if canary is not None:
        raise ConfigError(f"{path}: entry {index}: path '{item['path']}' matches /{canary} too; name the files it "
                          "excuses (e.g. 'opt/app/**/test-*.pem')")
    return AllowEntry(pattern, rule, item["reason"])


def has_literal_segment(pattern: str) -> bool:
    """True when some segment names something: a letter or digit outside `*`, `?` and `[...]`."""
    return any(re.search(r"[A-Za-z0-9]", CHAR_CLASS.sub("", segment)) for segment in pattern.split("/"))


def has_literal_start(pattern: str) -> bool:
    """True when the first segment is a plain name: a class like `[!]0]` cannot be misread there."""
    first = pattern.split("/", 1)[0]
    return bool(first) and first not in (".", "..") and not GLOB_CHARS.search(first)


def canaries() -> tuple[str, ...]:
    """Paths no entry may excuse: where real secrets live, and a random name (an entry matching one of
    those matches nearly everything)."""
    return (*CANARY_PATHS, f"{secrets.token_hex(6)}/{secrets.token_hex(6)}.{secrets.token_hex(2)}")


def is_allowed(path: str, rule: str, entries: list[AllowEntry]) -> bool:
    """Whether an entry excuses this rule at this path (absolute in the image, archive members "outer!/inner")."""
    relative = path.lstrip("/")
    return any(entry.rule == rule and glob.globmatch(relative, entry.path, flags=FLAGS) for entry in entries)
