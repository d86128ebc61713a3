"""Access paths the runtime config owns: sudo rules, where sshd takes keys from, copies of /etc/shadow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.unit.test_secret_archives import scan

pytestmark = pytest.mark.unit

DEBIAN_SUDOERS = """#
# This file MUST be edited with the 'visudo' command as root.
#
Defaults\tenv_reset
Defaults\tmail_badpass
Defaults\tsecure_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# This fixes CVE-2005-4890 and possibly breaks some versions of kdesu
# (#1011624, https://bugs.kde.org/show_bug.cgi?id=452532)
Defaults\tuse_pty

# User privilege specification
root\tALL=(ALL:ALL) ALL

# Allow members of group sudo to execute any command
%sudo\tALL=(ALL:ALL) ALL

# See sudoers(5) for more information on "@include" directives:

@includedir /etc/sudoers.d
"""
SHADOW_LINE = ("root:$6$abcdefgh$" + "Qy1fE0nQ0yQ4kV8m7xKkO6f3n3R0b8yB0Jd6pXbRjQm0q0Fv4aX4Zq1hV"
               "fQw3Kx0H2f8n1T2n5w7Y9aBcDeF:19000::::::\n")


def rules(entries):
    return {(f.path, f.rule, f.line) for f in scan(entries)}


def test_a_sudoers_drop_in_of_settings_only_is_not_access_but_a_rule_or_an_authentication_change_is():
    """The hardening role bakes CIS's sudo settings (use_pty, logfile, timestamp_timeout) and no rule."""
    settings = ("# CIS 5.2.x\nDefaults use_pty\nDefaults logfile=\"/var/log/sudo.log\"\n"
                "Defaults timestamp_timeout=5\n")
    assert rules([("etc/sudoers.d/60-bakery-hardening", settings)]) == set()
    assert ("/etc/sudoers.d/60-x", "baked-sudoers", 5) in rules(
        [("etc/sudoers.d/60-x", settings + "deploy ALL=(ALL) NOPASSWD: ALL\n")])
    assert rules([("etc/sudoers.d/60-x", "Defaults:deploy !authenticate\n")]) == {
        ("/etc/sudoers.d/60-x", "baked-sudoers", 1)}
    assert rules([("etc/sudoers.d/60-x", "@includedir /opt/sudo\n")]) == {("/etc/sudoers.d/60-x", "baked-sudoers", 1)}
    linked = rules([("etc/sudoers.d/60-x", ("symlink", "/opt/grants"))])
    assert linked == {("/etc/sudoers.d/60-x", "baked-sudoers", None)}


def test_nsswitch_names_databases_not_passwords():
    assert rules([("etc/nsswitch.conf", "passwd:         files\nshadow:         files\n"
                                        "hosts:          files myhostname dns\n")]) == set()


def test_the_sudoers_readme_is_exempt_only_while_it_is_comments():
    assert rules([("etc/sudoers.d/README", "# sudo reads this directory\n\n#\n")]) == set()
    assert rules([("etc/sudoers.d/README", "#\nDefaults:deploy !authenticate\n")]) == {
        ("/etc/sudoers.d/README", "baked-sudoers", 2)}
    assert rules([("etc/sudoers.d/README", "# x\n#includedir /opt/sudo\n")]) == {
        ("/etc/sudoers.d/README", "baked-sudoers", 2)}


def test_debians_sudoers_passes_and_additions_are_flagged():
    assert rules([("etc/sudoers", DEBIAN_SUDOERS)]) == set()
    added = DEBIAN_SUDOERS + "deploy ALL=(ALL:ALL) ALL\nDefaults:deploy !authenticate\n@includedir /opt/sudo\n"
    lines = len(DEBIAN_SUDOERS.splitlines())
    assert rules([("etc/sudoers", added)]) == {("/etc/sudoers", "baked-sudoers", lines + n) for n in (1, 2, 3)}


def test_a_continued_sudoers_line_is_read_whole():
    text = DEBIAN_SUDOERS.replace("%sudo\tALL=(ALL:ALL) ALL", "%sudo\tALL=(ALL:ALL) ALL, \\\n  deploy ALL")
    assert {rule for _, rule, _ in rules([("etc/sudoers", text)])} == {"baked-sudoers"}


def test_a_symlinked_key_directory_is_flagged():
    found = rules([("home/deploy/.ssh", ("symlink", "/opt/k")), ("opt/k/keys", ("symlink", "/x/authorized_keys2"))])
    assert found == {("/home/deploy/.ssh", "baked-authorized-keys", None)}
    assert rules([("opt/k/authorized_keys", ("symlink", "/srv/k"))]) == {
        ("/opt/k/authorized_keys", "baked-authorized-keys", None)}
    assert rules([("usr/share/man/man5/authorized_keys.5.gz", ("symlink", "../man8/sshd.8.gz"))]) == set()


@pytest.mark.parametrize("line", ["AuthorizedKeysFile /etc/ssh/keys/%u", "  AuthorizedKeysCommand /bin/getkeys %u",
                                  "TrustedUserCAKeys /etc/ssh/ca.pub", "AuthorizedPrincipalsFile=/etc/ssh/p/%u",
                                  "authorizedprincipalscommand /bin/p"])
def test_sshd_settings_that_take_keys_from_elsewhere_are_flagged(line):
    assert rules([("etc/ssh/sshd_config.d/x.conf", f"Match User deploy\n{line}\n")]) == {
        ("/etc/ssh/sshd_config.d/x.conf", "sshd-key-source", 2)}
    assert rules([("etc/ssh/sshd_config", f"# {line}\nPort 22\n{line}\n")]) == {
        ("/etc/ssh/sshd_config", "sshd-key-source", 3)}


def test_the_hardening_roles_sshd_config_passes():
    role = Path(__file__).resolve().parents[2] / "roles/hardening"
    keys_dir = yaml.safe_load((role / "vars/main.yml").read_text())["__hardening_break_glass_keys_dir"]
    template = (role / "templates/sshd_config.j2").read_text()
    line = next(text for text in template.splitlines() if text.startswith("AuthorizedKeysFile"))
    rendered = re.sub(r"\{\{ *__hardening_break_glass_keys_dir *\}\}", keys_dir, line)
    debian = "#AuthorizedKeysFile\t.ssh/authorized_keys .ssh/authorized_keys2\nAuthorizedKeysCommand none\n"
    assert rules([("etc/ssh/sshd_config", f"Port 22\n{rendered}\n{debian}")]) == set()


@pytest.mark.parametrize("path", ["etc/shadow.bak", "etc/shadow~", "etc/shadow-", "var/backups/shadow.bak",
                                  "etc/gshadow", "etc/gshadow-", "opt/old/shadow.bak"])
def test_copies_of_shadow_get_the_password_check(path):
    found = rules([(path, "daemon:*:19000::::::\n" + SHADOW_LINE)])
    assert {hit for hit in found if hit[1] == "usable-password"} == {(f"/{path}", "usable-password", 2)}


def test_a_file_that_only_starts_like_shadow_is_not_read_as_one():
    assert rules([("usr/share/icons/shadow.css", "a:b\n")]) == set()
