"""Access the runtime config owns, read from the files that grant it: sudo rules and sshd's key sources.

The image grants no access of its own: sudo rules and SSH keys come from the runtime config. A
drop-in in /etc/sudoers.d is flagged by its name (secret_paths); these checks read what the name
cannot tell: /etc/sudoers beyond Debian's default, a sudoers.d README that holds rules (sudo reads
it too), includes that pull rules from elsewhere, and sshd settings that take keys from anywhere but
the hardening role's two places.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

from bakery.verify.secret_structured import StructureHit, lines

ACCESS_RULE_NAMES = frozenset({"baked-sudoers", "sshd-key-source"})

# Debian 12's /etc/sudoers, whitespace collapsed (secure_path's value is its own business)
DEBIAN_SUDOERS = frozenset({"Defaults env_reset", "Defaults mail_badpass", "Defaults use_pty",
                            "root ALL=(ALL:ALL) ALL", "%sudo ALL=(ALL:ALL) ALL"})
SECURE_PATH = re.compile(r'Defaults secure_path="?[^"\s]*"?')
INCLUDE = re.compile(r"[@#]include(?:dir)?\s+(\S.*)")
SUDOERS_D = re.compile(r'"?/etc/sudoers\.d/?"?')


def _logical_lines(stream: IO[bytes]) -> Iterator[tuple[int, str]]:
    """(first line number, text) with backslash continuations joined and whitespace collapsed."""
    start, parts = 0, []
    for number, raw in lines(stream):
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        start = start or number
        if text.endswith("\\"):
            parts.append(text[:-1])
            continue
        parts.append(text)
        yield start, " ".join(" ".join(parts).split())
        start, parts = 0, []
    if parts:
        yield start, " ".join(" ".join(parts).split())


def _sudoers_lines(stream: IO[bytes]) -> Iterator[tuple[int, str, bool]]:
    """(line, text, is_include) for every line sudo acts on: `#include` is a directive, not a comment."""
    for number, text in _logical_lines(stream):
        include = INCLUDE.fullmatch(text)
        if include:
            yield number, text, True
        elif text and not text.startswith("#"):
            yield number, text, False


def sudoers(stream: IO[bytes]) -> list[StructureHit]:
    """/etc/sudoers: Debian's default rules, includes of /etc/sudoers.d only; anything else is a baked grant."""
    hits = []
    for number, text, include in _sudoers_lines(stream):
        if include:
            target = INCLUDE.fullmatch(text)
            if target and not SUDOERS_D.fullmatch(target.group(1)):
                hits.append(StructureHit(number, "/etc/sudoers includes rules from outside /etc/sudoers.d"))
        elif text not in DEBIAN_SUDOERS and not SECURE_PATH.fullmatch(text):
            hits.append(StructureHit(number, "/etc/sudoers holds a rule beyond Debian's default; "
                                             "access comes from the runtime config"))
    return hits


def sudoers_readme(stream: IO[bytes]) -> list[StructureHit]:
    """sudo reads /etc/sudoers.d/README like any drop-in: it is harmless only while it is comments."""
    return [StructureHit(number, "/etc/sudoers.d/README holds sudo rules or includes; sudo reads it")
            for number, _, _ in _sudoers_lines(stream)][:1]


def sudoers_dropin(stream: IO[bytes]) -> list[StructureHit]:
    """A drop-in in /etc/sudoers.d: settings (`Defaults ...`) are not access, a rule or an include is; a Defaults
    line that switches authentication is, too (it changes what Debian's own rules demand)."""
    hits = []
    for number, text, _ in _sudoers_lines(stream):
        if not text.startswith("Defaults") or "authenticate" in text:
            hits.append(StructureHit(number, "a sudoers drop-in grants or includes rules; access comes from the "
                                             "runtime config"))
    return hits[:1]


# the hardening role's AuthorizedKeysFile (roles/hardening/templates/sshd_config.j2 and vars
# __hardening_break_glass_keys_dir) and OpenSSH's default: keys only in ~/.ssh and the break-glass dir
KEY_FILES = frozenset({".ssh/authorized_keys", ".ssh/authorized_keys2", "%h/.ssh/authorized_keys",
                       "%h/.ssh/authorized_keys2", "/run/bakery-break-glass/authorized_keys/%u"})
SSHD_SETTING = re.compile(r"(?i)(authorizedkeysfile|authorizedkeyscommand|authorizedprincipalsfile|"
                          r"authorizedprincipalscommand|trustedusercakeys)(?:\s*=\s*|\s+)(.*)")


def sshd_key_source(stream: IO[bytes]) -> list[StructureHit]:
    """sshd_config and its drop-ins: a key file elsewhere, a key or principals command, a trusted user CA."""
    hits = []
    for number, text in _logical_lines(stream):
        setting = SSHD_SETTING.fullmatch(text)
        if not setting or text.startswith("#"):
            continue
        keyword, value = setting.group(1).lower(), setting.group(2).split("#")[0].split()
        if value in ([], ["none"]) or (keyword == "authorizedkeysfile" and set(value) <= KEY_FILES):
            continue
        hits.append(StructureHit(number, f"sshd takes keys from a source the scan does not see ({setting.group(1)}); "
                                         "keys come from the runtime config"))
    return hits
