"""A bake's hold on its image's cached layers, and gc's: bakes share it, gc takes it only when no bake holds it."""

from __future__ import annotations

import threading
import time

import pytest

from bakery.builders.layer_lock import layers_in_use, layers_unused

pytestmark = pytest.mark.unit


def test_gc_does_not_get_the_layers_of_an_image_a_bake_holds(tmp_path):
    with layers_in_use(tmp_path, "web"):
        with layers_in_use(tmp_path, "web"):  # two bakes of one image run side by side
            with layers_unused(tmp_path, "web") as free:
                assert free is False
        with layers_unused(tmp_path, "api") as free:  # another image's layers are free
            assert free is True
    with layers_unused(tmp_path, "web") as free:
        assert free is True


def test_a_bake_starting_while_gc_removes_layers_waits_for_it(tmp_path):
    entered = threading.Event()

    def bake() -> None:
        with layers_in_use(tmp_path, "web"):
            entered.set()

    with layers_unused(tmp_path, "web") as free:
        assert free
        thread = threading.Thread(target=bake)
        thread.start()
        time.sleep(0.3)
        assert not entered.is_set()
    thread.join(timeout=10)
    assert entered.is_set()
