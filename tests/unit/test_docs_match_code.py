"""The docs say what the code and the CI definitions do: every refresh flag bake.py accepts (refresh_options) is
named where the docs list them (the deploy section of docs/commands.md, the preferences table of
docs/environments.md), and the walkthrough describes the CI definitions as they are."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit


def _refresh_flags() -> dict[str, str]:
    """{refresh: key: the flag as the docs write it (--[no-]x for a boolean pair)}."""
    from bakery.cli.common import REFRESH_FLAGS
    from bakery.cli.fleet import deploy

    flags = {}
    for param in deploy.params:
        if param.name in REFRESH_FLAGS:
            flag = max(param.opts, key=len)
            flags[param.name] = f"--[no-]{flag[2:]}" if param.secondary_opts else flag
    assert set(flags) == set(REFRESH_FLAGS)
    return flags


def test_commands_md_lists_every_refresh_flag():
    text = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    listed = re.search(r"The refresh flags \((.*?)\) override", text, re.S)
    assert listed, "docs/commands.md: the deploy section's sentence 'The refresh flags (...) override' is gone"
    named = set(re.findall(r"`([^`]+)`", listed.group(1)))
    assert set(_refresh_flags().values()) == named


def test_environments_md_has_a_row_for_every_refresh_flag():
    text = (REPO / "docs" / "environments.md").read_text(encoding="utf-8")
    for key, flag in _refresh_flags().items():
        assert re.search(rf"^\|.*`{key}` / `{re.escape(flag)}[ `]", text, re.M), (key, flag)


def test_the_walkthrough_describes_the_ci_definitions_as_they_are():
    """docs/walkthrough.md's "CI definitions": the runners, clean checkouts and nothing uploaded of the GitHub workflow,
    and the Debian 12 image of the CodeBuild projects."""
    import yaml

    text = (REPO / "docs" / "walkthrough.md").read_text(encoding="utf-8")
    section = text.split("## CI definitions (`ci/`)", 1)[1].split("\n## ", 1)[0]
    workflow = yaml.safe_load((REPO / "ci" / "github" / "workflows" / "bakery.yml").read_text(encoding="utf-8"))
    labels = {job["runs-on"][-1] for job in workflow["jobs"].values()}
    assert labels == {"bakery-qa", "bakery-prod"} and all(f"`{label}`" in section for label in labels)
    assert "upload nothing" in section and "--target aws" in section
    for stale in ("kept workspace", "as an\n  artifact", "label `bakery`)", "standard:"):
        assert stale not in section, stale
    pipeline = (REPO / "ci" / "aws" / "codepipeline.yaml").read_text(encoding="utf-8")
    image = re.search(r"BuildImage:\n(?:.*\n)*?\s+Default: (\S+)", pipeline).group(1)
    assert f"`{image}`" in section and "privileged" in section
