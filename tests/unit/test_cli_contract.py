"""The CLI contract on bad input, for every command: exit 2, one line on stderr naming the value, no traceback, and
not one byte written to the project or to .bakery/ (no catalog, no environment folder, no run directory).

Each row runs the real CLI (bakery.cli.main, as bake.py does) on a copy of this repository's project, twice: on a
fresh checkout (no .bakery/) and on one that has been used (a catalog with a version, a release, an environment
folder and a run). A `podman` on PATH that records being called proves that no row got as far as podman; the
fragment each row expects in its message proves it failed on validation, not on a missing podman or AWS account.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from bakery.cli import main
from tests.conftest import REPO, bake

pytestmark = pytest.mark.unit

VERSION = "20260101.001"
MISSING = "20990101.001"

# (arguments after --project DIR, a fragment the one line must contain)
TABLE: list[tuple[list[str], str]] = [
    # the root group
    (["nosuchcommand"], "No such command"),
    (["images", "--no-such-flag"], "No such option"),
    # build
    (["build", ""], "image name ''"),
    (["build", "Web App"], "image name 'Web App'"),
    (["build", "nosuch"], "unknown image 'nosuch'"),
    (["build", "../webapp"], "image name '../webapp'"),
    (["build"], "Missing argument"),
    (["build", "webapp", "-e", "novalue"], "--extra-var 'novalue'"),
    (["build", "webapp", "-e", "=x"], "--extra-var '=x'"),
    (["build", "webapp", "--builder", "packer"], "builder 'packer'"),
    (["build", "webapp", "--target", "aws", "--builder", "podman"], "builder 'podman'"),
    (["build", "webapp", "--target", "gcp"], "'gcp'"),
    # build-app
    (["build-app", "--source", "nosuch"], "nosuch"),
    (["build-app", "--name", ""], "''"),
    (["build-app", "--name", "Bad Name"], "Bad Name"),
    # base
    (["base", "--release", "nosuch"], "--release 'nosuch'"),
    (["base", "--release", ""], "--release ''"),
    (["base", "--if-updates", "--rebuild"], "--if-updates and --rebuild exclude each other"),
    (["base", "--if-updates", "--release", "sid"], "--release 'sid'"),
    # new-role
    (["new-role", ""], "role name ''"),
    (["new-role", "Bad"], "role name 'Bad'"),
    (["new-role", "../escape"], "role name '../escape'"),
    (["new-role", "webapp"], "already exists"),
    # distribute
    (["distribute", "webapp"], "needs IMAGE:VERSION"),
    (["distribute", ""], "''"),
    (["distribute", "webapp:notaversion"], "'notaversion'"),
    (["distribute", f"nosuch:{VERSION}"], "unknown image 'nosuch'"),
    (["distribute", f"webapp:{VERSION}", "--regions", "not a region"], "--regions"),
    (["distribute", f"webapp:{VERSION}", "--accounts", "123"], "--accounts"),
    (["distribute", f"webapp:{VERSION}", "--timeout", "0"], "--timeout"),
    # verify
    (["verify", ""], "image name ''"),
    (["verify", "nosuch"], "unknown image 'nosuch'"),
    (["verify", f"webapp:{MISSING}"], MISSING),
    (["verify", "webapp:notaversion"], "'notaversion'"),
    (["verify", "webapp:"], "webapp:"),
    (["verify", "webapp", "--env", "nosuch"], "unknown environment 'nosuch'"),
    (["verify", "webapp", "--env", "../qa"], "environment name '../qa'"),
    (["verify", f"webapp:{MISSING}", "--vm"], MISSING),
    (["verify", "nosuch", "--vm"], "unknown image 'nosuch'"),
    (["verify", "webapp", "--vm", "--env", "nosuch"], "unknown environment 'nosuch'"),
    (["disk", "nosuch"], "unknown image 'nosuch'"),
    (["disk", ""], "image name ''"),
    (["disk", f"webapp:{MISSING}"], MISSING),
    (["disk", "webapp:notaversion"], "'notaversion'"),
    (["disk", "webapp", "--size", "lots"], "--size must be a size such as 512M or 2G, got 'lots'"),
    (["disk", "webapp", "--size", "0G"], "--size must be a size"),
    (["disk", "webapp", "--format", "vmdk"], "'vmdk'"),
    # images, show
    (["images", "nosuch"], "unknown image 'nosuch'"),
    (["images", ""], "image name ''"),
    (["images", "--target", "gcp"], "'gcp'"),
    (["show", ""], "image name ''"),
    (["show", "nosuch"], "nosuch"),
    (["show", ":"], "':'"),
    (["show", f"webapp:{MISSING}"], MISSING),
    (["show", "webapp:notaversion"], "'notaversion'"),
    (["show", "webapp:"], "webapp:"),
    # gc
    (["gc", "--keep", "0"], "--keep must be at least 1"),
    (["gc", "--keep", "-1"], "-1"),
    (["gc", "--keep", "abc"], "'abc'"),
    (["gc", "--target", "aws"], "give --keep N"),
    (["gc", "--target", "aws", "--keep", "0"], "--keep must be at least 1"),
    # deploy
    (["deploy", "webapp", "--env", "nosuch"], "unknown environment 'nosuch'"),
    (["deploy", "webapp", "--env", ""], "environment name ''"),
    (["deploy", "webapp"], "Missing option '--env'"),
    (["deploy", "nosuch", "--env", "qa"], "not 'nosuch'"),
    (["deploy", "", "--env", "qa"], "image name ''"),
    (["deploy", f"webapp:{MISSING}", "--env", "qa"], MISSING),
    (["deploy", "webapp:notaversion", "--env", "qa"], "'notaversion'"),
    (["deploy", "webapp", "--env", "qa", "--min-healthy-percentage", "101"], "--min-healthy-percentage"),
    (["deploy", "webapp", "--env", "qa", "--checkpoint-percentages", "50,abc"], "50,abc"),
    (["deploy", "webapp", "--env", "qa", "--checkpoint-percentages", "60,40"], "checkpoint"),
    (["deploy", "webapp", "--env", "qa", "--standby-instances", "Never"], "'Never'"),
    # status, rollback, down
    (["status", "--env", "nosuch"], "unknown environment 'nosuch'"),
    (["status", "--env", "../qa"], "environment name '../qa'"),
    (["status"], "Missing option '--env'"),
    (["rollback", "--env", "nosuch"], "unknown environment 'nosuch'"),
    (["rollback", "--env", "qa", "--max-healthy-percentage", "99"], "--max-healthy-percentage"),
    (["rollback", "--env", "qa", "--checkpoint-percentages", "60,40"], "checkpoint"),
    (["down", "--env", "nosuch"], "unknown environment 'nosuch'"),
    (["down", "--env", ""], "environment name ''"),
    # promote
    (["promote", "webapp", "--to", "nosuch"], "unknown environment 'nosuch'"),
    (["promote", "webapp", "--to", "dev"], "has no promote_from"),
    (["promote", "nosuch", "--to", "qa"], "not 'nosuch'"),
    (["promote", f"webapp:{MISSING}", "--to", "qa"], MISSING),
    (["promote", "webapp:notaversion", "--to", "qa"], "'notaversion'"),
    (["promote", "webapp", "--to", "prod", "--checkpoint-percentages", "x"], "'x'"),
    # config get / set
    (["config", "get", "--env", "nosuch"], "unknown environment 'nosuch'"),
    (["config", "get", "--env", "qa", "NOSUCH"], "no key 'NOSUCH'"),
    (["config", "get", "--env", "qa", ""], "''"),
    (["config", "get"], "Missing option '--env'"),
    (["config", "set", "--env", "qa", "NOEQUALS"], "no '='"),  # the argument is not echoed: it may be a secret
    (["config", "set", "--env", "qa", "=x"], "a key of 0 characters"),
    (["config", "set", "--env", "qa", "lower=x"], "a key of 5 characters"),
    (["config", "set", "--env", "qa", "DATABASE_PASSWORD=hunter2"], "DATABASE_PASSWORD"),
    (["config", "set", "--env", "qa", "NOTE=a\nB=c"], "NOTE"),
    (["config", "set", "--env", "nosuch", "A=b"], "unknown environment 'nosuch'"),
    (["config", "set", "--env", "qa"], "Missing argument"),
    (["config", "set", "--env", "qa", "A=b", "--min-healthy-percentage", "500"], "--min-healthy-percentage"),
    (["config", "set", "--env", "qa", "A=b", "--checkpoint-percentages", "60,40"], "checkpoint"),
    # logs, top
    (["logs", "--env", "qa", "--since", "99999999999d"], "99999999999d"),
    (["logs", "--env", "qa", "--since", "yesterday"], "'yesterday'"),
    (["logs", "--env", "qa", "--since", "2999-01-01T00:00:00Z"], "in the future"),
    (["logs", "--env", "qa", "--since", ""], "--since ''"),
    (["logs", "--env", "nosuch"], "unknown environment 'nosuch'"),
    (["logs", "--env", "qa", "--unit", "bad unit;x"], "bad unit;x"),
    (["top", "--env", "nosuch"], "unknown environment 'nosuch'"),
    (["top", "--env", "qa", "--unit", ""], "--unit ''"),
    # pipeline
    (["pipeline", "webapp", "--env", "nosuch"], "unknown environment 'nosuch'"),
    (["pipeline", "nosuch", "--env", "qa"], "unknown image 'nosuch'"),
    (["pipeline", "webapp", "--env", "qa", "--target", "aws"], "not 'aws'"),
    (["pipeline", "webapp", "--env", "qa", "--promote-to", "dev"], "promote_from"),
    (["pipeline", "webapp", "--env", "qa", "--promote-to", "nosuch"], "unknown environment 'nosuch'"),
    (["pipeline", "webapp", "--env", "qa", "--builder", "packer"], "builder 'packer'"),
    # iam-policy
    (["iam-policy", "--env", "Not An Env"], "--env 'Not An Env'"),
    (["iam-policy", "--account", "123"], "--account '123'"),
    (["iam-policy", "--settings", "nosuch.yml"], "nosuch.yml"),
    (["iam-policy", "--for", "imagebuilder-instance", "--env", "qa"], "does not take --env"),
    (["iam-policy", "--part", "0"], "--part"),
    (["iam-policy", "--for", "nobody"], "'nobody'"),
    (["iam-policy", "--for", "instance"], "--for instance takes one --env"),
    (["iam-policy", "--for", "instance", "--env", "qa", "--account", "111122223333"], "is on the local target"),
    # param
    (["param", "set", "--env", "nosuch", "X", "y"], "unknown environment 'nosuch'"),
    (["param", "set", "--env", "qa", "NOSUCH", "y"], "has no runtime key 'NOSUCH'"),
    (["param", "set", "--env", "qa", "LOG_LEVEL", "y"], "LOG_LEVEL holds a plain value"),
    (["deps", "--check", "--update", "x"], "give one of them"),
    (["deps", "--update", "nosuch"], "no role or collection of that name"),
    (["param", "set", "--env", "qa", "ssm:/webapp/qa/../x", "y"], "'..'"),
    (["param", "set", "--env", "qa", "DATABASE_PASSWORD", 'a"b'], "a double quote"),
    (["param", "set", "--env", "qa", "DATABASE_PASSWORD", "y", "--type", "Number"], "'Number'"),
    (["param", "get", "--env", "qa", "NOSUCH"], "has no runtime key 'NOSUCH'"),
    (["param", "list", "--env", "nosuch"], "unknown environment 'nosuch'"),
    # a trailing newline passed `re.match(...$)` and printed a second line
    (["show", "webapp\n"], "image name 'webapp\\n'"),
    (["images", "webapp\n"], "image name 'webapp\\n'"),
    (["new-role", "x\n"], "role name 'x\\n'"),
    (["status", "--env", "qa\n"], "environment name 'qa\\n'"),
    (["config", "get", "--env", "qa", "A\n"], "no key 'A\\n'"),
    (["logs", "--env", "qa", "--unit", "webapp\n"], "--unit 'webapp\\n'"),
    (["logs", "--env", "qa", "--since", "0001-01-01T00:00:00+01:00"], "out of range"),
    (["logs", "--env", "qa", "--since", "9" * 5000 + "s"], "--since"),
]


# ---------------------------------------------------------------- the project and its snapshot


def make_project(root: Path) -> Path:
    """This repository's project (settings, playbooks, roles, environments, app), without its state."""
    root.mkdir()
    shutil.copy(REPO / "bakery.yml", root / "bakery.yml")
    for folder in ("playbooks", "roles", "inventories", "app"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return root


def use_project(root: Path) -> None:
    """State a project has once it was used: a catalog with a version, a verification and a release, an
    environment folder with its lock, and a run directory."""
    from bakery.catalog import open_catalog

    catalog = open_catalog(root / ".bakery")
    version = catalog.reserve_version("webapp", "old-run", os.getpid())
    catalog.complete_version("webapp", version, image_ref=f"localhost/bakery/webapp:{VERSION}", image_id="sha256:i",
                             input_digest="d", provenance={"git_commit": "0123456789abcdef"}, layers=[])
    catalog.record_disk("webapp", version, disk_format="raw", path=f"disks/webapp/{version}.raw", sha256="d" * 64,
                        size=1, allocated=1, run_id="old-run", details={})
    for kind in ("container", "vm"):  # the shipped qa and prod require both (vm: of the version's disk)
        catalog.record_verification("webapp", version, env=None, started="2026-01-01T00:00:00Z", seconds=1.0,
                                    passed=True, run_id="old-run", summary="ok", reports={"disk_sha256": "d" * 64},
                                    kind=kind)
    release = catalog.start_release("qa", "webapp", version, previous_version=None, kind="deploy", user="t",
                                    forced=False, run_id="old-run", pid=1, config_digest="sha256:c")
    catalog.finish_release(release, "succeeded")
    catalog.close()
    (root / ".bakery" / "envs" / "qa").mkdir(parents=True)
    (root / ".bakery" / "envs" / "qa" / "lock").write_text("1\n")
    (root / ".bakery" / "runs" / "old-run").mkdir(parents=True)
    (root / ".bakery" / "runs" / "old-run" / "build.log").write_text("old\n")


def fix_catalog_version(root: Path) -> None:
    """reserve_version numbers by today's date: rename the row to the fixed VERSION the table uses."""
    import sqlite3

    db = sqlite3.connect(root / ".bakery" / "catalog.db")
    with db:
        for table in ("versions", "verifications", "releases", "disks"):
            db.execute(f"UPDATE {table} SET version = ?", (VERSION,))  # noqa: S608 - fixed table names
    db.close()


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root (directories included, so a new empty one shows) with its type, mode and bytes."""
    entries: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            entries[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            entries[rel] = ("dir", stat.S_IMODE(info.st_mode))
        else:
            entries[rel] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
    return entries


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    return [f"+{p}" for p in added] + [f"-{p}" for p in removed] + [f"~{p}" for p in changed]


@pytest.fixture
def no_podman_no_aws(tmp_path: Path, monkeypatch) -> Path:
    """A `podman` first on PATH that only records that it was called, and an AWS chain with no credentials."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "podman-was-called"
    fake = bin_dir / "podman"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> '{marker}'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ENDPOINT_URL", "BAKERY_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return marker


@pytest.fixture(params=["fresh", "used"])
def contract_project(request, tmp_path: Path, no_podman_no_aws: Path) -> Path:
    root = make_project(tmp_path / "p")
    if request.param == "used":
        use_project(root)
        fix_catalog_version(root)
    return root


def check_refused(project: Path, args: list[str], fragment: str, rc: int, err: str, before: dict) -> None:
    lines = err.split("\n")
    assert rc == 2, f"exit {rc}, stderr: {err!r}"
    assert len(lines) == 2 and lines[0].strip() and lines[1] == "", f"expected exactly one line on stderr: {err!r}"
    assert "Traceback" not in err and "internal error" not in err, err
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert changes(before, snapshot(project)) == [], f"{args} wrote to the project"


def test_the_table_is_large_and_covers_every_command():
    from bakery.cli import cli

    assert len(TABLE) >= 60
    covered = {args[0] for args, _ in TABLE}
    assert set(cli.commands) <= covered, sorted(set(cli.commands) - covered)


@pytest.mark.parametrize("args, fragment", TABLE, ids=[" ".join(a) or "-" for a, _ in TABLE])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(contract_project, no_podman_no_aws, capsys, args,
                                                            fragment):
    before = snapshot(contract_project)
    rc = main(["--project", str(contract_project), *args])
    _, err = capsys.readouterr()
    check_refused(contract_project, args, fragment, rc, err, before)
    assert not no_podman_no_aws.exists(), f"{args} called podman: {no_podman_no_aws.read_text()}"


SUBPROCESS_ARGS = [["show", ""], ["config", "get", "--env", "qa", "NOSUCH"],
                   ["logs", "--env", "qa", "--since", "99999999999d"], ["deploy", f"webapp:{MISSING}", "--env", "qa"],
                   ["verify", f"webapp:{MISSING}"], ["build", "webapp", "--target", "gcp"],
                   ["config", "set", "--env", "qa", "lower=x"], ["pipeline", "webapp", "--env", "nosuch"],
                   ["top", "--env", "qa", "--unit", ""], ["nosuchcommand"]]
SUBPROCESS_ROWS = [next(row for row in TABLE if row[0] == args) for args in SUBPROCESS_ARGS]


@pytest.mark.parametrize("args, fragment", SUBPROCESS_ROWS, ids=[" ".join(a) for a, _ in SUBPROCESS_ROWS])
def test_bad_input_through_a_real_bake_py_process(contract_project, no_podman_no_aws, args, fragment):
    before = snapshot(contract_project)
    outcome = bake(contract_project, *args, timeout=60)
    check_refused(contract_project, args, fragment, outcome.rc, outcome.stderr, before)
    assert not no_podman_no_aws.exists()


# ---------------------------------------------------------------- each finding on its own


def test_since_beyond_the_range_names_the_value_and_the_range():
    from bakery.errors import ConfigError
    from bakery.observe.since import parse_since

    with pytest.raises(ConfigError, match=r"--since '99999999999d' is out of range: .* at most 3650d"):
        parse_since("99999999999d")
    parse_since("3650d")  # the edge is accepted


def test_config_get_of_an_unknown_key_is_exit_2(contract_project, capsys):
    rc = main(["--project", str(contract_project), "config", "get", "--env", "qa", "NOSUCH"])
    assert rc == 2 and "bakery_runtime has no key 'NOSUCH'" in capsys.readouterr().err


def test_show_of_an_empty_reference_is_refused(contract_project, capsys):
    rc = main(["--project", str(contract_project), "show", ""])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "image name ''" in err


@pytest.mark.parametrize("allowlist, fragment", [
    ("- {path: '**', rule: private-key, reason: everything}\n", "entry 1"),
    ("- {path: etc/x.pem, rule: '*', reason: any rule}\n", "entry 1"),
    ("- {path: etc/x.pem, rule: private-key}\n", "reason"),
])
def test_verify_with_a_bad_allowlist_is_refused_before_the_run_or_podman(tmp_path, no_podman_no_aws, capsys, allowlist,
                                                                         fragment):
    contract_project = make_project(tmp_path / "p")
    use_project(contract_project)
    fix_catalog_version(contract_project)
    (contract_project / "verify-allowlist.yml").write_text(allowlist)
    before = snapshot(contract_project)
    rc = main(["--project", str(contract_project), "verify", "webapp"])
    _, err = capsys.readouterr()
    check_refused(contract_project, ["verify"], fragment, rc, err, before)
    assert "verify-allowlist.yml" in err
    assert not no_podman_no_aws.exists()


def test_reading_an_absent_catalog_creates_nothing(tmp_path, no_podman_no_aws, capsys):
    root = make_project(tmp_path / "p")
    assert main(["--project", str(root), "show", "nosuch"]) == 2
    assert "image 'nosuch' has no versions" in capsys.readouterr().err
    assert main(["--project", str(root), "images", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    assert not (root / ".bakery").exists()


def test_an_existing_catalog_is_closed_with_no_wal_left(tmp_path, no_podman_no_aws, capsys):
    root = make_project(tmp_path / "p")
    use_project(root)
    assert main(["--project", str(root), "images"]) == 0
    assert sorted(p.name for p in (root / ".bakery").iterdir()) == ["catalog.db", "envs", "runs"]


@pytest.mark.parametrize("setup, fragment", [
    ("CREATE TABLE notes (id INTEGER)", "not a bakery catalog (tables notes)"),
    ("CREATE TABLE versions (image TEXT)", "table 'versions' lacks"),
    ("PRAGMA user_version = 999", "schema version 999 is newer"),
])
def test_a_catalog_bakery_did_not_write_is_refused_untouched(tmp_path, no_podman_no_aws, capsys, setup, fragment):
    import sqlite3

    root = make_project(tmp_path / "p")
    (root / ".bakery").mkdir()
    db = sqlite3.connect(root / ".bakery" / "catalog.db")
    db.execute(setup)
    db.commit()
    db.close()
    before = snapshot(root)
    rc = main(["--project", str(root), "images"])
    check_refused(root, ["images"], fragment, rc, capsys.readouterr().err, before)


def test_a_new_catalog_is_stamped_and_an_older_one_read_unchanged(tmp_path, no_podman_no_aws, capsys):
    import sqlite3

    root = make_project(tmp_path / "p")
    use_project(root)
    db = sqlite3.connect(root / ".bakery" / "catalog.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 4
    db.execute("PRAGMA user_version = 0")  # a catalog from before the schema had a version
    db.close()
    before = snapshot(root)
    assert main(["--project", str(root), "images", "--json"]) == 0
    assert "webapp" in capsys.readouterr().out
    assert changes(before, snapshot(root)) == []


def test_text_that_fails_the_key_grammar_is_never_echoed(contract_project, capsys):
    """A base64 secret ends in '=': pasted without its key, the part before '=' is the secret, not a key."""
    pasted = "c2VjcmV0LXRva2VuLTEyMzQ1Njc4OTA" + "="
    rc = main(["--project", str(contract_project), "config", "set", "--env", "qa", pasted + "="])
    err = capsys.readouterr().err
    assert rc == 2 and "is not shown" in err and "c2VjcmV0" not in err
