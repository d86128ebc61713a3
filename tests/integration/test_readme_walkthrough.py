"""The documented commands that need podman and are cheap enough to run for real: `./bake.py base`.

README.md and docs/*.md (docs/commands.md shows `base`; docs/walkthrough.md is the long walkthrough)
are otherwise checked by tests/unit/test_readme.py (parsed against the real CLI, and run by the
integration tests of each command); running the whole walkthrough would take far longer than
make test's budget allows.
"""

from __future__ import annotations

import pytest

from tests.conftest import bake

pytestmark = pytest.mark.integration


def test_base_reuses_the_machine_base(project, base_image):
    out = bake(project, "base", "--json")
    assert out.rc == 0, out.stderr
    assert out.json["reused"] is True and out.json["ref"] == base_image.ref and out.json["release"] == "bookworm"
    again = bake(project, "base")
    assert again.rc == 0 and again.stdout.startswith(f"reused {base_image.ref}")
