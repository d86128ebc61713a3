"""bake.py show prints requirements as the label does: name=value pairs, not a Python dict."""

import pytest

from bakery.cli.images import provenance_lines

pytestmark = pytest.mark.unit


def test_requirements_and_artifacts_print_as_name_value_pairs():
    lines = provenance_lines({"version": "20261128.001", "roles": {"base": "sha256:aa"},
                              "artifacts": {"webapp": "1.2.3"},
                              "requirements": {"author.web": "1.4.0@0123456789ab sha256:bb", "acme.tools": "2.0.1"}})
    assert lines == ["  version         20261128.001", "  artifacts       webapp=1.2.3",
                     "  requirements    author.web=1.4.0@0123456789ab sha256:bb acme.tools=2.0.1"]
