"""Credential files that are secret only when they hold a credential: read their structure, line by line.

Each check gets the whole file as a stream and returns where the credential is (a line where there is
one) with a fixed text; never the value. A file that cannot be parsed where it must be (a registry auth
file that is not JSON) is reported: the scan fails closed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

STRUCTURE_RULE_NAMES = frozenset({"registry-credentials", "kubeconfig-credentials", "github-cli-token",
                                  "npmrc-credentials", "pypirc-credentials", "usable-password", "decrypted-vault"})
MAX_JSON = 16 << 20  # a registry auth file is a few KiB
LINE = 64 << 10  # a longer line is read in pieces (a binary "config" holds no line structure)


@dataclass(frozen=True)
class StructureHit:
    line: int | None
    detail: str


def lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    number = 1
    while piece := stream.readline(LINE):
        yield number, piece
        if piece.endswith(b"\n"):
            number += 1


def _first(stream: IO[bytes], pattern: re.Pattern[bytes], detail: str) -> list[StructureHit]:
    for number, line in lines(stream):
        if pattern.search(line):
            return [StructureHit(number, detail)]
    return []


REGISTRY_KEYS = ("auth", "identitytoken", "password", "registrytoken")
REGISTRY_KEY_LINE = re.compile(rb'"(?:' + b"|".join(k.encode() for k in REGISTRY_KEYS) + rb')"\s*:\s*"[^"]')


def registry_credentials(stream: IO[bytes]) -> list[StructureHit]:
    """docker config.json / containers auth.json: an "auths" entry with "auth" or "identitytoken"."""
    data = stream.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        return [StructureHit(None, "a registry auth file too large to parse is baked in")]
    try:
        config = json.loads(data)
    except ValueError:
        return [StructureHit(None, "a registry auth file that is not valid JSON is baked in; "
                                   "it cannot be told free of credentials")]
    auths = config.get("auths") if isinstance(config, dict) else None
    entries = auths.values() if isinstance(auths, dict) else []
    if not any(isinstance(e, dict) and any(isinstance(e.get(k), str) and e[k] for k in REGISTRY_KEYS)
               for e in entries):
        return []
    line = next((n for n, text in enumerate(data.splitlines(), 1) if REGISTRY_KEY_LINE.search(text)), None)
    return [StructureHit(line, "container registry credentials are baked in")]


KUBE_KIND = re.compile(rb"""^kind:\s*["']?Config["']?\s*(?:#.*)?$""")
KUBE_USERS = re.compile(rb"^users:")
KUBE_SECRET = re.compile(rb"""^\s*(?:-\s+)?(?:token|client-key-data|password|client-secret|"""
                         rb"""(?:access|id|refresh)-token)\s*:\s*(?!["']{2}|null\b|~|\s*$)\S""")


def _kubeconfig(stream: IO[bytes], known: bool) -> list[StructureHit]:
    kind = users = False
    secret = None
    for number, line in lines(stream):
        kind = kind or bool(KUBE_KIND.match(line))
        users = users or bool(KUBE_USERS.match(line))
        if secret is None and KUBE_SECRET.match(line):
            secret = number
    if secret is None or not (known or (kind and users)):
        return []
    return [StructureHit(secret, "a kubeconfig with user credentials is baked in")]


def kubeconfig_known(stream: IO[bytes]) -> list[StructureHit]:
    """~/.kube/config, /etc/kubernetes/*.conf: a token, client key or password."""
    return _kubeconfig(stream, known=True)


def kubeconfig_any(stream: IO[bytes]) -> list[StructureHit]:
    """Any YAML of `kind: Config` with `users:` is a kubeconfig, whatever its name."""
    return _kubeconfig(stream, known=False)


def gh_hosts(stream: IO[bytes]) -> list[StructureHit]:
    return _first(stream, re.compile(rb"^\s*oauth_token\s*:\s*\S"), "a GitHub CLI token is baked in")


def npmrc(stream: IO[bytes]) -> list[StructureHit]:
    return _first(stream, re.compile(rb"^\s*(?:\S*:)?_(?:authToken|auth|password)\s*=\s*\S"),
                  "an npm registry credential is baked in")


def pypirc(stream: IO[bytes]) -> list[StructureHit]:
    return _first(stream, re.compile(rb"^\s*password\s*[=:]\s*\S"), "a PyPI password or token is baked in")


ACCOUNT = re.compile(rb"[A-Za-z0-9_.][A-Za-z0-9_.$-]{0,31}")


def _account(line: bytes) -> tuple[str, bytes] | None:
    """(how to name the account, its password field); a name that does not look like one is not repeated."""
    fields = line.rstrip(b"\r\n").split(b":")
    if len(fields) < 2 or not fields[0] or line[:1] in (b"#", b"+", b"-"):
        return None
    name = f"account '{fields[0].decode()}'" if ACCOUNT.fullmatch(fields[0]) else "an account"
    return name, fields[1]


def shadow(stream: IO[bytes]) -> list[StructureHit]:
    """A password field that is neither locked ('!' or '*' first) is usable; an empty one is passwordless."""
    hits = []
    for number, line in lines(stream):
        account = _account(line)
        if account and not account[1].startswith((b"!", b"*")):
            state = "an empty (passwordless)" if not account[1] else "a usable"
            hits.append(StructureHit(number, f"{account[0]} has {state} password"))
    return hits


def passwd(stream: IO[bytes]) -> list[StructureHit]:
    """Field 2 of /etc/passwd other than 'x' (see shadow) or a lock is a password (or none) given in place."""
    hits = []
    for number, line in lines(stream):
        account = _account(line)
        if account and account[1] != b"x" and not account[1].startswith((b"!", b"*")):
            state = "an empty (passwordless)" if not account[1] else "a usable"
            hits.append(StructureHit(number, f"{account[0]} has {state} password in /etc/passwd"))
    return hits


def decrypted_vault(stream: IO[bytes]) -> list[StructureHit]:
    """A file named like an Ansible vault that is not encrypted."""
    if stream.read(4096).lstrip().startswith(b"$ANSIBLE_VAULT;"):
        return []
    return [StructureHit(None, "an Ansible vault file is baked in decrypted")]
