"""The secret scan through the real `bake.py verify` on a real image: a role (tests/fixtures/project/roles/leaky)
plants one of every kind of leftover, a later role deletes one of them, and verify must name each one, in the
layer that holds it, without printing any secret anywhere."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BAKE, FIXTURE_PROJECT, bake, git, init_repo
from tests.integration.conftest import containers

pytestmark = pytest.mark.integration

PLANT = FIXTURE_PROJECT / "roles" / "leaky" / "files" / "plant.py"
_spec = importlib.util.spec_from_file_location("leaky_plant", PLANT)
assert _spec and _spec.loader
plant = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plant)


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """One bake and one verify of the leaky image, shared by every test of this module."""
    root = tmp_path_factory.mktemp("leaky") / "project"
    shutil.copytree(FIXTURE_PROJECT, root)
    init_repo(root)
    assert bake(root, "build", "leaky", timeout=1200).rc == 0
    # A change to the second role only: the rebake reuses the leaky role's layer from the cache and runs tidy on
    # top of it, so the image keeps the planted file in that layer and tidy's deletion in the next one.
    tidy = root / "roles" / "tidy" / "tasks" / "main.yml"
    tidy.write_text(tidy.read_text() + "# changed\n")
    git(root, "-c", "user.email=t@bakery", "-c", "user.name=t", "commit", "-qam", "change tidy")
    built = bake(root, "build", "leaky", "--json", timeout=1200)
    assert built.rc == 0, built.stderr
    assert [layer["cached"] for layer in built.json["layers"]] == [True, False]
    out = bake(root, "verify", "leaky", "--json")
    result = json.loads(out.stdout)
    findings = json.loads(Path(result["reports"]["secrets"]).read_text())
    return {"root": root, "out": out, "result": result, "findings": findings}


def found(leaky, path: str) -> list[dict]:
    return [f for f in leaky["findings"] if f["path"] == path]


def test_verify_fails_and_leaves_no_instance(leaky):
    assert leaky["out"].rc == 1, leaky["out"].stderr
    checks = {c["name"]: c for c in leaky["result"]["checks"]}
    assert checks["secret-scan"]["passed"] is False
    assert f"and {len(leaky['findings']) - 10} more" in checks["secret-scan"]["message"]
    assert containers(f"io.bakery.verify={leaky['result']['run_id']}") == []


def rules_at(leaky, path: str) -> set[str]:
    return {f["rule"] for f in leaky["findings"] if f["path"] == path}


@pytest.mark.parametrize("family", sorted(plant.FAMILIES))
def test_every_planted_leftover_of_the_family_is_found_by_its_own_rule(leaky, family):
    """Each leftover must be found by the rule made for it (at its path, at the archive member, or at the
    repository a VCS file belongs to), not merely by some other rule that happens to fire on the same file."""
    planted = plant.FAMILIES[family]
    expected = {where: rule for where, rule in plant.RULES.items()
                if any(where == p or where.startswith(p + "!") or p.startswith(where + "/") for p in planted)}
    unchecked = [p for p in planted if not any(w == p or w.startswith(p + "!") or p.startswith(w + "/")
                                               for w in expected)]
    assert unchecked == [], f"plant.RULES has no rule for {unchecked}"
    missed = {where: (rule, sorted(rules_at(leaky, where))) for where, rule in expected.items()
              if rule not in rules_at(leaky, where)}
    assert missed == {}, f"{family}: not found by their rule (rule, rules found): {missed}"


def test_archive_members_are_named_inside_the_archive(leaky):
    paths = {f["path"] for f in leaky["findings"]}
    assert any(p.startswith("/opt/backup/keys.tar.gz!") and p.endswith("deep/token") for p in paths), paths
    assert any(p.startswith("/opt/backup/bundle.zip!") for p in paths), paths


def test_a_file_a_later_role_deleted_is_found_in_the_layer_that_wrote_it(leaky):
    hits = found(leaky, plant.TRANSIENT)
    assert hits and all(h["layer"].endswith("leaky") for h in hits), hits


def test_a_same_size_change_with_the_old_mtime_is_found(leaky):
    assert any(found(leaky, p) for p in plant.SAME_SIZE_CANDIDATES)


def test_a_usable_password_is_found_by_account_not_by_hash(leaky):
    (hit,) = [h for h in found(leaky, "/etc/shadow") if h["rule"] == "usable-password"]
    assert f"'{plant.USABLE_PASSWORD_ACCOUNT}'" in hit["detail"] and hit["line"]
    # the hash itself is in plant.SECRETS: test_no_secret_appears_in_any_report_or_output checks it is printed nowhere


def test_line_numbers_point_into_the_file(leaky):
    (hit,) = [h for h in found(leaky, "/var/log/leaky/app.log") if h["rule"] == "private-key"] or [None]
    assert hit is not None and hit["line"] == 60001


def test_no_secret_appears_in_any_report_or_output(leaky):
    outputs = [leaky["out"].stdout, leaky["out"].stderr]
    run_dir = Path(leaky["result"]["reports"]["junit"]).parent
    outputs += [p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file()]
    with sqlite3.connect(leaky["root"] / ".bakery" / "catalog.db") as db:
        outputs += [json.dumps(row) for table in ("verifications",) for row in db.execute(f"SELECT * FROM {table}")]
    text = "\n".join(outputs)
    leaked = [s for s in plant.SECRETS if s in text]
    assert leaked == []


def test_a_scan_that_runs_out_of_time_fails_the_check_not_the_gate(leaky):
    env = {**os.environ, "BAKERY_SCAN_TIMEOUT": "0.05"}
    proc = subprocess.run([sys.executable, str(BAKE), "--project", str(leaky["root"]), "verify", "leaky", "--json"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["secret-scan"]["passed"] is False
    assert "did not finish within 0.05 s" in checks["secret-scan"]["message"]
