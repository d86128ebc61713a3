"""The hardening role's sshd_config and the check of the effective sshd configuration (no podman, no sshd).

A drop-in's `Match` block can override the hardened values for the connections it matches, so the role's
testinfra check (roles/hardening/molecule/default/tests/sshd_effective.py, run by Molecule and bake.py verify)
asks sshd for the effective configuration of root, the break-glass account and one connection per Match block.
These tests render the template with the role's defaults and run the check's file-reading half through a real
shell on real files; the sshd half runs against a real sshd in test_hardening.py.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

pytestmark = pytest.mark.unit

ROLE = Path(__file__).resolve().parents[2] / "roles" / "hardening"
CHECK_FILE = ROLE / "molecule" / "default" / "tests" / "sshd_effective.py"


def _load_check():
    spec = importlib.util.spec_from_file_location("hardening_sshd_effective", CHECK_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load_check()


def _role_variables() -> dict:
    """defaults/main.yml and vars/main.yml, their own templates rendered (allow_users names the break-glass user)."""
    variables = {**yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()),
                 **yaml.safe_load((ROLE / "vars" / "main.yml").read_text())}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)

    def render(value):
        if isinstance(value, str) and "{{" in value:
            return env.from_string(value).render(variables)
        if isinstance(value, list):
            return [render(item) for item in value]
        return value

    return {name: render(value) for name, value in variables.items()}


def render_sshd_config() -> str:
    """The template as Ansible renders it with the role's defaults (trim_blocks, the `bool` filter)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["bool"] = lambda value: str(value).lower() in ("true", "yes", "1", "on")
    return env.get_template("sshd_config.j2").render(ansible_managed="Ansible managed", **_role_variables())


def _settings(text: str) -> list[tuple[str, str]]:
    """(lower-case keyword, value) of every directive, in file order."""
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, value = line.strip().partition(" ")
            pairs.append((keyword.lower(), value.strip()))
    return pairs


def run_here(command: str) -> tuple[int, str, str]:
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_the_version_banner_does_not_name_debian():
    assert ("debianbanner", "no") in _settings(render_sshd_config())


def test_include_comes_last_so_that_the_hardened_values_win():
    settings = _settings(render_sshd_config())
    assert settings[-1] == ("include", "/etc/ssh/sshd_config.d/*.conf")
    assert [keyword for keyword, _ in settings].count("include") == 1
    assert "match" not in [keyword for keyword, _ in settings]


def test_the_template_says_a_match_block_can_override_and_how_verify_checks():
    text = render_sshd_config()
    closing = text[text.rindex("\n\n"):]  # the comment above Include
    assert "cannot override" not in closing
    assert "Match" in closing
    assert "sshd -T -C" in closing


def test_the_expected_values_are_the_role_defaults():
    """The check's EXPECTED is what the template renders with the defaults, for every setting the template sets."""
    rendered = dict(reversed(_settings(render_sshd_config())))  # first value wins, as in sshd
    compared = {keyword: rendered.get(keyword) for keyword in check.EXPECTED if keyword in rendered}
    assert compared == {keyword: check.EXPECTED[keyword] for keyword in compared}
    assert len(compared) >= 25
    assert check.BREAK_GLASS_USER == _role_variables()["hardening_break_glass_user"]


def test_parse_and_differences_report_each_weakened_setting():
    output = "port 22\npasswordauthentication yes\npermitrootlogin no\nhostkey /a\nhostkey /b\n"
    effective = check.parse(output)
    assert effective["hostkey"] == "/a"
    assert check.differences(effective, {"passwordauthentication": "no", "permitrootlogin": "no",
                                         "x11forwarding": "no"}) == [
        "passwordauthentication is 'yes', want 'no'", "x11forwarding is '(unset)', want 'no'"]


def test_a_key_source_other_than_the_break_glass_one_is_a_difference():
    """A drop-in can point AuthorizedKeysFile elsewhere, or add a CA or a command that hands out keys: each is a
    way in that the runtime config does not own (sshd -T prints these settings; they must be the role's)."""
    hardened = check.parse("\n".join(f"{k} {v}" for k, v in check.EXPECTED.items()))
    assert check.differences(hardened) == []
    for keyword, value in [("authorizedkeysfile", "/etc/ssh/keys/%u"), ("trustedusercakeys", "/etc/ssh/ca.pub"),
                           ("authorizedkeyscommand", "/usr/local/bin/keys %u"),
                           ("authorizedprincipalsfile", "/etc/ssh/principals")]:
        weakened = {**hardened, keyword: value}
        assert check.differences(weakened) == [f"{keyword} is {value!r}, want {check.EXPECTED[keyword]!r}"]


def _config_with_dropins(tmp_path: Path, dropins: dict[str, str]) -> Path:
    """The rendered sshd_config in tmp_path, its Include pointed at tmp_path/sshd_config.d with these drop-ins."""
    dropin_dir = tmp_path / "sshd_config.d"
    dropin_dir.mkdir()
    for name, text in dropins.items():
        (dropin_dir / name).write_text(text)
    config = tmp_path / "sshd_config"
    config.write_text(render_sshd_config().replace("/etc/ssh/sshd_config.d/*.conf", f"{dropin_dir}/*.conf"))
    return config


def test_without_match_blocks_root_and_the_break_glass_account_are_checked(tmp_path):
    config = _config_with_dropins(tmp_path, {"10-plain.conf": "PasswordAuthentication yes\n"})
    assert check.connections(run_here, str(config)) == [
        {"user": "root", "host": "client.example", "addr": "203.0.113.1"},
        {"user": "breakglass", "host": "client.example", "addr": "203.0.113.1"},
    ]


def test_each_match_block_of_a_drop_in_gets_a_connection_that_satisfies_it(tmp_path):
    root_group = run_here("id -gn root")[1].strip()
    config = _config_with_dropins(tmp_path, {
        "50-deploy.conf": "Match User deploy\n  PasswordAuthentication yes\n",
        "60-more.conf": "# a comment\nMatch Address 10.0.0.0/8,!10.1.0.0/16 User dep*\n  PermitRootLogin yes\n"
                        f"match group {root_group}\n  X11Forwarding yes\n"
                        "Match=LocalPort 2222 Host *.corp.example\n  AllowTcpForwarding yes\n"
                        "Match User !root\n  PermitEmptyPasswords yes\nMatch All\n",
        "70-nested.conf": f"Include {tmp_path}/extra/*.conf\n",
        "not-included.txt": "Match User ignored\n",
    })
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "x.conf").write_text("Match Address 192.0.2.*\n  PasswordAuthentication yes\n")
    specs = check.connections(run_here, str(config))
    client = {"host": "client.example", "addr": "203.0.113.1"}
    assert specs[2:] == [
        {"user": "deploy", **client},
        {"user": "depx", "host": "client.example", "addr": "10.0.0.1"},
        # `Match Group <root's group>` is satisfied by root (already checked); `Match All` by every connection
        {"user": "breakglass", "host": "x.corp.example", "addr": "203.0.113.1", "lport": "2222"},
        {"user": "bakery-check", **client},
        {"user": "breakglass", "host": "client.example", "addr": "192.0.2.1"},
    ]


def test_a_group_is_satisfied_through_its_members():
    group = run_here("id -gn root")[1].strip()
    assert "root" in check.group_members(run_here, group)
    assert check.group_members(run_here, "bakery-no-such-group") == []
    assert check.connection(["Group", "bakery-no-such-group"], lambda name: []) is None
