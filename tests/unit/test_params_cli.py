"""`bake.py param set|get|list` on the local target (issue 17): the store written with versions, who and when, values
never printed (but for `get --reveal` and a String), and bad input one line, exit 2, nothing written."""

from __future__ import annotations

import io
import json
import shutil
import stat

import pytest

from bakery.cli import main
from tests.conftest import REPO
from tests.unit.test_cli_contract import changes, snapshot

pytestmark = pytest.mark.unit

SECRET = "hunter2-Only-In-The-Store"
RUNTIME = """bakery_runtime:
  ENVIRONMENT: qa
  LOG_LEVEL: info
  FEATURE_NEW_CHECKOUT: {value: ssm:/webapp/qa/feature-new-checkout, refresh: 30s}
  DATABASE_PASSWORD: ssm:/webapp/qa/database-password
  DB: secretsmanager:webapp/qa/db#password
  FLAGS: ssm:/webapp/qa/flags/
  CONFIG_FILE: file:/etc/webapp.conf
  LD: ssm:/webapp/qa/ld/
  BAKERY: ssm:/webapp/qa/bk/
  DBX: ssm:/webapp/qa/dbx/
  DBX_URL: plain
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "p"
    root.mkdir()
    shutil.copy(REPO / "bakery.yml", root / "bakery.yml")
    shutil.copytree(REPO / "inventories", root / "inventories")
    (root / "inventories" / "qa" / "group_vars" / "all" / "runtime.yml").write_text(RUNTIME)
    aws = root / "inventories" / "cloud" / "group_vars" / "all"
    aws.mkdir(parents=True)
    (aws / "deploy.yml").write_text("bakery_deploy: {target: aws, image: webapp, aws: {auto_scaling_group: g, "
                                    "launch_template: t}}\n")
    (aws / "runtime.yml").write_text("bakery_runtime:\n  FLAG: ssm:/webapp/cloud/flag\n  GROUP: ssm:/webapp/cloud/g/\n")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "BAKERY_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    return root


def run(project, capsys, *args, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    rc = main(["--project", str(project), "param", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_set_writes_a_version_and_never_prints_the_value(project, capsys, monkeypatch):
    rc, out, err = run(project, capsys, "set", "--env", "qa", "DATABASE_PASSWORD", stdin=SECRET + "\n",
                       monkeypatch=monkeypatch)
    assert rc == 0, err
    assert SECRET not in out + err and "ssm:/webapp/qa/database-password version 1 written (SecureString" in out
    path = project / ".bakery" / "params" / "qa" / "ssm" / "webapp" / "qa" / "database-password.json"
    assert json.loads(path.read_text())["value"] == SECRET  # the trailing line end of stdin dropped
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((project / ".bakery" / "params" / "qa").stat().st_mode) == 0o700
    rc, out, err = run(project, capsys, "get", "--env", "qa", "DATABASE_PASSWORD")
    assert rc == 0 and SECRET not in out and "version: 1" in out and "type: SecureString" in out
    rc, out, _ = run(project, capsys, "get", "--env", "qa", "DATABASE_PASSWORD", "--reveal")
    assert rc == 0 and f"value: {SECRET}" in out


def test_a_string_is_shown_and_versions_count_up(project, capsys):
    for value in ("true", "false"):
        rc, out, err = run(project, capsys, "set", "--env", "qa", "FEATURE_NEW_CHECKOUT", value, "--type", "String")
        assert rc == 0, err
    assert "version 2 written (String" in out and "within 30 s" in out
    rc, out, _ = run(project, capsys, "get", "--env", "qa", "ssm:/webapp/qa/feature-new-checkout", "--json")
    data = json.loads(out)
    assert rc == 0 and data["value"] == "false" and data["version"] == 2 and "@" in data["by"]
    assert data["key"] is None and data["modified"].endswith("Z")


def test_list_shows_every_reference_with_missing_ones_and_no_value(project, capsys, monkeypatch):
    run(project, capsys, "set", "--env", "qa", "DATABASE_PASSWORD", stdin=SECRET, monkeypatch=monkeypatch)
    run(project, capsys, "set", "--env", "qa", "ssm:/webapp/qa/flags/beta", "on")
    rc, out, err = run(project, capsys, "list", "--env", "qa")
    assert rc == 0 and SECRET not in out + err
    lines = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines()[1:]}
    assert " 1 " in lines["DATABASE_PASSWORD ssm:/webapp/qa/database-password"]
    assert "MISSING" in lines["FEATURE_NEW_CHECKOUT ssm:/webapp/qa/feature-new-checkout"]
    assert "30s" in lines["FEATURE_NEW_CHECKOUT ssm:/webapp/qa/feature-new-checkout"]
    assert "FLAGS ssm:/webapp/qa/flags/beta" in lines and "DB secretsmanager:webapp/qa/db#password" in lines
    assert not any(line.startswith("CONFIG_FILE") for line in lines)
    rc, out, _ = run(project, capsys, "list", "--env", "qa", "--json")
    rows = json.loads(out)
    assert rc == 0 and {r["key"] for r in rows} == {"DATABASE_PASSWORD", "FEATURE_NEW_CHECKOUT", "DB", "FLAGS", "LD",
                                                      "BAKERY", "DBX"}
    assert all("value" not in r for r in rows)


def test_a_secret_key_of_a_json_secret_is_checked(project, capsys, monkeypatch):
    rc, out, err = run(project, capsys, "set", "--env", "qa", "DB", stdin='{"password": "p4ss", "user": "web"}',
                       monkeypatch=monkeypatch)
    assert rc == 0, err
    assert (project / ".bakery" / "params" / "qa" / "secretsmanager" / "webapp" / "qa" / "db.json").is_file()


def test_get_of_a_parameter_without_a_value_is_exit_1(project, capsys):
    rc, _, err = run(project, capsys, "get", "--env", "qa", "DATABASE_PASSWORD")
    assert rc == 1 and "has no value yet; set it with ./bake.py param set --env qa DATABASE_PASSWORD" in err


BAD = [
    (["set", "--env", "nosuch", "DATABASE_PASSWORD", "x"], "unknown environment 'nosuch'"),
    (["set", "--env", "qa", "NOSUCH", "x"], "has no runtime key 'NOSUCH'"),
    (["set", "--env", "qa", "LOG_LEVEL", "x"], "LOG_LEVEL holds a plain value, not a reference"),
    (["set", "--env", "qa", "CONFIG_FILE", "x"], "CONFIG_FILE holds a plain value, not a reference"),
    (["set", "--env", "qa", "lower", "x"], "is neither a runtime key"),
    (["set", "--env", "qa", "ssm:/webapp/qa/../prod/x", "x"], "'..'"),
    (["set", "--env", "qa", "ssm:/webapp/prod/database-password", "x"], "does not use ssm:/webapp/prod/"),
    (["set", "--env", "qa", "ssm:/webapp/qa/flags/deep/x", "x"], "does not use"),
    (["set", "--env", "qa", "FLAGS", "x"], "is a group"),
    (["set", "--env", "qa", "DATABASE_PASSWORD", 'say "hi"'], "a double quote"),
    (["set", "--env", "qa", "DATABASE_PASSWORD", "a\tb"], "a control character"),
    (["set", "--env", "qa", "DATABASE_PASSWORD", ""], "the value is empty"),
    (["set", "--env", "qa", "DB", "--type", "String", "x"], "--type is for ssm parameters"),
    (["set", "--env", "qa", "DB", "not json"], "not a JSON object with a text or number at key 'password'"),
    (["set", "--env", "qa", "DATABASE_PASSWORD", "x", "--type", "Number"], "'Number'"),
    (["set", "--env", "cloud", "FLAG", "x"], "no AWS region"),
    (["get", "--env", "qa", "NOSUCH"], "has no runtime key 'NOSUCH'"),
    (["set", "--env", "qa", "ssm:/webapp/qa/ld/preload", "x"], "LD_PRELOAD"),
    (["set", "--env", "qa", "ssm:/webapp/qa/bk/data-volume", "x"], "BAKERY_DATA_VOLUME"),
    (["set", "--env", "qa", "ssm:/webapp/qa/dbx/url", "x"], "DBX_URL"),
    (["set", "--env", "cloud", "GROUP"], "is a group"),
    (["list", "--env", "nosuch"], "unknown environment 'nosuch'"),
]


@pytest.mark.parametrize("args, fragment", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(project, capsys, args, fragment):
    before = snapshot(project)
    rc, out, err = run(project, capsys, *args)
    assert rc == 2, err
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err, err
    assert changes(before, snapshot(project)) == []
    value = args[-1] if len(args) > 4 else None
    assert not value or len(value) < 3 or value not in err.replace(f"'{value}'", "")


def test_a_member_whose_key_another_member_has_is_refused(project, capsys):
    """M3: read-only and read_only make the same key FLAGS_READ_ONLY; the applier would fail every boot."""
    assert run(project, capsys, "set", "--env", "qa", "ssm:/webapp/qa/flags/read-only", "on")[0] == 0
    before = snapshot(project)
    rc, _, err = run(project, capsys, "set", "--env", "qa", "ssm:/webapp/qa/flags/read_only", "on")
    assert rc == 2 and err.count("\n") == 1 and "FLAGS_READ_ONLY" in err and "read-only" in err, err
    assert changes(before, snapshot(project)) == []
    assert run(project, capsys, "set", "--env", "qa", "ssm:/webapp/qa/flags/read-only", "off")[0] == 0  # itself


class _Unread:
    def isatty(self):
        return False

    def read(self, *args):
        raise AssertionError("stdin read before the group was refused")


def test_a_group_key_is_refused_before_stdin_is_read(project, capsys, monkeypatch):
    """L8: both targets refuse a group key as bad input (exit 2) before asking for the value."""
    monkeypatch.setattr("sys.stdin", _Unread())
    for env, key in (("qa", "FLAGS"), ("cloud", "GROUP")):
        rc, _, err = run(project, capsys, "set", "--env", env, key)
        assert rc == 2 and "is a group" in err, err


def _put_many(root, count):
    from bakery.params import names
    from bakery.params.local_store import LocalStore

    store = LocalStore(root)
    for number in range(count):
        store.put(names.Reference("ssm", "/webapp/qa/flag"), str(number), "String")


def test_concurrent_sets_never_write_the_same_version(tmp_path):
    """L2: two `param set` at once (two processes) each get their own version; no write is lost."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_put_many, args=(tmp_path / "store", 40)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    record = json.loads((tmp_path / "store" / "ssm" / "webapp" / "qa" / "flag.json").read_text())
    assert record["version"] == 80 and [h["version"] for h in record["history"]] == list(range(1, 81))
