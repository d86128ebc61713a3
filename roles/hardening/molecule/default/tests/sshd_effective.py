"""The sshd configuration sshd really uses, compared with the hardened one (the role's sshd check).

Reading /etc/ssh/sshd_config is not enough: it includes /etc/ssh/sshd_config.d/*.conf at its end, and a
`Match` block in such a drop-in turns passwords or root logins back on for the users or addresses it
matches, while `sshd -T` alone does not apply Match blocks. So sshd itself is asked: `sshd -T` for the
global values, `sshd -T -C user=...,host=...,addr=...` for root, the break-glass account and one
connection that satisfies each Match block of the configuration and its includes, and `sshd -i` for the
version banner (DebianBanner, which Debian's `sshd -T` does not print).

Shared by test_hardening.py (testinfra: Molecule and bake.py verify) and the unit tests; `run` is any
callable that runs a shell command on the machine under test and returns (exit code, stdout, stderr).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable

Run = Callable[[str], tuple[int, str, str]]

SSHD = "/usr/sbin/sshd"
CONFIG = "/etc/ssh/sshd_config"
SSH_DIR = "/etc/ssh"  # relative Include paths are relative to it
BREAK_GLASS_USER = "breakglass"
# every connection checked is one from a documentation address (RFC 5737) unless a Match block asks for another
CLIENT = {"host": "client.example", "addr": "203.0.113.1"}
ACCOUNTS = ("root", BREAK_GLASS_USER)
# the role's defaults, as `sshd -T` prints them (lower-case keywords; lists joined with commas)
EXPECTED = {
    "permitrootlogin": "no",
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "permitemptypasswords": "no",
    "pubkeyauthentication": "yes",
    "hostbasedauthentication": "no",
    "authenticationmethods": "any",
    "x11forwarding": "no",
    "allowtcpforwarding": "no",
    "allowagentforwarding": "no",
    "allowstreamlocalforwarding": "no",
    "disableforwarding": "yes",
    "gatewayports": "no",
    "permittunnel": "no",
    "permituserenvironment": "no",
    "maxauthtries": "4",
    "maxsessions": "10",
    "maxstartups": "10:30:60",
    "logingracetime": "60",
    "clientaliveinterval": "300",
    "clientalivecountmax": "3",
    "loglevel": "VERBOSE",
    "banner": "/etc/issue.net",
    "allowusers": BREAK_GLASS_USER,
    # where keys may come from: the break-glass key the runtime config installs at boot, nothing else
    "authorizedkeysfile": ".ssh/authorized_keys /run/bakery-break-glass/authorized_keys/%u",
    "authorizedkeyscommand": "none",
    "authorizedprincipalsfile": "none",
    "authorizedprincipalscommand": "none",
    "trustedusercakeys": "none",
    "usepam": "yes",
    "ciphers": "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,"
               "aes256-ctr,aes192-ctr,aes128-ctr",
    "macs": "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com,"
            "hmac-sha2-512,hmac-sha2-256",
    "kexalgorithms": "sntrup761x25519-sha512@openssh.com,curve25519-sha256@libssh.org,"
                     "diffie-hellman-group-exchange-sha256",
}
# Match criteria -> the field of `sshd -T -C` that satisfies them (Group is satisfied through a member's user name)
CRITERIA = {"user": "user", "host": "host", "address": "addr", "localaddress": "laddr", "localport": "lport",
            "rdomain": "rdomain"}
PLACEHOLDER = {"user": "bakery-check", "host": "other.example", "addr": "198.51.100.7", "laddr": "198.51.100.8",
               "lport": "2", "rdomain": "bakery-check"}
KEY = "/tmp/bakery-sshd-check-hostkey"  # throwaway host key: none is baked
DIRECTIVE = re.compile(r"\s*(?P<keyword>[A-Za-z]+)(?:\s*=\s*|\s+)(?P<rest>.*)")  # `Keyword value`, `Keyword=value`


def parse(output: str) -> dict[str, str]:
    """`sshd -T` output as keyword -> value; a repeated keyword (HostKey, AcceptEnv) keeps its first value."""
    values: dict[str, str] = {}
    for line in output.splitlines():
        keyword, _, value = line.strip().partition(" ")
        if keyword:
            values.setdefault(keyword.lower(), value)
    return values


def differences(effective: dict[str, str], expected: dict[str, str] = EXPECTED) -> list[str]:
    """One line per setting whose effective value is not the hardened one."""
    return [f"{keyword} is {effective.get(keyword, '(unset)')!r}, want {want!r}"
            for keyword, want in expected.items() if effective.get(keyword) != want]


def directives(text: str, keyword: str) -> list[list[str]]:
    """The arguments of every `keyword` line of a config file (case-insensitive; `Keyword=value` too)."""
    found = []
    for line in text.splitlines():
        parts = DIRECTIVE.match(line)
        if not parts or parts["keyword"].lower() != keyword:
            continue
        rest = parts["rest"]
        try:
            found.append(shlex.split(rest, comments=True))
        except ValueError:  # an unbalanced quote: sshd refuses the file anyway, and `sshd -T` says so
            found.append(rest.split())
    return found


def _concrete(field: str, patterns: str) -> str:
    """A value that one of a Match criterion's comma-separated patterns accepts (the first one not negated)."""
    positive = [p for p in patterns.split(",") if p and not p.startswith("!")]
    if not positive:
        return PLACEHOLDER[field]
    pattern = positive[0]
    if field in ("addr", "laddr"):
        if "/" in pattern:
            network = ipaddress.ip_network(pattern, strict=False)
            return str(next(network.hosts(), network.network_address))
        return pattern.replace("*", "1").replace("?", "1")
    if field == "lport":
        return pattern
    return pattern.replace("*", "x").replace("?", "x")


def connection(match_args: list[str], members: Callable[[str], list[str]]) -> dict[str, str] | None:
    """A connection (`sshd -T -C` fields) that satisfies one Match line, or None if no account can (empty Group)."""
    spec = {"user": BREAK_GLASS_USER, **CLIENT}
    pairs = list(zip(match_args[::2], match_args[1::2], strict=False))
    for criterion, patterns in pairs:
        criterion = criterion.lower()
        if criterion == "group":
            names = [m for g in patterns.split(",") if g and not g.startswith("!") for m in members(g)]
            if not names:
                return None
            spec["user"] = names[0]
        elif criterion in CRITERIA:
            spec[CRITERIA[criterion]] = _concrete(CRITERIA[criterion], patterns)
    return spec


def config_texts(run: Run, config: str = CONFIG, depth: int = 0) -> list[str]:
    """The text of the config file and of every file it includes (recursively, as sshd reads them)."""
    rc, text, _ = run(f"cat {shlex.quote(config)}")
    texts = [text] if rc == 0 else []
    for patterns in (directives(text, "include") if depth < 8 else []):
        for pattern in patterns:
            path = pattern if pattern.startswith("/") else f"{SSH_DIR}/{pattern}"
            # the shell expands the glob, sorted, like sshd's glob(3); a pattern that matches nothing stays as it is
            _, listing, _ = run(f"for f in {path}; do [ -f \"$f\" ] && echo \"$f\"; done; true")
            for included in listing.splitlines():
                texts += config_texts(run, included, depth + 1)
    return texts


def group_members(run: Run, group: str) -> list[str]:
    """Accounts in a group: listed members and accounts whose primary group it is."""
    rc, entry, _ = run(f"getent group {shlex.quote(group)}")
    if rc != 0 or entry.count(":") < 3:
        return []
    _, _, gid, listed = entry.strip().split(":", 3)
    _, passwd, _ = run("getent passwd")
    primary = [f[0] for f in (line.split(":") for line in passwd.splitlines()) if len(f) > 3 and f[3] == gid]
    return [m for m in listed.split(",") if m] + primary


def connections(run: Run, config: str = CONFIG) -> list[dict[str, str]]:
    """root, the break-glass account, and one connection per Match block found in the configuration."""
    specs = [{"user": user, **CLIENT} for user in ACCOUNTS]
    for text in config_texts(run, config):
        for match_args in directives(text, "match"):
            spec = connection(match_args, lambda g: group_members(run, g))
            if spec and spec not in specs:
                specs.append(spec)
    return specs


def check(run: Run, config: str = CONFIG, expected: dict[str, str] = EXPECTED) -> list[str]:
    """Every way the effective sshd configuration differs from the hardened one; [] when there is none."""
    problems = []
    run(f"rm -f {KEY} {KEY}.pub")
    rc, _, err = run(f"ssh-keygen -q -t ed25519 -N '' -f {KEY}")
    if rc != 0:
        return [f"ssh-keygen could not make a throwaway host key: {err.strip()}"]
    run("install -d -m 0755 /run/sshd")  # the privilege separation directory sshd insists on (made by ssh.service)
    sshd = f"{SSHD} -f {shlex.quote(config)} -h {KEY}"
    try:
        for spec in [None, *connections(run, config)]:
            where = "global" if spec is None else ",".join(f"{k}={v}" for k, v in spec.items())
            option = "" if spec is None else f" -C {shlex.quote(where)}"
            rc, out, err = run(f"{sshd} -T{option}")
            if rc != 0:
                problems.append(f"{where}: sshd -T failed: {err.strip()[-300:]}")
                continue
            problems += [f"{where}: {difference}" for difference in differences(parse(out), expected)]
        # sshd -i speaks the protocol on stdin/stdout: its first line is the version banner a client sees
        # (it exits 255 at end of input, which testinfra's SSH backend takes for a lost connection: hence || true)
        _, out, _ = run(f"{sshd} -i < /dev/null || true")
        banner = out.splitlines()[0].strip() if out.strip() else ""
        if not re.fullmatch(r"SSH-2\.0-OpenSSH_\S+", banner):
            problems.append(f"banner: {banner!r} names more than OpenSSH's version (want DebianBanner no)")
    finally:
        run(f"rm -f {KEY} {KEY}.pub")
    return problems
