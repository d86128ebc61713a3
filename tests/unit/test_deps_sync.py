"""bake.py deps against itself and against bakes: one deps at a time, never while a bake reads .bakery/galaxy, and
nothing of an interrupted run left behind."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from bakery.errors import Interrupted

pytestmark = pytest.mark.unit

TARBALL_ROLE = "roles:\n  - name: acme.web\n    src: ./dist/web.tar.gz\n"


def test_deps_waits_for_a_bake_holding_the_shared_lock(tmp_path):
    from bakery.deps.gate import shared_lock
    from bakery.deps.sync import sync

    (tmp_path / "requirements.yml").write_text("")
    held, waited = threading.Event(), []

    def bake():
        with shared_lock(tmp_path), shared_lock(tmp_path):  # two bakes share it
            held.set()
            time.sleep(0.6)

    thread = threading.Thread(target=bake)
    thread.start()
    held.wait(5)
    start = time.monotonic()
    sync(tmp_path, on_wait=lambda: waited.append(time.monotonic()))
    assert time.monotonic() - start >= 0.4, "deps ran while a bake held the shared lock"
    thread.join(5)
    assert len(waited) == 1


def test_a_bake_waiting_for_a_running_deps_says_so_once(tmp_path):
    from bakery.deps.gate import exclusive_lock, shared_lock

    (tmp_path / "requirements.yml").write_text("")
    held, release, waited = threading.Event(), threading.Event(), []

    def deps():
        with exclusive_lock(tmp_path, None):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=deps)
    thread.start()
    held.wait(5)
    threading.Timer(0.3, release.set).start()
    with shared_lock(tmp_path, on_wait=lambda: waited.append(1)):
        assert release.is_set(), "the bake read .bakery/galaxy while deps held the lock"
    thread.join(5)
    assert waited == [1]
    with shared_lock(tmp_path, on_wait=lambda: waited.append(2)):
        pass
    assert waited == [1]


def read_only_fs(monkeypatch, opened: list[int]):
    """os.open as on a read-only .bakery/galaxy (root ignores file modes, so the refusal is simulated)."""
    from bakery.deps import gate

    real_open = os.open

    def refusing(path, flags, *args, **kwargs):
        opened.append(flags)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(gate.os, "open", refusing)


def holds(path, mode: int) -> bool:
    """Does someone hold a lock on path that conflicts with `mode`?"""
    import fcntl

    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def test_a_bake_needs_no_write_access_to_galaxy_when_the_lock_file_exists(tmp_path, monkeypatch):
    import fcntl

    from bakery.deps.gate import shared_lock

    (tmp_path / "requirements.yml").write_text("")
    path = tmp_path / ".bakery/galaxy/.deps.lock"
    path.parent.mkdir(parents=True)
    path.touch()
    opened: list[int] = []
    read_only_fs(monkeypatch, opened)
    with shared_lock(tmp_path):
        assert holds(path, fcntl.LOCK_EX) and not holds(path, fcntl.LOCK_SH)
    assert opened and not opened[0] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
    assert not holds(path, fcntl.LOCK_EX)


def test_a_lock_file_that_cannot_be_created_is_a_warning_for_a_bake_and_an_error_for_deps(tmp_path, monkeypatch,
                                                                                           caplog):
    from bakery.deps.gate import exclusive_lock, shared_lock
    from bakery.errors import ConfigError

    (tmp_path / "requirements.yml").write_text("")
    (tmp_path / ".bakery/galaxy").mkdir(parents=True)
    read_only_fs(monkeypatch, [])
    ran = []
    with caplog.at_level("WARNING", logger="bakery"), shared_lock(tmp_path):
        ran.append(1)
    assert ran == [1]
    assert any(".bakery/galaxy/.deps.lock" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    with pytest.raises(ConfigError) as caught, exclusive_lock(tmp_path, None):
        pass
    message = str(caught.value)
    assert ".bakery/galaxy/.deps.lock" in message and "\n" not in message


def test_a_bake_of_a_project_without_requirements_takes_no_lock(tmp_path):
    from bakery.deps.gate import shared_lock

    with shared_lock(tmp_path):
        pass
    assert not (tmp_path / ".bakery").exists()


def test_deps_decides_on_requirements_read_once_it_holds_the_lock(tmp_path, monkeypatch):
    """A second deps must not act on a requirements.yml/lock read before the first finished writing them (a first
    read before the lock only refuses bad input before anything is created)."""
    import fcntl

    from bakery.deps import sync as module

    (tmp_path / "requirements.yml").write_text("")
    order = []
    real_flock, real_load = fcntl.flock, module.load_requirements
    monkeypatch.setattr(fcntl, "flock", lambda f, op: (order.append("flock"), real_flock(f, op))[1])
    monkeypatch.setattr(module, "load_requirements", lambda root: (order.append("read"), real_load(root))[1])
    module.sync(tmp_path)
    assert "flock" in order and "read" in order[order.index("flock"):], order


def test_staging_left_by_a_dead_deps_is_removed(tmp_path):
    from bakery.deps.sync import sync

    (tmp_path / "requirements.yml").write_text("")
    stale = tmp_path / ".bakery/galaxy/.staging-999999999"
    stale.mkdir(parents=True)
    (stale / "request-web-role.yml").write_text("roles: [{src: 'https://u:SECRET@h/web.tar.gz'}]\n")
    own = tmp_path / f".bakery/galaxy/.staging-{os.getpid()}"  # a dead run's directory under a reused pid
    own.mkdir()
    (own / "request-old-role.yml").write_text("x\n")
    sync(tmp_path)
    assert not stale.exists() and not own.exists()


def test_sigterm_during_deps_leaves_no_staging_and_no_lock(tmp_path, monkeypatch):
    from bakery.deps import install
    from bakery.deps.sync import sync

    (tmp_path / "requirements.yml").write_text(TARBALL_ROLE)
    staged = []

    def killed(_root, staging, *_args):
        staged.append(staging)
        (staging / "request-web-role.yml").write_text("secret\n")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(install, "galaxy_install", killed)
    with pytest.raises(Interrupted):
        sync(tmp_path)
    assert staged and not staged[0].exists()
    assert not (tmp_path / "requirements.lock").exists()


def test_an_internal_error_line_hides_url_credentials(monkeypatch, capsys):
    import bakery.cli as cli

    def boom(*_args, **_kwargs):
        raise RuntimeError("cannot open https://deploy:TOK3N@git.example.com/r.git?private_token=P4")

    monkeypatch.setattr(cli.cli, "main", boom)
    assert cli.main(["deps"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: cannot open https://***@git.example.com/r.git?private_token=***" in err
    assert "TOK3N" not in err and "P4" not in err
