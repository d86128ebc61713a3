"""The config-change journal restores only what config set wrote, to the file the environment names.

A hand edit of runtime.yml after config set wrote it (while its rollout runs, or after its process died) is kept,
never overwritten with the old bytes; the journal's own fields are not trusted: the file restored is the
environment's runtime.yml whatever the journal says, a field that is not what config set writes is one line (exit
2) naming the journal and how to get out, never a traceback, an emptied file or another environment's file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal

import pytest

from bakery.cli import main
from tests.conftest import bake
from tests.unit.test_config_change import journal_path, qa, runtime_file, start_config_set  # noqa: F401

pytestmark = pytest.mark.unit


def _kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # bake.py and its podman, together
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


@pytest.mark.parametrize("when", ["during_rollout", "after_kill"])
def test_a_hand_edit_after_config_set_wrote_runtime_yml_is_kept(qa, tmp_path, when):  # noqa: F811
    path = runtime_file(qa)
    proc = start_config_set(qa, tmp_path / "blocked")
    if when == "during_rollout":
        path.write_text(path.read_text() + '  HAND_EDIT: "mine"\n')
    _kill(proc)
    if when == "after_kill":
        path.write_text(path.read_text() + '  HAND_EDIT: "mine"\n')
    edited = path.read_bytes()

    outcome = bake(qa, "config", "get", "--env", "qa", timeout=60)
    assert outcome.rc == 0, outcome.stderr
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "changed by hand" in lines[0] and "kept" in lines[0], outcome.stderr
    assert path.read_bytes() == edited
    assert not journal_path(qa / ".bakery", "qa").exists()


def test_restore_after_a_failed_rollout_keeps_a_hand_edit_and_restores_an_untouched_file(qa):  # noqa: F811
    from bakery.config import Project
    from bakery.environments import load_environment
    from bakery.fleets.config_journal import ConfigChange

    path = runtime_file(qa)
    old = path.read_bytes()
    env = load_environment(Project(qa), "qa")
    new = old + b"  LOG_LEVEL2: debug\n"
    change = ConfigChange(qa / ".bakery", env)
    change.begin(old, new)
    path.write_bytes(new)
    assert change.restore() == "restored" and path.read_bytes() == old

    change.begin(old, new)
    path.write_bytes(new + b"  HAND_EDIT: mine\n")
    assert change.restore() == "kept" and path.read_bytes() == new + b"  HAND_EDIT: mine\n"
    assert not change.path.exists()

    path.write_bytes(old)
    change.begin(old, new)  # the process died before it wrote the new bytes
    assert change.restore() == "unchanged" and path.read_bytes() == old


def _journal(root, **fields) -> None:
    """A journal as a dead config set of qa would leave it (no release: it is settled by restoring), with fields
    replaced."""
    now = runtime_file(root).read_bytes()
    data = {"file": str(runtime_file(root)), "old": base64.b64encode(b"---\nbakery_runtime: {}\n").decode(),
            "mode": 0o644, "new_sha256": hashlib.sha256(now).hexdigest(), "new_size": len(now), "pid": 1,
            "run_id": None, "release_id": None, **fields}
    target = journal_path(root / ".bakery", "qa")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({k: v for k, v in data.items() if v is not ...}))


def test_the_file_restored_is_the_environments_never_the_one_the_journal_names(qa, capsys):  # noqa: F811
    prod = qa / "inventories" / "prod" / "group_vars" / "all" / "runtime.yml"
    prod_before = prod.read_bytes()
    # the journal names prod's file, and carries the digest of prod's bytes so that they would pass as "written"
    _journal(qa, file=str(prod), new_sha256=hashlib.sha256(prod_before).hexdigest())
    qa_before = runtime_file(qa).read_bytes()
    main(["--project", str(qa), "config", "get", "--env", "qa"])
    capsys.readouterr()
    assert prod.read_bytes() == prod_before
    assert runtime_file(qa).read_bytes() == qa_before  # qa's bytes are not the ones the journal says were written


@pytest.mark.parametrize("fields, what", [
    ({"old": "!!!"}, "old"),
    ({"old": 5}, "old"),
    ({"mode": "rw"}, "mode"),
    ({"new_sha256": ...}, "new_sha256"),
    ({"release_id": "x"}, "release_id"),
    (None, "JSON"),
    ([], "JSON object"),
], ids=["bad-base64", "old-not-text", "mode-not-number", "no-digest", "release-not-number", "not-json", "a-list"])
def test_a_malformed_journal_is_one_line_and_exit_2_naming_it_and_the_way_out(qa, capsys, fields, what):  # noqa: F811
    target = journal_path(qa / ".bakery", "qa")
    before = runtime_file(qa).read_bytes()
    if fields is None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{not json")
    elif isinstance(fields, list):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("[]")
    else:
        _journal(qa, **fields)
    rc = main(["--project", str(qa), "config", "get", "--env", "qa"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert str(target) in lines[0] and what in lines[0] and "remove" in lines[0], err
    assert "Traceback" not in err
    assert runtime_file(qa).read_bytes() == before  # never emptied
    assert target.exists()  # left for the user to look at, as the line says
