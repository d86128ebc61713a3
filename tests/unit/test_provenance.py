import os
from pathlib import Path

import pytest

from bakery.provenance import Provenance, git_facts, parse_release_file, sanitize_tag_value, tree_digest
from tests.conftest import git, init_repo

pytestmark = pytest.mark.unit


def test_sanitize_removes_control_characters_and_collapses_space():
    assert sanitize_tag_value("Fix login\n\nBody line\twith tab\x1b[31m") == "Fix login Body line with tab 31m"


def test_sanitize_drops_characters_aws_tags_refuse():
    assert sanitize_tag_value('Merge "feature" (#12), then <deploy>!') == "Merge feature 12 then deploy"
    assert sanitize_tag_value("keep: _ . : / = + - @ ünïcode 42") == "keep: _ . : / = + - @ ünïcode 42"


def test_sanitize_cuts_to_255_characters():
    value = sanitize_tag_value("x" * 1000)
    assert len(value) == 255


def make_tree(root: Path) -> Path:
    (root / "tasks").mkdir(parents=True)
    (root / "tasks" / "main.yml").write_text("- name: a\n")
    (root / "molecule" / "default").mkdir(parents=True)
    (root / "molecule" / "default" / "molecule.yml").write_text("driver: {}\n")
    return root


def test_tree_digest_changes_with_content_new_files_and_mode(tmp_path):
    root = make_tree(tmp_path / "role")
    first = tree_digest(root)
    assert tree_digest(root) == first
    (root / "tasks" / "main.yml").write_text("- name: b\n")
    second = tree_digest(root)
    assert second != first
    (root / "files").mkdir()
    (root / "files" / "new.txt").write_text("x")
    third = tree_digest(root)
    assert third != second
    os.chmod(root / "files" / "new.txt", 0o755)
    assert tree_digest(root) != third


def test_tree_digest_ignores_molecule_and_caches(tmp_path):
    root = make_tree(tmp_path / "role")
    before = tree_digest(root)
    (root / "molecule" / "default" / "molecule.yml").write_text("changed: true\n")
    (root / "tasks" / "__pycache__").mkdir()
    (root / "tasks" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert tree_digest(root) == before


def test_renaming_a_file_changes_the_digest(tmp_path):
    root = make_tree(tmp_path / "role")
    before = tree_digest(root)
    (root / "tasks" / "main.yml").rename(root / "tasks" / "other.yml")
    assert tree_digest(root) != before


def provenance(**overrides):
    fields = dict(image="webapp", version="20261128.001", git_commit="abc123", git_message="Fix it",
                  git_branch="main", git_dirty=False, build_time="2026-11-28T00:00:00Z", base_image="b:1",
                  base_digest="sha256:aa", input_digest="sha256:bb", bakery_version="0.1.0",
                  roles={"base": "sha256:cc", "webapp": "sha256:dd"})
    fields.update(overrides)
    return Provenance(**fields)


def test_release_file_round_trips_every_fact():
    facts = parse_release_file(provenance().release_file())
    assert facts["IMAGE_VERSION"] == "20261128.001"
    assert facts["GIT_COMMIT"] == "abc123"
    assert facts["GIT_DIRTY"] == "false"
    assert facts["ROLES"] == "base=sha256:cc webapp=sha256:dd"


def test_labels_carry_standard_oci_keys():
    labels = provenance().labels()
    assert labels["org.opencontainers.image.revision"] == "abc123"
    assert labels["org.opencontainers.image.version"] == "20261128.001"
    assert labels["io.bakery.input-digest"] == "sha256:bb"


def test_git_facts_of_a_checkout(tmp_path):
    (tmp_path / "f").write_text("1")
    commit = init_repo(tmp_path, "First line\n\nSecond paragraph with \"quotes\"")
    facts = git_facts(tmp_path)
    assert facts.commit == commit
    assert facts.branch == "main"
    assert facts.message == "First line Second paragraph with quotes"
    assert facts.dirty is False
    (tmp_path / "f").write_text("2")
    assert git_facts(tmp_path).dirty is True
    git(tmp_path, "checkout", "-q", "-b", "feature/x")
    assert git_facts(tmp_path).branch == "feature/x"


def test_git_facts_outside_a_checkout(tmp_path):
    facts = git_facts(tmp_path)
    assert facts.commit == "unknown"


def test_role_documentation_does_not_change_the_digest(tmp_path):
    root = make_tree(tmp_path / "role")
    (root / "README.md").write_text("# role\n")
    before = tree_digest(root)
    (root / "README.md").write_text("# role, better documented\n")
    assert tree_digest(root) == before
    (root / "templates").mkdir()
    (root / "templates" / "README.md").write_text("a template named README.md is content\n")
    assert tree_digest(root) != before
