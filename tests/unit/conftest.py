"""Fixtures shared by the unit tests."""

import shutil

import pytest

from tests.conftest import REPO


@pytest.fixture
def inventory_project(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    shutil.copy(REPO / "bakery.yml", root / "bakery.yml")
    shutil.copytree(REPO / "inventories", root / "inventories")
    return root
