"""Inputs every layer shares: the project's ansible.cfg; a non-UTF-8 YAML file is one line."""

from pathlib import Path

import pytest

from bakery import layers
from bakery.config import Project, load_yaml
from bakery.errors import ConfigError
from bakery.layers import plan_layers
from tests.unit.test_role_paths import playbook, role

pytestmark = pytest.mark.unit


def keys(proj: Path) -> list[str]:
    return [p.key for p in plan_layers(Project(proj).image("img"), "sha256:base", {}, collections={})]


def test_the_projects_ansible_cfg_is_in_every_layer_key(proj, monkeypatch):
    role(proj / "roles" / "other")
    playbook(proj, "    - first\n    - other\n")
    seen = []
    real = layers.sha256_json
    monkeypatch.setattr(layers, "sha256_json", lambda data: seen.append(data) or real(data))
    without = keys(proj)
    assert all(d["ansible_cfg"] is None for d in seen if "parent" in d)
    (proj / "ansible.cfg").write_text("[defaults]\nhash_behaviour = merge\n")
    with_cfg = keys(proj)
    (proj / "ansible.cfg").write_text("[defaults]\njinja2_native = true\n")
    changed = keys(proj)
    assert all(a != b != c for a, b, c in zip(without, with_cfg, changed, strict=True))


def test_a_file_that_is_not_utf8_is_one_config_error_line(tmp_path):
    path = tmp_path / "vars.yml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not UTF-8 text \(byte 9\); save it as UTF-8$"):
        load_yaml(path)
