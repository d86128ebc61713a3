"""Path rules of the secret scan: what a file's name (and, for a few names, its structure) gives away.

A path here is absolute inside its image or archive ("/root/.netrc"); the walk adds the archive prefix.
The content rules (secret_content) run on every file besides; these rules catch what they cannot:
credential files whatever their content looks like, histories, leftovers of the bake, and access paths
(authorized_keys, sudoers drop-ins, usable passwords) that the runtime config is meant to own.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from bakery.verify import secret_access as access
from bakery.verify import secret_structured as structured
from bakery.verify.secret_structured import StructureHit

FILE, DIR, SYMLINK, HARDLINK, OTHER = "file", "dir", "symlink", "hardlink", "other"
ARCHIVE_NOT_SCANNED = "archive-not-scanned"

HISTORY_NAMES = (".bash_history", ".zsh_history", ".zhistory", ".sh_history", ".ash_history", ".history",
                 ".python_history", ".mysql_history", ".psql_history", ".sqlite_history", ".node_repl_history",
                 ".rediscli_history", ".lesshst", ".viminfo", ".irb_history", ".Rhistory", "fish_history")
# a history or a backup of one: .bash_history.bak, .bash_history~, .bash_history-20240101, .zsh_history.old
HISTORY = re.compile("(?:" + "|".join(re.escape(n) for n in HISTORY_NAMES) + r")(?:[.~_-].*)?", re.S)
CREDENTIAL_FILES = {".netrc": "netrc", "_netrc": "netrc", ".pgpass": "pgpass", ".my.cnf": "mysql-credentials",
                    ".git-credentials": "git-credentials", ".vault-token": "vault-token-file",
                    ".s3cfg": "cloud-credentials", ".boto": "cloud-credentials", "secring.gpg": "gpg-private-key"}
CLOUD_CREDENTIAL_PATHS = ("/.aws/credentials", "/.config/gcloud/credentials.db", "/.config/gcloud/access_tokens.db",
                          "/.config/gcloud/application_default_credentials.json", "/.azure/accessTokens.json",
                          "/.azure/msal_token_cache.json")
VAULT_PASSWORD = re.compile(r"\.?vault[_-]pass(?:word)?(?:[_.-].*)?", re.S)
SSH_HOST_KEY = re.compile(r"/etc/ssh/ssh_host_[^/]*_key(?:\.pub)?", re.S)
# /etc/shadow, /etc/gshadow and their copies: shadow-, shadow~, shadow.bak, /var/backups/gshadow.bak
SHADOW_SYSTEM = re.compile(r"/(?:etc|var/backups)/g?shadow(?:[-~.][^/]*)?", re.S)
SHADOW_COPY = re.compile(r"g?shadow(?:-|~|\.(?:bak|old|orig|save|backup|dpkg-old|dpkg-dist|ucf-old)[^/]*)", re.S)
SSHD_CONFIG = re.compile(r"/etc/ssh/sshd_config(?:\.d/[^/]+)?", re.S)

DETAILS = {
    "git-directory": "a git repository (history, maybe credentials) is baked in",
    "vcs-directory": "a version-control checkout (history, maybe credentials) is baked in",
    "ansible-leftover": "a leftover of an Ansible run (modules with their arguments) is baked in",
    "gpg-private-key": "a GnuPG secret key is baked in",
    "shell-history": "a shell or tool history is baked in",
    "netrc": "a credentials file is baked in", "pgpass": "a credentials file is baked in",
    "mysql-credentials": "a credentials file is baked in", "git-credentials": "a credentials file is baked in",
    "vault-token-file": "a HashiCorp Vault token file is baked in",
    "vault-password-file": "an Ansible vault password file is baked in",
    "cloud-credentials": "a cloud credentials file is baked in",
    "ssh-host-key": "SSH host keys must be made at first boot, not baked",
    "baked-authorized-keys": "an authorized_keys file is baked in; keys come from the runtime config",
    "baked-sudoers": "a sudoers drop-in is baked in; access comes from the runtime config",
    ARCHIVE_NOT_SCANNED: "an archive the scan could not look into",
    "link-not-scanned": "a hard link whose name calls for rules its target's did not, and the target was not "
                        "kept (over 16 MiB or not in this layer): not scanned under this name",
    "bad-whiteout": "an OCI whiteout entry that is not an empty regular file: it is no deletion marker",
    "too-many-findings": "more findings than a report lists",
}
PATH_RULE_NAMES = frozenset({*DETAILS, *structured.STRUCTURE_RULE_NAMES, *access.ACCESS_RULE_NAMES})


@dataclass(frozen=True)
class PathHit:
    path: str  # what to report: the file, or the repository a file belongs to
    rule: str
    line: int | None = None
    detail: str = ""


def _hit(path: str, rule: str) -> PathHit:
    return PathHit(path, rule, None, DETAILS[rule])


def name_hits(path: str, kind: str, size: int) -> list[PathHit]:
    """The rules a name alone decides. `size` 0 means an empty regular file (a hard link's size is unknown)."""
    parts = path.strip("/").split("/")
    tree = _tree_hit(parts, kind)
    if tree:
        return [tree]
    holds_data = kind == HARDLINK or (kind == FILE and size > 0)
    hits = [hit for hit in (_access_hit(path, parts, kind),) if hit and (holds_data or kind == SYMLINK)]
    if holds_data:
        hits += _file_hits(path, parts[-1])
    return hits


def _tree_hit(parts: list[str], kind: str) -> PathHit | None:
    """Everything below a repository, an Ansible tmp directory or a GnuPG key directory."""
    for i, segment in enumerate(parts):
        top = "/" + "/".join(parts[: i + 1])
        if segment == ".git":
            return _hit(top, "git-directory")
        if segment in (".hg", ".svn"):
            return _hit(top, "vcs-directory")
        below = len(parts) - i - 1
        if segment == ".ansible" and below >= 2 and parts[i + 1] == "tmp" and kind != DIR:
            return _hit("/" + "/".join(parts), "ansible-leftover")
        if segment == "private-keys-v1.d" and below >= 1 and kind != DIR:
            return _hit("/" + "/".join(parts), "gpg-private-key")
    return None


def _access_hit(path: str, parts: list[str], kind: str) -> PathHit | None:
    """authorized_keys of any account and sudoers drop-ins: a symlink counts too, it is a baked access path."""
    name, parent = parts[-1], "/" + "/".join(parts[:-1])
    keys = name.startswith("authorized_keys") and (parent.endswith("/.ssh") or parent == "/etc/ssh")
    # a symlinked key directory or key file points the check somewhere it does not look
    # (man pages and docs named authorized_keys.5.gz are links too, and no key file)
    linked = kind == SYMLINK and (name == ".ssh" or (name.startswith("authorized_keys")
                                                     and not path.startswith("/usr/share/")))
    if keys or linked or (parent == "/etc/ssh/authorized_keys.d" and kind != DIR):
        return _hit(path, "baked-authorized-keys")
    # a drop-in's content decides (secret_access.sudoers_dropin, sudoers_readme); a link or device is a finding
    if parent == "/etc/sudoers.d" and kind not in (FILE, DIR):
        return _hit(path, "baked-sudoers")
    return None


def _file_hits(path: str, name: str) -> list[PathHit]:
    hits = []
    if HISTORY.fullmatch(name):
        hits.append(_hit(path, "shell-history"))
    if name in CREDENTIAL_FILES:
        hits.append(_hit(path, CREDENTIAL_FILES[name]))
    if path.endswith(CLOUD_CREDENTIAL_PATHS):
        hits.append(_hit(path, "cloud-credentials"))
    if VAULT_PASSWORD.fullmatch(name):
        hits.append(_hit(path, "vault-password-file"))
    if SSH_HOST_KEY.fullmatch(path):
        hits.append(_hit(path, "ssh-host-key"))
    return hits


Check = Callable[..., list[StructureHit]]


def structure_checks(path: str) -> list[tuple[str, Check]]:
    """The rules that need to read a file a name selects: (rule, check(stream)) pairs."""
    p = PurePosixPath(path)
    name, parents = p.name, set(p.parent.parts)
    checks: list[tuple[str, Check]] = []
    if (name == "config.json" and ".docker" in parents) or (name == "auth.json" and "containers" in parents):
        checks.append(("registry-credentials", structured.registry_credentials))
    if path.endswith("/.kube/config") or (path.startswith("/etc/kubernetes/") and name.endswith(".conf")):
        checks.append(("kubeconfig-credentials", structured.kubeconfig_known))
    elif name.endswith((".yaml", ".yml", ".conf")) or name in ("config", "kubeconfig"):
        checks.append(("kubeconfig-credentials", structured.kubeconfig_any))
    if path.endswith("/gh/hosts.yml"):
        checks.append(("github-cli-token", structured.gh_hosts))
    if name in (".npmrc", "npmrc"):
        checks.append(("npmrc-credentials", structured.npmrc))
    if name == ".pypirc":
        checks.append(("pypirc-credentials", structured.pypirc))
    if SHADOW_SYSTEM.fullmatch(path) or SHADOW_COPY.fullmatch(name):
        checks.append(("usable-password", structured.shadow))
    if path == "/etc/sudoers":
        checks.append(("baked-sudoers", access.sudoers))
    if path == "/etc/sudoers.d/README":
        checks.append(("baked-sudoers", access.sudoers_readme))
    elif path.startswith("/etc/sudoers.d/") and path.count("/") == 3:
        checks.append(("baked-sudoers", access.sudoers_dropin))
    if SSHD_CONFIG.fullmatch(path):
        checks.append(("sshd-key-source", access.sshd_key_source))
    if path in ("/etc/passwd", "/etc/passwd-"):
        checks.append(("usable-password", structured.passwd))
    if re.search(r"(?i)vault.*\.ya?ml$", name):
        checks.append(("decrypted-vault", structured.decrypted_vault))
    return checks


class BareRepositories:
    """A bare repository (`x.git/` with HEAD, objects/ and refs/) seen member by member, reported once."""

    MARKERS = frozenset({"HEAD", "objects", "refs"})

    def __init__(self) -> None:
        self._seen: dict[str, set[str]] = defaultdict(set)

    def see(self, path: str) -> str | None:
        """The repository's path when this member completes it, else None."""
        parts = path.strip("/").split("/")
        for i, segment in enumerate(parts[:-1]):
            child = parts[i + 1]
            if segment.endswith(".git") and segment != ".git" and child in self.MARKERS:
                if child == "HEAD" and len(parts) != i + 2:
                    continue
                repo = "/" + "/".join(parts[: i + 1])
                marks = self._seen[repo]
                if len(marks) < len(self.MARKERS):
                    marks.add(child)
                    if len(marks) == len(self.MARKERS):
                        return repo
        return None
