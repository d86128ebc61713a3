"""verify-allowlist.yml: patterns anchored per path segment, one specific rule, a reason, no switch-off."""

from __future__ import annotations

import pytest

from bakery.errors import ConfigError
from bakery.verify.secret_allowlist import AllowEntry, is_allowed
from bakery.verify.secrets import RULE_NAMES, load_allowlist
from tests.unit.test_secret_archives import NETRC, found, scan, tar_bytes

pytestmark = pytest.mark.unit


def allow(tmp_path, text: str):
    path = tmp_path / "verify-allowlist.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("etc/*", "/etc/a", True),
    ("etc/*", "/etc/a/b", False),  # `*` never crosses `/` (fnmatch's did)
    ("etc/a?", "/etc/a/", False),
    ("etc/**", "/etc/a/b", True),
    ("etc/**/b", "/etc/b", True),  # `**` is zero or more whole segments
    ("etc/**/b", "/etc/x/y/b", True),
    ("etc/**/b", "/etc/xb", False),
    ("/home/*/.bash_history", "/home/u/.bash_history", True),
    ("home/*/.bash_history", "/home/u/v/.bash_history", False),
    ("opt/*.pem", "/opt/a/b.pem", False),
    ("opt/x.tar.gz!/**", "/opt/x.tar.gz!/etc/.netrc", True),
    ("opt/x.tar.gz", "/opt/x.tar.gz!/etc/.netrc", False),  # archive members match on the full outer!/inner path
])
def test_patterns_are_anchored_per_segment(pattern, path, matches):
    assert is_allowed(path, "netrc", [AllowEntry(pattern.lstrip("/"), "netrc", "r")]) is matches


def test_an_entry_excuses_only_its_rule(tmp_path):
    entries = load_allowlist(allow(tmp_path, "- path: /opt/x.tar.gz!/etc/*\n  rule: netrc\n  reason: test fixture\n"))
    archive = tar_bytes([("etc/.netrc", NETRC), ("etc/.pgpass", "*:*:*:u:p\n"), ("etc/sub/.netrc", NETRC)])
    assert found(scan([("opt/x.tar.gz", archive)], allowlist=entries)) == {
        ("/opt/x.tar.gz!/etc/.pgpass", "pgpass"), ("/opt/x.tar.gz!/etc/sub/.netrc", "netrc")}


def test_an_entry_needs_path_rule_and_reason(tmp_path):
    path = allow(tmp_path, "- path: etc/app/*.pem\n  rule: private-key\n")
    with pytest.raises(ConfigError, match=r"verify-allowlist.yml: entry 1 needs non-empty 'path', 'rule' and 'reason'"):
        load_allowlist(path)


@pytest.mark.parametrize(("text", "message"), [
    ("- {path: x, rule: nosuch, reason: r}\n", r"verify-allowlist.yml: entry 1: unknown rule 'nosuch'; known rules: "),
    ("- {path: x, rule: netrc, reason: r}\n- {path: etc/x, rule: '*', reason: r}\n",
     r"verify-allowlist.yml: entry 2: rule '\*' is not allowed; name the one rule"),
    ("- {path: x, rule: netrc, reason: r, rules: [a]}\n", r"verify-allowlist.yml: entry 1: unknown field 'rules'"),
    ("path: x\n", r"verify-allowlist.yml: expected a list of entries"),
])
def test_bad_entries_are_refused_by_number(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_allowlist(allow(tmp_path, text))
    assert error.value.exit_code == 2 and "\n" not in str(error.value)


@pytest.mark.parametrize("pattern", ["*", "**", "**/*", "/**", "*/**", "/*", "**/*.*", "?/**", "**/[a-z]*"])
def test_wildcard_only_paths_are_refused(tmp_path, pattern):
    path = allow(tmp_path, "- {path: etc/ok, rule: netrc, reason: r}\n"
                           f"- {{path: '{pattern}', rule: netrc, reason: r}}\n")
    with pytest.raises(ConfigError, match=r"verify-allowlist.yml: entry 2: path '.*' has no literal segment") as error:
        load_allowlist(path)
    assert "name the directory or file" in str(error.value)


@pytest.mark.parametrize("pattern", ["**/*.pem", "*.pem", "[!]0]*/**", "**/[!]0]*", "{opt,etc}/**", "o?t/x"])
def test_a_first_segment_that_is_not_literal_is_refused(tmp_path, pattern):
    path = allow(tmp_path, f"- {{path: '{pattern}', rule: netrc, reason: r}}\n")
    with pytest.raises(ConfigError, match=r"entry 1: path '.*' must start with a literal directory") as error:
        load_allowlist(path)
    assert error.value.exit_code == 2 and "\n" not in str(error.value)


@pytest.mark.parametrize("pattern", ["root/**", "etc/**", "etc/shad*", "home/*/.bash_history", "home/**/.*_history"])
def test_a_pattern_that_matches_a_canary_path_is_refused(tmp_path, pattern):
    path = allow(tmp_path, f"- {{path: '{pattern}', rule: netrc, reason: r}}\n")
    with pytest.raises(ConfigError, match=r"entry 1: path '.*' matches /.* too; name the files it excuses"):
        load_allowlist(path)


@pytest.mark.parametrize("pattern", ["opt/app/**/*.pem", "opt/**", "etc/ssl/private/ssl-cert-snakeoil.key",
                                     "usr/share/doc/*/examples/*.conf"])
def test_paths_with_a_literal_segment_are_accepted(tmp_path, pattern):
    entries = load_allowlist(allow(tmp_path, f"- {{path: '{pattern}', rule: netrc, reason: r}}\n"))
    assert entries == [AllowEntry(pattern, "netrc", "r")]


def test_no_file_and_an_empty_file_allow_nothing(tmp_path):
    assert load_allowlist(tmp_path / "verify-allowlist.yml") == []
    assert load_allowlist(allow(tmp_path, "")) == []


def test_every_rule_may_be_named():
    assert {"netrc", "usable-password", "baked-sudoers", "archive-not-scanned"} <= RULE_NAMES
    assert "*" not in RULE_NAMES
