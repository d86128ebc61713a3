"""Secret scan of an image's filesystem above its base.

An immutable image is copied to every server and every region; anything secret
baked into it leaks everywhere. Findings name the path and the rule; an
allow-list (`verify-allowlist.yml`, a reason for every entry) takes care of
false positives.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from bakery.config import load_yaml
from bakery.errors import ConfigError

MAX_SCAN_BYTES = 2 << 20  # content rules read files up to 2 MiB; keys and credentials are small

# Programs such as ssh-keygen carry the PEM marker as a string constant: in a binary file only a whole
# key block (marker, then a base64 line) counts; in a text file the marker alone does.
PEM_BLOCK = re.compile(rb"-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----\r?\n"
                       rb"(?:[A-Za-z-]+:[^\n]*\r?\n)*\r?\n?[A-Za-z0-9+/=]{20,}")
CONTENT_RULES = {
    "private-key": re.compile(rb"-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"),
    "aws-access-key-id": re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),
    "aws-secret-access-key": re.compile(rb"(?i)aws_?secret_?access_?key['\"]?\s*[:=]\s*['\"]?"
                                        rb"[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"),
}
HISTORY_FILES = {".bash_history", ".zsh_history", ".sh_history", ".history", ".python_history", ".mysql_history",
                 ".psql_history", ".sqlite_history", ".node_repl_history", ".rediscli_history"}
CREDENTIAL_FILES = {".netrc": "netrc", ".pgpass": "pgpass", ".my.cnf": "mysql-credentials",
                    ".git-credentials": "git-credentials"}
VAULT_NAME = re.compile(r"(?i)vault.*\.ya?ml$")
SSH_HOST_KEY = re.compile(r"^etc/ssh/ssh_host_.*_key(\.pub)?$")


@dataclass(frozen=True)
class Finding:
    path: str
    rule: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class AllowEntry:
    path: str
    rule: str
    reason: str


def load_allowlist(path: Path) -> list[AllowEntry]:
    """verify-allowlist.yml: a list of {path: glob, rule: name or '*', reason: why this is not a secret}."""
    if not path.is_file():
        return []
    data = load_yaml(path) or []
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of entries with path, rule and reason")
    entries = []
    for index, item in enumerate(data, start=1):
        fields = ("path", "rule", "reason")
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and str(item[k]).strip() for k in fields):
            raise ConfigError(f"{path}: entry {index} needs non-empty 'path', 'rule' and 'reason' "
                              "(say why it is not a secret)")
        known = {*CONTENT_RULES, "git-directory", "shell-history", "ssh-host-key", "decrypted-vault", "*",
                 *CREDENTIAL_FILES.values()}
        if item["rule"] not in known:
            raise ConfigError(f"{path}: entry {index}: unknown rule '{item['rule']}'; "
                              f"known rules: {', '.join(sorted(known))}")
        entries.append(AllowEntry(item["path"].lstrip("/"), item["rule"], item["reason"]))
    return entries


def _allowed(finding: Finding, allowlist: list[AllowEntry]) -> bool:
    return any(fnmatch.fnmatch(finding.path.lstrip("/"), e.path) and e.rule in ("*", finding.rule) for e in allowlist)


def scan(rootfs: Path, paths: list[str], allowlist: list[AllowEntry]) -> list[Finding]:
    """Scan the given paths (relative to rootfs, e.g. from `podman image diff`) for secrets."""
    findings: list[Finding] = []
    for rel in sorted(set(p.lstrip("/") for p in paths)):
        if not rel:
            continue
        full = rootfs / rel
        name = full.name
        parts = Path(rel).parts
        if ".git" in parts:
            top = "/" + "/".join(parts[: parts.index(".git") + 1])
            findings.append(Finding(top, "git-directory", "a git checkout (history, maybe credentials) is baked in"))
            continue
        if full.is_symlink() or not full.is_file():
            continue
        if name in HISTORY_FILES:
            findings.append(Finding("/" + rel, "shell-history", "a shell history is baked in"))
        if name in CREDENTIAL_FILES:
            findings.append(Finding("/" + rel, CREDENTIAL_FILES[name], "a credentials file is baked in"))
        if SSH_HOST_KEY.match(rel):
            findings.append(Finding("/" + rel, "ssh-host-key", "SSH host keys must be made at first boot, not baked"))
            continue
        try:
            size = full.stat().st_size
            with full.open("rb") as handle:
                head = handle.read(MAX_SCAN_BYTES)
        except OSError:
            continue
        if VAULT_NAME.search(name) and not head.lstrip().startswith(b"$ANSIBLE_VAULT;"):
            findings.append(Finding("/" + rel, "decrypted-vault", "an Ansible vault file is baked in decrypted"))
        binary = b"\0" in head[:8192]
        for rule, pattern in CONTENT_RULES.items():
            if rule == "private-key" and binary:
                pattern = PEM_BLOCK
            if pattern.search(head):
                findings.append(Finding("/" + rel, rule, f"matched in the first {min(size, MAX_SCAN_BYTES)} bytes"))
    # de-duplicate git directories (every file below .git reports the same directory)
    unique = list(dict.fromkeys(findings))
    return [f for f in unique if not _allowed(f, allowlist)]
