"""Parameters resolved on the instance (issue 17, Contracts 1-4 of the lead's design): the real applier
(roles/base/files/bakery-runtime-config) run as the unit runs it, on Debian's python3 when the machine has it (no
botocore there: local mode must not need it), against a real local parameter store in tmp_path laid out as bakery
writes it (.bakery/params/<env>/ssm/<path>.json, secretsmanager/<name>.json), and --refresh with a recorded
systemctl. A secret value never reaches stdout, stderr or params.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

APPLIER = REPO / "roles" / "base" / "files" / "bakery-runtime-config"
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
SECRET = "s3cret-Only-In-Run-4711"
RELOAD = "reload --no-block bakery-runtime-config.service"


@dataclass
class Run:
    rc: int
    out: str
    paths: Paths

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def values(self) -> dict[str, str]:
        text = self.paths.target.read_text(encoding="utf-8")
        return {k: v[1:-1] for k, _, v in (line.partition("=") for line in text.splitlines())}

    @property
    def state(self) -> dict:
        return json.loads(self.paths.state.read_text(encoding="utf-8"))


@dataclass
class Paths:
    root: Path

    @property
    def launch(self) -> Path:
        return self.root / "launch.env"

    @property
    def store(self) -> Path:
        return self.root / "params"

    @property
    def target(self) -> Path:
        return self.root / "run" / "runtime.env"

    @property
    def state(self) -> Path:
        return self.root / "run" / "params.json"

    @property
    def calls(self) -> Path:
        return self.root / "systemctl.calls"

    def put_ssm(self, name: str, value: str, version: int = 1, kind: str = "String") -> Path:
        return self._put(self.store / "ssm" / f"{name.lstrip('/')}.json", name, value, version, kind)

    def put_secret(self, name: str, value: str, version: int = 1) -> Path:
        return self._put(self.store / "secretsmanager" / f"{name}.json", name, value, version, "SecretString")

    @staticmethod
    def _put(path: Path, name: str, value: str, version: int, kind: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {"name": name, "type": kind, "value": value, "version": version, "modified": "2026-12-03T15:00:00Z",
                  "by": "root@host", "history": [{"version": v, "modified": "2026-12-03T15:00:00Z", "by": "root@host"}
                                                 for v in range(1, version)]}
        path.write_text(json.dumps(record), encoding="utf-8")
        path.chmod(0o600)
        return path


@pytest.fixture
def paths(tmp_path) -> Paths:
    paths = Paths(tmp_path)
    paths.store.mkdir(mode=0o700)
    recorder = tmp_path / "systemctl"
    recorder.write_text(f'#!/bin/sh\necho "$*" >> {paths.calls}\n', encoding="utf-8")
    recorder.chmod(0o755)
    return paths


def applier(paths: Paths, launch: str | None, *args: str, **extra: str) -> Run:
    """The applier as a unit runs it; one line of output at most, never a traceback, never the secret."""
    if launch is not None:
        paths.launch.write_text(launch, encoding="utf-8")
    env = {"PATH": os.environ["PATH"], "BAKERY_LAUNCH_FILE": str(paths.launch),
           "BAKERY_RUNTIME_FILE": str(paths.target), "BAKERY_PARAMS_DIR": str(paths.store),
           "BAKERY_PARAMS_STATE": str(paths.state), "BAKERY_SYSTEMCTL": str(paths.root / "systemctl"), **extra}
    proc = subprocess.run([PYTHON, str(APPLIER), *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and len(out.splitlines()) <= 1, out
    assert SECRET not in out
    if paths.state.exists():
        assert SECRET not in paths.state.read_text(encoding="utf-8")
    assert not list(paths.target.parent.glob("*.tmp")) if paths.target.parent.exists() else True
    return Run(proc.returncode, out, paths)


def failed(run: Run, *words: str) -> str:
    """A failed boot: exit 1, one line naming what is wrong, and nothing written for services."""
    assert run.rc == 1, run.out
    assert not run.paths.target.exists() and not run.paths.state.exists()
    for word in words:
        assert word in run.out, run.out
    return run.out


def calls(paths: Paths) -> list[str]:
    return paths.calls.read_text().splitlines() if paths.calls.exists() else []


def make_due(paths: Paths, *keys: str) -> None:
    """As if each key's refresh interval had elapsed since its last check (instead of sleeping for it)."""
    state = json.loads(paths.state.read_text(encoding="utf-8"))
    for key in keys:
        state["keys"][key]["monotonic"] = 0
    paths.state.write_text(json.dumps(state), encoding="utf-8")


# ---- the reference forms of Contract 2, resolved from the local store


def test_ssm_string_and_secure_string_resolve_and_params_json_has_versions_not_values(paths):
    paths.put_ssm("/webapp/qa/feature-new-checkout", "true", version=3)
    paths.put_ssm("/webapp/qa/database-password", SECRET, version=2, kind="SecureString")
    run = applier(paths, 'BAKERY_PARAMS="local"\nDATABASE_PASSWORD="ssm:/webapp/qa/database-password"\n'
                         'ENVIRONMENT="qa"\nFEATURE_NEW_CHECKOUT="ssm:/webapp/qa/feature-new-checkout"\n')
    assert run.rc == 0, run.out
    assert run.values == {"DATABASE_PASSWORD": SECRET, "ENVIRONMENT": "qa", "FEATURE_NEW_CHECKOUT": "true"}
    assert paths.target.stat().st_mode & 0o777 == 0o600 and paths.state.stat().st_mode & 0o777 == 0o644
    assert run.out.startswith("bakery-runtime-config: applied 3 keys from ")
    assert "resolved 2 references (local): DATABASE_PASSWORD, FEATURE_NEW_CHECKOUT" in run.out
    state = run.state
    assert state["mode"] == "local" and state["resolved"].endswith("Z")
    assert state["keys"]["FEATURE_NEW_CHECKOUT"]["ref"] == "ssm:/webapp/qa/feature-new-checkout"
    assert state["keys"]["FEATURE_NEW_CHECKOUT"]["version"] == 3
    assert state["keys"]["DATABASE_PASSWORD"]["version"] == 2
    assert state["keys"]["DATABASE_PASSWORD"]["refresh"] is None
    assert "ENVIRONMENT" not in state["keys"]


def test_secretsmanager_whole_field_and_arn_forms(paths):
    paths.put_secret("webapp/qa/api", SECRET, version=4)
    paths.put_secret("webapp/qa/db", json.dumps({"user": "app", "password": SECRET, "port": 5432}), version=1)
    paths.put_ssm("/webapp/qa/greeting", "hello")
    run = applier(paths, 'BAKERY_PARAMS="local"\nAPI_TOKEN="secretsmanager:webapp/qa/api"\n'
                         'DB_USER="secretsmanager:webapp/qa/db#user"\nDB_PORT="secretsmanager:webapp/qa/db#port"\n'
                         'DATABASE_PASSWORD="arn:aws:secretsmanager:eu-west-1:123456789012:secret:webapp/qa/db#password"\n'
                         'GREETING="arn:aws:ssm:eu-west-1:123456789012:parameter/webapp/qa/greeting"\n'
                         'BUCKET="arn:aws:s3:::not-a-parameter"\nCERT="file:/etc/ssl/x.pem"\n')
    assert run.rc == 0, run.out
    assert run.values == {"API_TOKEN": SECRET, "DB_USER": "app", "DB_PORT": "5432", "DATABASE_PASSWORD": SECRET,
                          "GREETING": "hello", "BUCKET": "arn:aws:s3:::not-a-parameter", "CERT": "file:/etc/ssl/x.pem"}
    assert run.state["keys"]["API_TOKEN"]["version"] == 4
    assert set(run.state["keys"]) == {"API_TOKEN", "DB_USER", "DB_PORT", "DATABASE_PASSWORD", "GREETING"}


def test_a_group_prefix_sets_one_key_per_parameter_directly_under_it(paths):
    paths.put_ssm("/webapp/qa/db/host", "db.internal")
    paths.put_ssm("/webapp/qa/db/port", "5432", version=7)
    paths.put_ssm("/webapp/qa/db/read-only.url", "postgres://ro@db.internal/app")
    paths.put_ssm("/webapp/qa/db/deeper/thing", "not taken: groups are not recursive")
    run = applier(paths, 'BAKERY_PARAMS="local"\nDB="ssm:/webapp/qa/db/"\nENVIRONMENT="qa"\n')
    assert run.rc == 0, run.out
    assert run.values == {"DB_HOST": "db.internal", "DB_PORT": "5432", "DB_READ_ONLY_URL": "postgres://ro@db.internal/app",
                          "ENVIRONMENT": "qa"}
    group = run.state["keys"]["DB"]
    assert group["ref"] == "ssm:/webapp/qa/db/" and group["members"]["DB_PORT"] == {"name": "/webapp/qa/db/port",
                                                                                   "version": 7}


@pytest.mark.parametrize("key, names, says", [
    ("LD", ["preload"], "LD_PRELOAD (from /x/preload) is reserved"),
    ("DB", ["a-b", "a.b"], "DB_A_B (from /x/a.b) is given twice"),
])
def test_a_group_member_that_makes_a_reserved_or_duplicate_key_fails_the_unit(paths, key, names, says):
    for name in names:
        paths.put_ssm(f"/x/{name}", "v")
    failed(applier(paths, f'BAKERY_PARAMS="local"\n{key}="ssm:/x/"\n'), f"{key} (ssm:/x/)", says)


def test_a_group_member_may_not_collide_with_a_key_of_the_file(paths):
    paths.put_ssm("/x/host", "v")
    failed(applier(paths, 'BAKERY_PARAMS="local"\nDB="ssm:/x/"\nDB_HOST="h"\n'), "DB_HOST", "given twice")


# ---- failures: one line naming the key and the reference, nothing written


@pytest.mark.parametrize("ref", ["ssm:/webapp/qa/database-password", "ssm:/webapp/qa/db/",
                                 "secretsmanager:webapp/qa/db", "secretsmanager:webapp/qa/db#password"])
def test_a_missing_parameter_fails_the_unit_naming_key_and_reference(paths, ref):
    paths.put_secret("webapp/qa/db", json.dumps({"user": "app"}))  # present, but without #password
    if ref == "secretsmanager:webapp/qa/db":
        (paths.store / "secretsmanager" / "webapp" / "qa" / "db.json").unlink()
    text = failed(applier(paths, f'BAKERY_PARAMS="local"\nENVIRONMENT="qa"\nDATABASE_PASSWORD="{ref}"\n'),
                  f"cannot resolve DATABASE_PASSWORD ({ref}): ")
    assert text.startswith("bakery-runtime-config: ") and "services do not start" in text


def test_a_missing_parameter_keeps_a_runtime_file_of_an_earlier_run_as_it_was(paths):
    paths.put_ssm("/a", "1")
    assert applier(paths, 'BAKERY_PARAMS="local"\nA="ssm:/a"\n').rc == 0
    (paths.store / "ssm" / "a.json").unlink()
    run = applier(paths, None)
    assert run.rc == 1 and paths.target.read_text() == 'A="1"\n'


@pytest.mark.parametrize("value, says", [('say "hello-x"', "'\\x22' (a double quote) at character 5"),
                                         (f"{SECRET}\\", "(a backslash, an escape to systemd)"),
                                         (f"{SECRET}\nBREAK_GLASS_SSH=true", "(a control character)")])
def test_a_resolved_value_off_the_grammar_is_refused_naming_the_key_never_the_value(paths, value, says):
    paths.put_ssm("/webapp/qa/note", value, kind="SecureString")
    text = failed(applier(paths, 'BAKERY_PARAMS="local"\nNOTE="ssm:/webapp/qa/note"\n'), "NOTE (ssm:/webapp/qa/note)",
                  says)
    assert "hello-x" not in text and "BREAK_GLASS" not in text


@pytest.mark.parametrize("ref", ["ssm:/../outside", "ssm:/webapp/../../outside", "ssm:/webapp//x", "ssm:/a b",
                                 "ssm:webapp/x", "ssm:/", "secretsmanager:../outside", "secretsmanager:a/../../outside",
                                 "secretsmanager:/outside", "secretsmanager:", "secretsmanager:a#",
                                 "arn:aws:ssm:eu-west-1:123456789012:parameter/../outside"])
def test_a_name_that_could_leave_the_mount_is_refused(paths, ref):
    (paths.root / "outside.json").write_text(json.dumps({"value": SECRET, "version": 1}))
    failed(applier(paths, f'BAKERY_PARAMS="local"\nX="{ref}"\n'), "X (", "not a valid")


def test_a_symlink_out_of_the_store_is_not_followed(paths):
    (paths.root / "outside.json").write_text(json.dumps({"value": SECRET, "version": 1}))
    (paths.store / "ssm").mkdir()
    (paths.store / "ssm" / "leak.json").symlink_to(paths.root / "outside.json")
    failed(applier(paths, 'BAKERY_PARAMS="local"\nX="ssm:/leak"\n'), "X (ssm:/leak)", "outside")


def test_no_store_mounted_in_local_mode_fails_clearly(paths):
    paths.store.rmdir()
    failed(applier(paths, 'BAKERY_PARAMS="local"\nX="ssm:/a"\n'), "X (ssm:/a)", "not mounted")


# ---- modes


def test_off_leaves_references_as_text_and_says_so(paths):
    paths.put_ssm("/a", SECRET)
    run = applier(paths, 'BAKERY_PARAMS="off"\nA="ssm:/a"\nB="plain"\n')
    assert run.rc == 0 and run.values == {"A": "ssm:/a", "B": "plain"}
    assert "1 reference left as text (BAKERY_PARAMS=off): A" in run.out
    assert run.state["mode"] == "off" and run.state["keys"]["A"]["version"] is None


def test_without_bakery_params_a_mounted_store_means_local(paths):
    paths.put_ssm("/a", "1")
    run = applier(paths, 'A="ssm:/a"\n')
    assert run.rc == 0 and run.values == {"A": "1"} and run.state["mode"] == "local"


def test_a_file_without_references_needs_no_store_and_no_mode(paths):
    paths.store.rmdir()
    run = applier(paths, 'A="1"\n')
    assert run.rc == 0 and run.values == {"A": "1"} and run.state == {**run.state, "keys": {}}


# ---- Contract 1: the three bakery-owned keys


def test_the_bakery_owned_keys_are_accepted_and_only_the_data_volume_reaches_services(paths):
    paths.put_ssm("/f", "true")
    run = applier(paths, 'A="ssm:/f"\nB="plain"\nBAKERY_DATA_VOLUME="bakery-data:/var/lib/webapp"\n'
                         'BAKERY_PARAMS="local"\nBAKERY_REFRESH="A=30 B=60 C=0060"\n')
    assert run.rc == 0, run.out
    assert run.values == {"A": "true", "B": "plain", "BAKERY_DATA_VOLUME": "bakery-data:/var/lib/webapp"}
    assert run.state["keys"]["A"]["refresh"] == 30 and "refresh: A every 30 s" in run.out
    assert "BAKERY_REFRESH names B, C, which are no references here: not refreshed" in run.out


# The same rules and words as bakery's runtime_grammar.validate_owned (tests/unit/test_params_grammar.py).
@pytest.mark.parametrize("line, says", [
    ('BAKERY_OTHER="x"', "BAKERY_OTHER is reserved"),
    ('BAKERY_RUNTIME_FILE="/tmp/x"', "BAKERY_RUNTIME_FILE is reserved"),
    ('BAKERY_PARAMS="cloud"', "BAKERY_PARAMS must be local, aws or off"),
    ('BAKERY_REFRESH="A=4"', "BAKERY_REFRESH: A's interval 4 is not a whole number of seconds from 5 to 3600"),
    ('BAKERY_REFRESH="A=3601"', "from 5 to 3600"),
    ('BAKERY_REFRESH="A=30s"', "BAKERY_REFRESH: A's interval 30s is not"),
    ('BAKERY_REFRESH="A=30 A=60"', "BAKERY_REFRESH names A twice"),
    ('BAKERY_REFRESH="A=30  B=30"', "BAKERY_REFRESH: expected KEY=SECONDS"),
    ('BAKERY_REFRESH="a=30"', "BAKERY_REFRESH: expected KEY=SECONDS"),
    ('BAKERY_REFRESH="LD_PRELOAD=30"', "BAKERY_REFRESH: LD_PRELOAD is reserved"),
    ('BAKERY_DATA_VOLUME="no-path"', "BAKERY_DATA_VOLUME must be LABEL:/absolute/path"),
    ('BAKERY_DATA_VOLUME="data:relative"', "BAKERY_DATA_VOLUME must be LABEL:/absolute/path"),
    ('BAKERY_DATA_VOLUME="a-label-longer-than-16:/data"', "BAKERY_DATA_VOLUME must be LABEL:/absolute/path"),
])
def test_a_bakery_owned_key_out_of_its_grammar_is_refused(paths, line, says):
    run = applier(paths, f'A="ssm:/f"\nB="plain"\n{line}\n')
    assert run.rc == 1 and "refusing runtime config: " in run.out and says in run.out, run.out
    assert not paths.target.exists()


# ---- --refresh (Contract 4)


def test_refresh_without_state_or_refresh_keys_does_nothing(paths):
    run = applier(paths, None, "--refresh")
    assert (run.rc, run.out, calls(paths)) == (0, "", [])
    paths.put_ssm("/a", "1")
    assert applier(paths, 'BAKERY_PARAMS="local"\nA="ssm:/a"\n').rc == 0
    paths.put_ssm("/a", "2", version=2)
    make_due(paths, "A")
    run = applier(paths, None, "--refresh")
    assert (run.rc, run.out, calls(paths), run.values) == (0, "", [], {"A": "1"})


def test_refresh_changes_only_due_keys_logs_names_and_reloads(paths):
    paths.put_ssm("/webapp/qa/feature-new-checkout", "true", version=1)
    paths.put_ssm("/webapp/qa/database-password", SECRET, kind="SecureString")
    paths.put_ssm("/webapp/qa/slow", "one")
    assert applier(paths, 'BAKERY_PARAMS="local"\nBAKERY_REFRESH="FEATURE_NEW_CHECKOUT=5 SLOW=3600"\n'
                          'DATABASE_PASSWORD="ssm:/webapp/qa/database-password"\n'
                          'FEATURE_NEW_CHECKOUT="ssm:/webapp/qa/feature-new-checkout"\n'
                          'SLOW="ssm:/webapp/qa/slow"\n').rc == 0
    before = paths.target.stat().st_ino
    run = applier(paths, None, "--refresh")  # nothing due yet
    assert (run.rc, run.out, calls(paths)) == (0, "", []) and paths.target.stat().st_ino == before

    paths.put_ssm("/webapp/qa/feature-new-checkout", "false", version=2)
    paths.put_ssm("/webapp/qa/slow", "two", version=2)
    make_due(paths, "FEATURE_NEW_CHECKOUT")
    run = applier(paths, None, "--refresh")
    assert run.rc == 0 and run.out == "bakery-runtime-config: refresh: changed: FEATURE_NEW_CHECKOUT\n", run.out
    assert run.values == {"DATABASE_PASSWORD": SECRET, "FEATURE_NEW_CHECKOUT": "false", "SLOW": "one"}
    assert paths.target.stat().st_mode & 0o777 == 0o600
    assert calls(paths) == [RELOAD]
    assert run.state["keys"]["FEATURE_NEW_CHECKOUT"]["version"] == 2 and run.state["keys"]["SLOW"]["version"] == 1

    again = applier(paths, None, "--refresh")  # just checked: not due again for 5 s
    assert (again.rc, again.out, calls(paths)) == (0, "", [RELOAD])


def test_refresh_of_an_unchanged_value_rewrites_nothing_and_reloads_nothing(paths):
    paths.put_ssm("/f", "true")
    assert applier(paths, 'BAKERY_PARAMS="local"\nBAKERY_REFRESH="F=5"\nF="ssm:/f"\n').rc == 0
    paths.put_ssm("/f", "true", version=2)
    before = paths.target.stat().st_ino
    make_due(paths, "F")
    run = applier(paths, None, "--refresh")
    assert (run.rc, run.out, calls(paths)) == (0, "", []) and paths.target.stat().st_ino == before
    assert run.state["keys"]["F"]["version"] == 2


def test_refresh_of_a_group_names_every_key_that_changed_came_or_went(paths):
    paths.put_ssm("/db/host", "a")
    gone = paths.put_ssm("/db/user", "u")
    assert applier(paths, 'BAKERY_PARAMS="local"\nBAKERY_REFRESH="DB=60"\nDB="ssm:/db/"\n').rc == 0
    paths.put_ssm("/db/host", "b", version=2)
    paths.put_ssm("/db/port", "5432")
    gone.unlink()
    make_due(paths, "DB")
    run = applier(paths, None, "--refresh")
    assert run.out == "bakery-runtime-config: refresh: changed: DB_HOST, DB_PORT, DB_USER\n", run.out
    assert run.values == {"DB_HOST": "b", "DB_PORT": "5432"} and calls(paths) == [RELOAD]


@pytest.mark.parametrize("breakage", ["missing", "quote"])
def test_a_failed_refresh_keeps_the_old_values_and_names_the_key(paths, breakage):
    path = paths.put_ssm("/f", "true")
    paths.put_ssm("/g", "1")
    assert applier(paths, 'BAKERY_PARAMS="local"\nBAKERY_REFRESH="F=5 G=5"\nF="ssm:/f"\nG="ssm:/g"\n').rc == 0
    if breakage == "missing":
        path.unlink()
    else:
        paths.put_ssm("/f", f'{SECRET}"', version=2)
    paths.put_ssm("/g", "2", version=2)
    make_due(paths, "F", "G")
    run = applier(paths, None, "--refresh")
    assert run.rc == 1 and run.out.startswith("bakery-runtime-config: refresh: cannot resolve F (ssm:/f): ")
    assert "keeping the old value" in run.out and "changed: G" in run.out
    assert run.values == {"F": "true", "G": "2"} and calls(paths) == [RELOAD]
    assert run.state["keys"]["F"]["version"] == 1


def test_a_failed_reload_is_one_line_and_exit_1(paths):
    paths.put_ssm("/f", "true")
    assert applier(paths, 'BAKERY_PARAMS="local"\nBAKERY_REFRESH="F=5"\nF="ssm:/f"\n').rc == 0
    paths.put_ssm("/f", "false", version=2)
    make_due(paths, "F")
    run = applier(paths, None, "--refresh", BAKERY_SYSTEMCTL="/bin/false")
    assert run.rc == 1 and "changed: F" in run.out
    assert "reload --no-block bakery-runtime-config.service failed (exit 1)" in run.out and run.values == {"F": "false"}


def test_an_unknown_argument_is_usage_exit_2(paths):
    run = applier(paths, None, "--frobnicate")
    assert run.rc == 2 and "usage: bakery-runtime-config [--refresh]" in run.out


def test_a_refresh_that_finds_nothing_due_is_fast(paths):
    paths.put_ssm("/f", "true")
    assert applier(paths, 'BAKERY_PARAMS="local"\nBAKERY_REFRESH="F=3600"\nF="ssm:/f"\n').rc == 0
    started = time.monotonic()
    assert applier(paths, None, "--refresh").rc == 0
    assert time.monotonic() - started < 1.0


def test_a_refresh_works_when_the_resolved_file_is_larger_than_user_data_may_be(paths):
    """M1: the UserData limit is for the delivered file; resolved values (a big group) may make runtime.env larger,
    and every reader (EnvironmentFile=, the webapp's copy) takes it, so --refresh must read it too."""
    for number in range(30):
        paths.put_ssm(f"/big/m{number:02d}", "x" * 600)
    paths.put_ssm("/flag", "on")
    assert applier(paths, 'BAKERY_PARAMS="local"\nBAKERY_REFRESH="FLAG=5"\nBIG="ssm:/big/"\n'
                          'FLAG="ssm:/flag"\n').rc == 0
    assert paths.target.stat().st_size > 15 * 1024
    paths.put_ssm("/flag", "off", version=2)
    make_due(paths, "FLAG")
    run = applier(paths, None, "--refresh")
    assert (run.rc, run.out) == (0, "bakery-runtime-config: refresh: changed: FLAG\n"), run.out
    assert run.values["FLAG"] == "off" and run.values["BIG_M29"] == "x" * 600


def test_a_failed_refresh_is_not_recorded_as_checked_and_is_retried_at_its_interval(paths):
    """L1: `checked` stays the last good check, `failed` says when it failed; the key is due again only after its
    interval (one journal line per interval, not one every 5 s tick)."""
    path = paths.put_ssm("/f", "true")
    assert applier(paths, 'BAKERY_PARAMS="local"\nBAKERY_REFRESH="F=60"\nF="ssm:/f"\n').rc == 0
    checked = json.loads(paths.state.read_text())["keys"]["F"]["checked"]
    state = json.loads(paths.state.read_text())
    state["keys"]["F"]["checked"] = "2000-01-01T00:00:00Z"  # so that a rewrite with now shows
    paths.state.write_text(json.dumps(state))
    path.unlink()
    make_due(paths, "F")
    run = applier(paths, None, "--refresh")
    assert run.rc == 1 and "cannot resolve F" in run.out
    entry = run.state["keys"]["F"]
    assert entry["checked"] == "2000-01-01T00:00:00Z" and entry["failed"] >= checked and entry["version"] == 1
    again = applier(paths, None, "--refresh")
    assert (again.rc, again.out) == (0, "")
    paths.put_ssm("/f", "false", version=2)
    make_due(paths, "F")
    good = applier(paths, None, "--refresh")
    assert good.rc == 0 and "failed" not in good.state["keys"]["F"]
    assert good.state["keys"]["F"]["checked"] != "2000-01-01T00:00:00Z"
