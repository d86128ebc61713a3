"""Contract 1 and 5 of issue 17: the three bakery-owned keys a delivered runtime file may carry (never runtime.yml or
`config set`), and runtime.yml's `{value: <ref>, refresh: 30s}` form, its digest and `config set` on such a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bakery import runtime_grammar
from bakery.config import Project
from bakery.environments import load_environment, parse_env_file
from bakery.errors import ConfigError
from bakery.fleets.runtime_config import edit_runtime_yaml, parse_pairs, validate_runtime
from tests.unit.test_runtime_grammar import apply

pytestmark = pytest.mark.unit

RUNTIME = Path("inventories") / "qa" / "group_vars" / "all" / "runtime.yml"
OWNED = b'A="1"\nBAKERY_DATA_VOLUME="bakery-data:/srv/data"\nBAKERY_PARAMS="local"\nBAKERY_REFRESH="A=30 B=3600"\n'


def write_runtime(root: Path, body: str) -> Path:
    path = root / RUNTIME
    path.write_text(body, encoding="utf-8")
    return path


def refused(root: Path, body: str) -> str:
    write_runtime(root, body)
    with pytest.raises(ConfigError) as err:
        load_environment(Project(root), "qa")
    assert "\n" not in str(err.value)
    return str(err.value)


# ---- Contract 1: the delivered file


def test_a_delivered_file_may_carry_the_three_bakery_owned_keys():
    assert runtime_grammar.read(OWNED, "launch.env") == {
        "A": "1", "BAKERY_DATA_VOLUME": "bakery-data:/srv/data", "BAKERY_PARAMS": "local",
        "BAKERY_REFRESH": "A=30 B=3600"}


def test_the_applier_accepts_what_the_library_accepts(tmp_path):
    applied = apply(tmp_path, b'A="1"\nBAKERY_PARAMS="off"\n')
    assert applied.rc == 0, applied.log


@pytest.mark.parametrize("line, says", [
    (b'BAKERY_PARAMS="cloud"\n', "BAKERY_PARAMS must be local, aws or off"),
    (b'BAKERY_REFRESH="A=4"\n', "BAKERY_REFRESH: A's interval 4 is not a whole number of seconds from 5 to 3600"),
    (b'BAKERY_REFRESH="A=3601"\n', "from 5 to 3600"),
    (b'BAKERY_REFRESH="A=30 A=60"\n', "BAKERY_REFRESH names A twice"),
    (b'BAKERY_REFRESH="a=30"\n', "BAKERY_REFRESH: expected KEY=SECONDS"),
    (b'BAKERY_REFRESH="LD_PRELOAD=30"\n', "reserved"),
    (b'BAKERY_DATA_VOLUME="data"\n', "BAKERY_DATA_VOLUME must be LABEL:/absolute/path"),
    (b'BAKERY_DATA_VOLUME="data:relative"\n', "BAKERY_DATA_VOLUME must be LABEL:/absolute/path"),
    (b'BAKERY_RUNTIME_FILE="/tmp/x"\n', "key 'BAKERY_RUNTIME_FILE' is reserved"),
    (b'BAKERY_OTHER="x"\n', "key 'BAKERY_OTHER' is reserved"),
])
def test_a_bad_bakery_owned_value_or_another_bakery_key_is_refused(line, says):
    with pytest.raises(ConfigError) as err:
        runtime_grammar.read(b'A="1"\n' + line, "launch.env")
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["BAKERY_PARAMS", "BAKERY_REFRESH", "BAKERY_DATA_VOLUME"])
def test_config_set_and_runtime_yml_still_refuse_the_bakery_owned_keys(inventory_project, key):
    with pytest.raises(ConfigError, match=f"config set: key '{key}' is reserved"):
        parse_pairs([f"{key}=x"])
    assert refused(inventory_project, f"bakery_runtime:\n  {key}: x\n").startswith(
        f"{RUNTIME}: bakery_runtime key '{key}' is reserved")


def test_bakery_renders_its_keys_after_the_user_keys(inventory_project):
    write_runtime(inventory_project, "bakery_runtime:\n  ZED: z\n  FLAG: {value: ssm:/webapp/qa/flag, refresh: 30s}\n")
    env = load_environment(Project(inventory_project), "qa")
    assert env.runtime_env_text(params="local") == (
        'ENVIRONMENT="qa"\nFLAG="ssm:/webapp/qa/flag"\nZED="z"\nBAKERY_PARAMS="local"\nBAKERY_REFRESH="FLAG=30"\n')
    assert "BAKERY_PARAMS" not in env.runtime_env_text()  # a file of its own: the applier decides (Contract 1)
    with pytest.raises(ConfigError, match="BAKERY_PARAMS must be local, aws or off"):
        env.runtime_env_text(params="cloud")


def test_the_env_file_reads_back_as_the_config_without_the_launch_keys(inventory_project):
    """known_runtime: a relaunch (rollback) of an older config gets its refresh back, and the same digest."""
    write_runtime(inventory_project, "bakery_runtime:\n  FLAG: {value: ssm:/webapp/qa/flag, refresh: 2m}\n")
    env = load_environment(Project(inventory_project), "qa")
    back = parse_env_file(env.runtime_env_text(params="local") + 'BAKERY_DATA_VOLUME="d:/srv"\n')
    assert back == env.runtime and back["BAKERY_REFRESH"] == "FLAG=120"


# ---- Contract 5: runtime.yml


@pytest.mark.parametrize("refresh, seconds", [("30s", 30), ("5s", 5), ("2m", 120), ("60m", 3600), ("45", 45),
                                              ('"300"', 300)])
def test_a_value_may_ask_for_refresh(inventory_project, refresh, seconds):
    write_runtime(inventory_project, f"bakery_runtime:\n  FLAG: {{value: ssm:/webapp/qa/flag, refresh: {refresh}}}\n"
                                     "  OTHER: x\n")
    env = load_environment(Project(inventory_project), "qa")
    assert env.runtime["FLAG"] == "ssm:/webapp/qa/flag" and env.runtime_refresh == {"FLAG": seconds}


def test_the_block_form_and_every_reference_kind_may_refresh(inventory_project):
    write_runtime(inventory_project, "bakery_runtime:\n  FLAG:\n    value: secretsmanager:webapp/qa/flags#new\n"
                                     "    refresh: 10s\n  GROUP: {value: ssm:/webapp/qa/group/, refresh: 15}\n"
                                     "  ARN: {value: 'arn:aws:ssm:eu-west-1:111122223333:parameter/webapp/x', "
                                     "refresh: 20s}\n  PLAIN: {value: x}\n")
    env = load_environment(Project(inventory_project), "qa")
    assert env.runtime_refresh == {"ARN": 20, "FLAG": 10, "GROUP": 15}
    assert env.runtime["PLAIN"] == "x" and env.runtime["BAKERY_REFRESH"] == "ARN=20 FLAG=10 GROUP=15"


@pytest.mark.parametrize("body, says", [
    ("FLAG: {value: x, refresh: 30s}", "bakery_runtime.FLAG has refresh, but its value is not a reference"),
    ("FLAG: {value: 'file:/etc/x', refresh: 30s}", "is not a reference"),
    ("FLAG: {value: ssm:/a, refresh: 4s}", "bakery_runtime.FLAG.refresh must be from 5 s to 1 h (3600 s), got '4s'"),
    ("FLAG: {value: ssm:/a, refresh: 61m}", "got '61m'"),
    ("FLAG: {value: ssm:/a, refresh: soon}", "bakery_runtime.FLAG.refresh must be seconds (30), 30s or 5m"),
    ("FLAG: {value: ssm:/a, refresh: 1.5}", "refresh must be seconds"),
    ("FLAG: {value: ssm:/a, refrseh: 30s}", "bakery_runtime.FLAG: unknown key 'refrseh'; known keys: refresh, value"),
    ("FLAG: {refresh: 30s}", "bakery_runtime.FLAG.value is required"),
    ("FLAG: {value: [a], refresh: 30s}", "bakery_runtime.FLAG.value must be a string"),
    ("FLAG: {value: 'ssm:/a/../b', refresh: 30s}", "'..'"),
    ("FLAG: {value: 'ssm:relative', refresh: 30s}", "must start with '/'"),
])
def test_a_bad_refresh_is_one_line(inventory_project, body, says):
    text = refused(inventory_project, f"bakery_runtime:\n  {body}\n")
    assert says in text and text.startswith(str(RUNTIME)), text


def test_a_malformed_reference_is_refused_on_load_too(inventory_project):
    assert "bakery_runtime.DB_PASSWORD: ssm parameter name" in refused(
        inventory_project, "bakery_runtime:\n  DB_PASSWORD: ssm:/webapp//x\n")


def test_the_config_digest_covers_the_refresh_interval(inventory_project):
    body = "bakery_runtime:\n  FLAG: {value: ssm:/webapp/qa/flag, refresh: %s}\n"
    digests = set()
    for refresh in ("30s", "31s"):
        write_runtime(inventory_project, body % refresh)
        digests.add(load_environment(Project(inventory_project), "qa").config_digest())
    write_runtime(inventory_project, "bakery_runtime:\n  FLAG: ssm:/webapp/qa/flag\n")
    plain = load_environment(Project(inventory_project), "qa")
    assert len(digests | {plain.config_digest()}) == 3 and "BAKERY_REFRESH" not in plain.runtime


# ---- config set on a key with refresh: the reference is replaced, the refresh kept


@pytest.mark.parametrize("entry", ["FLAG: {value: ssm:/webapp/qa/flag, refresh: 30s}",
                                   "FLAG:\n    value: ssm:/webapp/qa/flag\n    refresh: 30s"])
def test_config_set_replaces_the_reference_and_keeps_the_refresh(inventory_project, entry):
    text = edit_runtime_yaml(f"bakery_runtime:\n  {entry}\n  LOG_LEVEL: info\n",
                             parse_pairs(["FLAG=ssm:/webapp/qa/flag-v2"]))
    assert text == 'bakery_runtime:\n  FLAG: {value: "ssm:/webapp/qa/flag-v2", refresh: 30s}\n  LOG_LEVEL: info\n'
    env = validate_runtime(Project(inventory_project), "qa", text)
    assert env.runtime["FLAG"] == "ssm:/webapp/qa/flag-v2" and env.runtime_refresh == {"FLAG": 30}


def test_config_set_of_a_plain_value_on_a_refreshed_key_points_to_param_set(inventory_project):
    text = edit_runtime_yaml("bakery_runtime:\n  FLAG: {value: ssm:/webapp/qa/flag, refresh: 30s}\n",
                             parse_pairs(["FLAG=false"]))
    with pytest.raises(ConfigError) as err:
        validate_runtime(Project(inventory_project), "qa", text)
    message = str(err.value)
    assert message.startswith(f"{RUNTIME}:2: bakery_runtime.FLAG has refresh, but its value is not a reference")
    assert "bake.py param set --env qa FLAG" in message and "bakery-config-" not in message


def test_config_set_in_a_flow_style_file_keeps_the_refresh(inventory_project):
    text = edit_runtime_yaml("bakery_runtime: {FLAG: {value: ssm:/webapp/qa/flag, refresh: 1m}, A: x}\n",
                             parse_pairs(["A=y"]))
    env = validate_runtime(Project(inventory_project), "qa", text)
    assert env.runtime_refresh == {"FLAG": 60} and env.runtime["A"] == "y"
