"""Review 14b on runtime config: reserved keys (5), secrets by name and by content (6), runtime.yml typed and
without duplicates (8), `config set` of characters above U+FFFF (9), the cheap parts of the editor's nits (10)
and a `\\` at the end of a comment line (15a). The library, the real applier (a subprocess) and real files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bakery import runtime_grammar
from bakery.config import Project
from bakery.environments import load_environment
from bakery.errors import ConfigError
from bakery.fleets.runtime_config import edit_runtime_yaml, parse_pairs, validate_runtime
from tests.conftest import REPO
from tests.unit.test_runtime_grammar import VALUE_CORPUS, apply, script

pytestmark = pytest.mark.unit

APPLIER = REPO / "roles" / "base" / "files" / "bakery-runtime-config"
RUNTIME = Path("inventories") / "qa" / "group_vars" / "all" / "runtime.yml"
RESERVED = ["LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "PYTHONWARNINGS", "PYTHONPATH", "PYTHONSTARTUP", "BROWSER",
            "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "PERL5OPT", "PERL5LIB", "RUBYOPT", "NODE_OPTIONS", "GCONV_PATH",
            "LOCPATH", "HOME", "SHELL", "USER", "LOGNAME", "TZDIR", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE",
            "SYSTEMD_LOG_LEVEL", "LISTEN_FDS", "NOTIFY_SOCKET", "INVOCATION_ID", "CREDENTIALS_DIRECTORY",
            "GLIBC_TUNABLES", "BAKERY_RUNTIME_FILE", "WEBAPP_BIND", "WEBAPP_PORT", "WEBAPP_DATA_DIR"]
ALLOWED = ["ENVIRONMENT", "LOG_LEVEL", "FEATURE_NEW_CHECKOUT", "PAYMENTS_URL", "BREAK_GLASS_SSH",
           "BREAK_GLASS_SSH_AUTHORIZED_KEY", "CLOUDWATCH_LOG_GROUP", "LDAP_URL", "PATHFINDER", "HOMEPAGE_URL",
           "ENVIRONMENT_NAME", "USER_AGENT", "WEBAPP_GREETING"]


def write_runtime(root: Path, body: str) -> Path:
    path = root / RUNTIME
    path.write_text(body, encoding="utf-8")
    return path


def refused_on_load(root: Path, body: str) -> str:
    write_runtime(root, body)
    with pytest.raises(ConfigError) as err:
        load_environment(Project(root), "qa")
    text = str(err.value)
    assert "\n" not in text
    return text


# ---- 5: keys that change how every service runs


def unit_environment_keys() -> set[str]:
    """Every key a bakery role's unit sets itself with Environment=: runtime config must not override it."""
    keys = set()
    for unit in [*REPO.glob("roles/*/templates/*.service*"), *REPO.glob("roles/*/files/*.service")]:
        for line in unit.read_text(encoding="utf-8").splitlines():
            if line.startswith("Environment="):
                keys.update(re.findall(r"(?:^|\s|=)([A-Z][A-Z0-9_]*)=", line.removeprefix("Environment=")))
    return keys


def test_every_key_a_bakery_unit_sets_is_in_the_reserved_list():
    keys = unit_environment_keys()
    assert {"PYTHONPATH", "WEBAPP_BIND"} <= keys
    assert not [k for k in keys if runtime_grammar.reserved(k) is None]


@pytest.mark.parametrize("key", RESERVED)
def test_a_reserved_key_is_refused_by_the_library_and_the_applier(tmp_path, key):
    with pytest.raises(ConfigError) as err:
        parse_pairs([f"{key}=x"])
    assert str(err.value).startswith(f"config set: key '{key}' is reserved")
    applied = apply(tmp_path, f'ENVIRONMENT="qa"\n{key}="x"\n'.encode())
    assert applied.rc == 1 and f"{key} is reserved" in applied.log


def test_the_code_execution_of_the_review_is_refused(inventory_project):
    with pytest.raises(ConfigError, match="key 'PYTHONWARNINGS' is reserved"):
        parse_pairs(["PYTHONWARNINGS=ignore::antigravity.x", "BROWSER=/bin/sh -c 'id > /tmp/x' #%s"])
    text = refused_on_load(inventory_project, "bakery_runtime:\n  BROWSER: /bin/sh -c 'id'\n")
    assert text.startswith(f"{RUNTIME}: bakery_runtime key 'BROWSER' is reserved")


@pytest.mark.parametrize("key", ALLOWED)
def test_keys_the_shipped_inventories_and_docs_use_stay_allowed(tmp_path, key):
    assert parse_pairs([f"{key}=x"]) == {key: "x"}
    assert apply(tmp_path, f'{key}="x"\n'.encode()).rc == 0


def test_library_and_applier_reserve_the_same_keys():
    applier = script(APPLIER)
    for key in [*RESERVED, *ALLOWED, "LD", "PYTHON", "LC", "LANGUAGE", "PWD", "PATH_X", "XPATH"]:
        assert (runtime_grammar.reserved(key) is None) == (applier.reserved(key) is None), key
    assert runtime_grammar.RESERVED_KEYS == applier.RESERVED_KEYS
    assert runtime_grammar.RESERVED_PREFIXES == applier.RESERVED_PREFIXES


def test_the_shipped_inventories_load(inventory_project):
    for env in ("dev", "qa", "prod"):
        load_environment(Project(inventory_project), env)


# ---- 6: secrets by name (any component) and by content


@pytest.mark.parametrize("key, value", [
    ("SECRET_KEY", "hunter2"),
    ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzzzzzzzzz"),
    ("DB_PASSWD", "x"),
    ("DB_PASS", "x"),
    ("MAIL_PASSWORD_VALUE", "x"),
    ("GITHUB_TOKEN_VALUE", "x"),
    ("SERVICE_CREDENTIALS", "x"),
    ("STRIPE_API_KEY_LIVE", "x"),
    ("TLS_PRIVATE_KEY", "x"),
])
def test_a_secret_name_in_any_component_needs_a_reference(inventory_project, key, value):
    text = refused_on_load(inventory_project, f"bakery_runtime:\n  {key}: \"{value}\"\n")
    assert text.startswith(f"{RUNTIME}: bakery_runtime.{key} looks like a secret given by value")
    assert value not in text.removeprefix(f"{RUNTIME}: bakery_runtime.{key}")
    write_runtime(inventory_project, f"bakery_runtime:\n  {key}: ssm:/webapp/qa/x\n")
    assert load_environment(Project(inventory_project), "qa").runtime[key] == "ssm:/webapp/qa/x"


@pytest.mark.parametrize("key, value, rule", [
    ("NOTE", "ghp_1234567890abcdefghijABCDEFGHIJ123456", "github-token"),
    ("NOTE", "xoxb-123456789012-1234567890123-abcdefghijABCDEFGHIJabcd", "slack-token"),
    ("UPSTREAM", "AKIAZZZZZZZZZZZZZZZ7", "aws-access-key-id"),
])
def test_a_token_in_any_value_is_refused_without_showing_it(inventory_project, key, value, rule):
    text = refused_on_load(inventory_project, f"bakery_runtime:\n  {key}: \"{value}\"\n")
    assert text.startswith(f"{RUNTIME}: bakery_runtime.{key} holds what looks like a secret ({rule})")
    assert value not in text and value[:8] not in text


@pytest.mark.parametrize("key, value", [("PASSWORD_MIN_LENGTH", "12"), ("TOKEN_TTL", "3600"),
                                        ("BYPASS_CACHE", "true"), ("KEYBOARD_LAYOUT", "us-international"),
                                        ("BREAK_GLASS_SSH_AUTHORIZED_KEY", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB x")])
def test_names_and_values_that_are_no_secret_stay_allowed(inventory_project, key, value):
    write_runtime(inventory_project, f"bakery_runtime:\n  {key}: \"{value}\"\n")
    assert load_environment(Project(inventory_project), "qa").runtime[key] == value


# ---- 8: runtime.yml typed as written, no duplicate keys


@pytest.mark.parametrize("value, kind", [
    ("0x1F", "int"), ("01234", "int"), ("12:30", "int"), ("1.10", "float"), ("NO", "bool"), ("yes", "bool"),
    ("on", "bool"), ("Off", "bool"), ("True", "bool"), ("2024-01-02", "timestamp"),
    ("2024-01-02T03:04:05+01:00", "timestamp"), ("!!binary aGVsbG8=", "tag"), ("!!set {a}", "tag"),
    ("!!str 01234", "tag"), ("1_000", "int"), (".inf", "float"), ("~", "null"), ("&a x", "anchor"),
])
def test_a_value_yaml_would_change_is_refused_with_quote_the_value(inventory_project, value, kind):
    text = refused_on_load(inventory_project, f"bakery_runtime:\n  ENVIRONMENT: qa\n  NOTE: {value}\n")
    assert text.startswith(f"{RUNTIME}:3: bakery_runtime.NOTE ")
    assert "quote the value" in text


@pytest.mark.parametrize("value, text", [("true", "true"), ("false", "false"), ("42", "42"), ("-7", "-7"),
                                         ("0", "0"), ("'0x1F'", "0x1F"), ('"NO"', "NO"), ("plain text", "plain text"),
                                         ('"12:30"', "12:30")])
def test_strings_decimal_ints_and_true_false_load_as_written(inventory_project, value, text):
    write_runtime(inventory_project, f"bakery_runtime:\n  NOTE: {value}\n")
    assert load_environment(Project(inventory_project), "qa").runtime["NOTE"] == text


@pytest.mark.parametrize("body, says", [
    ("bakery_runtime:\n  A: x\n  A: y\n", "RUNTIME:3: bakery_runtime.A is given twice (first on line 2)"),
    ("bakery_runtime:\n  A: x\nbakery_runtime:\n  B: y\n", "RUNTIME:3: bakery_runtime is given twice"),
    ("bakery_runtime: {A: x, A: y}\n", "RUNTIME:1: bakery_runtime.A is given twice"),
])
def test_a_duplicate_key_is_refused_anywhere(inventory_project, body, says):
    assert refused_on_load(inventory_project, body).startswith(says.replace("RUNTIME", str(RUNTIME)))


def test_config_set_refuses_a_file_with_a_duplicate_instead_of_reporting_unchanged(inventory_project):
    text = "bakery_runtime:\n  ENVIRONMENT: qa\n  A: x\n  A: y\n"
    with pytest.raises(ConfigError, match="bakery_runtime.A is given twice"):
        validate_runtime(Project(inventory_project), "qa", edit_runtime_yaml(text, {"A": "z"}))


# ---- 9 and 10: the editor


ACCEPTED = [c for c in VALUE_CORPUS if c[3] and c[1] == c[1].upper() and c[0] != "at-the-limit"]


@pytest.mark.parametrize("name, key, value, accepted", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_every_accepted_value_round_trips_through_config_set(inventory_project, name, key, value, accepted):
    values = parse_pairs([f"{key}={value}"])
    text = edit_runtime_yaml((inventory_project / RUNTIME).read_text(encoding="utf-8"), values)
    env = validate_runtime(Project(inventory_project), "qa", text)
    assert env.runtime[key] == value


def test_a_character_above_u_ffff_is_written_as_itself():
    assert edit_runtime_yaml("bakery_runtime:\n  A: x\n", {"NOTE": "deploy 😀"}) == \
        'bakery_runtime:\n  A: x\n  NOTE: "deploy 😀"\n'


def test_crlf_line_ends_are_kept():
    assert edit_runtime_yaml("---\r\n# c\r\nbakery_runtime:\r\n  A: x\r\n", {"A": "y", "B": "z"}) == \
        '---\r\n# c\r\nbakery_runtime:\r\n  A: "y"\r\n  B: "z"\r\n'


def test_a_quoted_key_is_edited_in_place():
    assert edit_runtime_yaml('bakery_runtime:\n  "A": x\n', {"A": "y"}) == 'bakery_runtime:\n  A: "y"\n'


def test_a_folded_value_is_replaced_whole():
    assert edit_runtime_yaml("bakery_runtime:\n  A: >-\n    long\n    text\n  B: x\n", {"A": "y"}) == \
        'bakery_runtime:\n  A: "y"\n  B: x\n'


def test_config_set_refuses_a_key_given_twice():
    with pytest.raises(ConfigError) as err:
        parse_pairs(["A=1", "A=2"])
    assert str(err.value) == "config set: A is given twice; give each key once"


def test_an_error_names_the_real_file_never_the_temporary_copy(inventory_project):
    with pytest.raises(ConfigError) as err:
        validate_runtime(Project(inventory_project), "qa", "bakery_runtime:\n  A: [x\n")
    assert str(err.value).startswith(f"{RUNTIME}:") and "bakery-config-" not in str(err.value)


# ---- 15a: a backslash ending a comment line (systemd < 254 joins the next line to it)


@pytest.mark.parametrize("data", [b"# note \\\nBREAK_GLASS_SSH=true\n", b"# note \\\r\nA=1\r\n"])
def test_a_comment_ending_in_a_backslash_is_refused_by_library_and_applier(tmp_path, data):
    with pytest.raises(ConfigError, match="launch.env:1: the comment ends in a backslash"):
        runtime_grammar.read(data, "launch.env")
    applied = apply(tmp_path, data)
    assert applied.rc == 1 and "ends in a backslash" in applied.log
