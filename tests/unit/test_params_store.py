"""Contract 3 of issue 17: references and their names, and the local parameter store bakery writes
(.bakery/params/<env>/): modes, atomic writes, versions with who and when, history without values."""

from __future__ import annotations

import json
import os
import stat

import pytest

from bakery.errors import ConfigError
from bakery.params import names
from bakery.params.local_store import LocalStore

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value, kind, name, group, field", [
    ("ssm:/webapp/qa/feature-new-checkout", "ssm", "/webapp/qa/feature-new-checkout", False, None),
    ("ssm:/webapp/qa/", "ssm", "/webapp/qa/", True, None),
    ("ssm:/a_b.c-d", "ssm", "/a_b.c-d", False, None),
    ("secretsmanager:webapp/qa/db", "secretsmanager", "webapp/qa/db", False, None),
    ("secretsmanager:webapp/qa/db#password", "secretsmanager", "webapp/qa/db", False, "password"),
    ("secretsmanager:a+b=c.d@e-f_g", "secretsmanager", "a+b=c.d@e-f_g", False, None),
    ("arn:aws:ssm:eu-west-1:111122223333:parameter/webapp/qa/x", "ssm", "/webapp/qa/x", False, None),
    ("arn:aws:secretsmanager:eu-west-1:111122223333:secret:webapp/qa/db-AbCdEf", "secretsmanager",
     "webapp/qa/db-AbCdEf", False, None),
])
def test_references_are_parsed(value, kind, name, group, field):
    ref = names.parse_reference(value, "where")
    assert ref is not None and (ref.kind, ref.name, ref.group, ref.field) == (kind, name, group, field)


@pytest.mark.parametrize("value", ["file:/etc/x", "plain", "", "http://x", "arn:aws:s3:::bucket/key"])
def test_other_values_are_no_reference(value):
    assert names.parse_reference(value, "where") is None


@pytest.mark.parametrize("value, says", [
    ("ssm:relative", "must start with '/'"),
    ("ssm:/a//b", "an empty segment"),
    ("ssm:/a/../b", "'..'"),
    ("ssm:/a/./b", "'.'"),
    ("ssm:/..", "'..'"),
    ("ssm:/a b", "letters, digits"),
    ("ssm:/a\x00b", "letters, digits"),
    ("ssm:/" + "x" * 1011, "at most 1011"),
    ("ssm:/", "names no parameter"),
    ("secretsmanager:", "1 to 512"),
    ("secretsmanager:../x", "'..'"),
    ("secretsmanager:a/./b", "'.'"),
    ("secretsmanager:a b", "1 to 512"),
    ("secretsmanager:" + "x" * 513, "1 to 512"),
    ("secretsmanager:x#", "an empty JSON key"),
])
def test_a_bad_reference_is_refused_in_one_line(value, says):
    with pytest.raises(ConfigError) as err:
        names.parse_reference(value, "bakery_runtime.DB")
    assert says in str(err.value) and str(err.value).startswith("bakery_runtime.DB: ") and "\n" not in str(err.value)


# ---- the local store


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "params" / "qa", user="ops@laptop")


def ref(value):
    return names.parse_reference(value, "test")


def test_a_parameter_is_a_file_readable_only_by_its_owner(store):
    record = store.put(ref("ssm:/webapp/qa/feature-new-checkout"), "false", "String")
    path = store.root / "ssm" / "webapp" / "qa" / "feature-new-checkout.json"
    assert record["version"] == 1 and path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (store.root, store.root / "ssm", store.root / "ssm" / "webapp", path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    data = json.loads(path.read_text())
    assert data["name"] == "/webapp/qa/feature-new-checkout" and data["type"] == "String"
    assert data["value"] == "false" and data["by"] == "ops@laptop" and data["modified"].endswith("Z")
    assert data["history"] == [{"version": 1, "modified": data["modified"], "by": "ops@laptop"}]


def test_every_write_is_a_new_version_with_history_without_values(store):
    parameter = ref("ssm:/webapp/qa/db-password")
    for n, value in enumerate(["first-secret", "second-secret", "third-secret"], start=1):
        assert store.put(parameter, value, "SecureString")["version"] == n
    record = store.get(parameter)
    assert record["version"] == 3 and record["value"] == "third-secret" and record["type"] == "SecureString"
    assert [h["version"] for h in record["history"]] == [1, 2, 3]
    text = (store.root / "ssm" / "webapp" / "qa" / "db-password.json").read_text()
    assert "first-secret" not in text and "second-secret" not in text


def test_a_secret_lands_under_secretsmanager_with_its_slashes_as_folders(store):
    record = store.put(ref("secretsmanager:webapp/qa/db#password"), '{"password": "x"}', "SecretString")
    path = store.root / "secretsmanager" / "webapp" / "qa" / "db.json"
    assert path.is_file() and record["type"] == "SecretString"
    assert json.loads(path.read_text())["name"] == "webapp/qa/db"


def test_a_missing_parameter_is_none(store):
    assert store.get(ref("ssm:/webapp/qa/nothing")) is None
    assert not store.root.exists()  # reading creates nothing


def test_a_failed_write_keeps_the_old_version_and_leaves_no_temporary_file(store, monkeypatch):
    parameter = ref("ssm:/webapp/qa/flag")
    store.put(parameter, "true", "String")

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        store.put(parameter, "false", "String")
    monkeypatch.undo()
    assert store.get(parameter)["value"] == "true"
    assert [p.name for p in (store.root / "ssm" / "webapp" / "qa").iterdir()] == ["flag.json"]


def test_an_existing_store_with_loose_modes_is_tightened(store):
    store.root.mkdir(parents=True, mode=0o755)
    os.chmod(store.root, 0o755)
    store.put(ref("ssm:/x"), "1", "String")
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700


def test_a_path_outside_the_store_cannot_be_named(store):
    with pytest.raises(ConfigError):
        store.put(names.Reference("ssm", "/../../etc/passwd"), "x", "String")
    assert not (store.root.parent.parent / "etc").exists()


def test_a_group_reference_is_no_single_parameter(store):
    with pytest.raises(ConfigError, match="a group"):
        store.put(ref("ssm:/webapp/qa/"), "x", "String")


def test_ensure_makes_the_empty_store_the_instances_mount(tmp_path):
    root = LocalStore(tmp_path / "p" / "qa").ensure()
    assert root.is_dir() and stat.S_IMODE(root.stat().st_mode) == 0o700 and not any(root.iterdir())
