"""bake.py verify on real instances: the example image passes; planted secrets, boot failures and installs at boot
fail."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bakery.catalog import open_catalog
from bakery.errors import OperationError
from bakery.verify import gate
from tests.conftest import bake
from tests.integration.conftest import containers
from tests.integration.test_live_params import param_set

pytestmark = pytest.mark.integration


def verify_instances_left(image: str) -> list[str]:
    """The verify instances of `image` still there (the VM worker verifies other images meanwhile)."""
    return containers("io.bakery.verify", f"io.bakery.image={image}")


def build(project, image):
    out = bake(project, "build", image, "--json")
    assert out.rc == 0, out.stderr
    return out.json


def test_example_image_passes_and_leaves_nothing(example_project, webapp_image):
    assert param_set(example_project, "qa", "DATABASE_PASSWORD", "qa-db-secret").returncode == 0  # qa references it
    out = bake(example_project, "verify", f"webapp:{webapp_image['version']}", "--env", "qa", "--json")
    assert out.rc == 0, out.stderr + out.stdout
    result = out.json
    assert result["passed"] is True
    names = {c["name"]: c for c in result["checks"]}
    assert {"boot", "testinfra", "offline-boot", "offline-health", "secret-scan", "apt-leftovers",
            "package-report"} <= set(names)
    assert "passed" in names["testinfra"]["output"] and "tests/images/test_webapp.py" in names["testinfra"]["output"]
    assert containers(f"io.bakery.verify={result['run_id']}") == []

    junit = ET.parse(result["reports"]["junit"]).getroot()
    assert junit.tag == "testsuites" and int(junit.get("tests")) >= 10 and junit.get("failures") == "0"
    packages = json.loads(Path(result["reports"]["packages"]).read_text())
    assert "python3" in packages["packages"] and packages["diff"]["added"]

    shown = bake(example_project, "show", f"webapp:{webapp_image['version']}", "--json").json
    assert shown["verifications"][0]["passed"] is True and shown["verifications"][0]["env"] == "qa"
    catalog = open_catalog(example_project / ".bakery")
    assert gate.require_verified(catalog, "webapp", webapp_image["version"], required=True, force=False,
                                 env="qa") is False


def test_planted_private_key_fails_and_names_the_path(project):
    image = build(project, "planted")
    out = bake(project, "verify", "planted")
    assert out.rc == 1
    assert "/etc/planted/deploy_key:1 (private-key)" in out.stderr
    assert verify_instances_left("planted") == []
    # re-verification is recorded too; the gate refuses the failed version, --force opens it
    assert bake(project, "verify", "planted").rc == 1
    catalog = open_catalog(project / ".bakery")
    assert [v["passed"] for v in catalog.verifications("planted", image["version"])] == [False, False]
    with pytest.raises(OperationError, match="failed its last verification"):
        gate.require_verified(catalog, "planted", image["version"], required=True, force=False, env="qa")
    assert gate.require_verified(catalog, "planted", image["version"], required=True, force=True, env="qa") is True


def test_allowlist_with_a_reason_clears_a_false_positive(project):
    build(project, "planted")
    (project / "verify-allowlist.yml").write_text(
        "- path: etc/planted/deploy_key\n  rule: private-key\n  reason: test fixture key, not used anywhere\n")
    assert bake(project, "verify", "planted").rc == 0
    (project / "verify-allowlist.yml").write_text("- path: etc/planted/deploy_key\n  rule: private-key\n")
    out = bake(project, "verify", "planted")
    assert out.rc == 2 and "needs non-empty 'path', 'rule' and 'reason'" in out.stderr


def test_service_failing_at_boot_fails_and_names_the_unit(project):
    build(project, "badunit")
    out = bake(project, "verify", "badunit")
    assert out.rc == 1
    assert "degraded" in out.stderr and "broken-at-boot.service" in out.stderr
    assert verify_instances_left("badunit") == []


def test_install_at_boot_fails_the_offline_check(project):
    build(project, "bootinstall")
    out = bake(project, "verify", "bootinstall", "--json")
    assert out.rc == 1
    checks = {c["name"]: c for c in out.json["checks"]}
    assert checks["boot"]["passed"] is True  # with a network the install works...
    assert checks["offline-boot"]["passed"] is False  # ...without one the server does not come up
    assert "install-at-boot.service" in checks["offline-boot"]["message"]


def test_gate_refuses_an_unverified_version(project):
    image = build(project, "sample")
    catalog = open_catalog(project / ".bakery")
    with pytest.raises(OperationError, match="has no verification"):
        gate.require_verified(catalog, "sample", image["version"], required=True, force=False, env="qa")
    assert gate.require_verified(catalog, "sample", image["version"], required=False, force=False, env="dev") is False


def test_unknown_version_is_a_usage_error(project):
    out = bake(project, "verify", "sample:20000101.001")
    assert out.rc == 2 and "unknown version" in out.stderr
