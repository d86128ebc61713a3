"""Every builder holds the deps lock (shared) for its whole bake, so `bake.py deps` cannot swap an install that
ansible is reading; two bakes may run at once."""

from __future__ import annotations

import fcntl
import io

import pytest

from bakery.builders.imagebuilder import ImageBuilderBuilder
from bakery.builders.packer import PackerBuilder
from bakery.builders.podman import PodmanBuilder
from bakery.config import Project
from bakery.progress import Progress

pytestmark = pytest.mark.unit


def lock_state(path) -> str:
    with open(path, "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # another bake: allowed
        except BlockingIOError:
            return "exclusive"
        fcntl.flock(handle, fcntl.LOCK_UN)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # deps: must wait
        except BlockingIOError:
            return "shared"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return "free"


@pytest.mark.parametrize("builder_class", [PodmanBuilder, PackerBuilder, ImageBuilderBuilder])
def test_the_bake_runs_under_a_shared_deps_lock(proj, monkeypatch, builder_class):
    (proj / ".bakery" / "galaxy").mkdir(parents=True)
    lock = proj / ".bakery" / "galaxy" / ".deps.lock"
    seen = []
    monkeypatch.setattr(builder_class, "_build", lambda self, *args: seen.append(lock_state(lock)) or "built")
    builder = builder_class(Project(proj), None, Progress(io.StringIO()))  # type: ignore[arg-type]
    assert builder.build(None, None, None) == "built"  # type: ignore[arg-type]
    assert seen == ["shared"]
    assert lock_state(lock) == "free"


@pytest.mark.parametrize("builder_class", [PodmanBuilder, PackerBuilder, ImageBuilderBuilder])
def test_a_bake_started_during_deps_says_it_waits_for_it(proj, monkeypatch, builder_class):
    import threading

    from bakery.deps.gate import exclusive_lock

    (proj / ".bakery" / "galaxy").mkdir(parents=True)
    held, release = threading.Event(), threading.Event()

    def deps():
        with exclusive_lock(proj, None):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=deps)
    thread.start()
    held.wait(5)
    threading.Timer(0.3, release.set).start()
    out = io.StringIO()
    monkeypatch.setattr(builder_class, "_build", lambda self, *args: release.is_set() and "built")
    builder = builder_class(Project(proj), None, Progress(out))  # type: ignore[arg-type]
    assert builder.build(None, None, None) == "built"  # type: ignore[arg-type]
    thread.join(5)
    assert out.getvalue().count("waiting for bake.py deps to finish") == 1
