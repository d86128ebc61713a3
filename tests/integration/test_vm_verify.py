"""The example image as EC2 will boot it: `bake.py disk`, then `verify --vm` under emulation, on one shared disk.

A VM boot costs a minute or more under TCG, so the module boots few: the example image's verification (two
boots: with a NIC, and with none) and one image with planted faults that only a kernel shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bakery import podman
from bakery.catalog import open_catalog
from bakery.verify import gate
from tests.conftest import BAKE, REPO, bake, init_repo
from tests.integration.conftest import record_bake_run

pytestmark = pytest.mark.integration

GIB = 1024 ** 3
VM_CHECKS = {"vm-disk-digest", "vm-boot", "testinfra", "vm-health", "vm-sysctl", "vm-audit", "vm-apparmor",
             "vm-modules", "vm-partitions", "vm-time-sync", "vm-root-growth", "vm-offline-boot"}


@pytest.fixture(autouse=True)
def emulation(monkeypatch):
    """Tests run under software emulation: /dev/kvm exists on these machines but a KVM guest hangs."""
    monkeypatch.setenv("BAKERY_VM_ACCEL", "tcg")


@pytest.fixture(scope="module")
def webapp_disk(example_project, webapp_image):
    out = bake(example_project, "disk", f"webapp:{webapp_image['version']}", "--json", timeout=900)
    assert out.rc == 0, out.stderr
    return out.json


def qemu_of(run_dir: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if run_dir in line]


def test_the_disk_is_reproducible_cached_and_small(example_project, webapp_image, webapp_disk):
    version = webapp_image["version"]
    again = bake(example_project, "disk", f"webapp:{version}", "--json")
    assert again.rc == 0 and again.json["cached"] is True and again.json["sha256"] == webapp_disk["sha256"]
    first = Path(webapp_disk["path"])
    kept = first.with_name(first.name + ".first")
    os.rename(first, kept)
    try:
        rebuilt = bake(example_project, "disk", f"webapp:{version}", "--json", timeout=900)
        assert rebuilt.rc == 0 and rebuilt.json["cached"] is False
        assert rebuilt.json["sha256"] == webapp_disk["sha256"]  # the same version gives the same bytes
    finally:
        kept.unlink()
    assert rebuilt.json["allocated"] <= GIB, f"{rebuilt.json['allocated'] / GIB:.2f} GiB allocated"
    mounts = [p["mount"] for p in rebuilt.json["partitions"]]
    assert mounts == ["/boot/efi", "/var", "/var/log", "/var/log/audit", "/tmp", "/home", "/"]
    assert "audit=1" in rebuilt.json["kernel_cmdline"] and "console=ttyS0,115200n8" in rebuilt.json["kernel_cmdline"]
    shown = bake(example_project, "show", f"webapp:{version}", "--json").json
    assert shown["provenance"]["disks"]["raw"] == f"sha256:{webapp_disk['sha256']}"


def test_vm_verify_of_the_example_image_passes_with_the_kernel_level_checks(example_project, webapp_image,
                                                                           webapp_disk):
    version = webapp_image["version"]
    out = bake(example_project, "verify", f"webapp:{version}", "--vm", "--env", "qa", "--json", timeout=2400)
    assert out.rc == 0, out.stderr[-3000:] + out.stdout[-3000:]
    checks = {c["name"]: c for c in out.json["checks"]}
    assert VM_CHECKS <= set(checks), sorted(VM_CHECKS - set(checks))
    assert all(c["passed"] for c in checks.values()), [c for c in checks.values() if not c["passed"]]
    assert "enabled 2" in checks["vm-audit"]["output"]
    assert "tests/images/test_webapp.py" in checks["testinfra"]["output"]
    assert "TCG" in out.stderr  # the output says which accelerator ran

    run_dir = Path(out.json["reports"]["junit"]).parent
    assert qemu_of(str(run_dir)) == []
    assert not list(run_dir.rglob("overlay.qcow2")) and not (run_dir / "ssh").exists()  # nothing left behind
    assert (run_dir / "vm-online" / "console.log").stat().st_size > 0
    facts = json.loads((run_dir / "vm-facts.json").read_text())
    assert {m["module"] for m in facts["modules"] if m["exists"]} >= {"sctp", "dccp"}

    catalog = open_catalog(example_project / ".bakery")
    newest = gate.latest_verification(catalog, "webapp", version, "vm")
    assert newest is not None and newest["passed"] and newest["kind"] == "vm" and newest["env"] == "qa"
    assert gate.require_verified(catalog, "webapp", version, required=("vm",), force=False, env="qa") is False


def sabotaged_project(example_project: Path, root: Path) -> Path:
    """A copy of the example project whose webapp image gets one more role, which plants three faults. Its
    catalog and artifacts come along, so only the planting role is baked (the other layers are cached: a layer's
    key names its image, so the image keeps its name)."""
    shutil.copytree(example_project, root, ignore=shutil.ignore_patterns(".git", "runs", "disks", "envs"))
    shutil.copytree(REPO / "tests" / "fixtures" / "vm" / "sabotage", root / "roles" / "sabotage")
    # without the roles' testinfra tests (the example image's verification runs them; here they would add minutes
    # of emulated SSH round trips and find nothing new); Molecule files are not part of a layer's key
    for tests in (root / "roles").glob("*/molecule/default/tests"):
        shutil.rmtree(tests)
    shutil.rmtree(root / "tests" / "images")
    plays = yaml.safe_load((root / "playbooks" / "webapp.yml").read_text())
    plays[0]["roles"].append({"role": "sabotage"})
    (root / "playbooks" / "webapp.yml").write_text(yaml.safe_dump(plays))
    init_repo(root, "The example project with a sabotaged webapp image")
    return root


def test_faults_only_a_kernel_shows_fail_the_vm_verify_naming_each_cause(example_project, webapp_image, tmp_path):
    root = sabotaged_project(example_project, tmp_path / "sabotaged")
    built = bake(root, "build", "webapp", "--json", timeout=1200)
    assert built.rc == 0, built.stderr
    record_bake_run(built.json["run_id"])
    assert [(la["role"], la["cached"]) for la in built.json["layers"]][-2:] == [("webapp", True), ("sabotage", False)]
    try:
        out = bake(root, "verify", "webapp", "--vm", "--json", timeout=2400)
    finally:
        podman.remove_image(built.json["ref"])  # this copy's webapp version, not the example project's
    assert out.rc == 1, out.stderr[-3000:]
    checks = {c["name"]: c for c in out.json["checks"]}
    assert "planted-boot-failure.service" in checks["vm-boot"]["message"]
    assert "kernel.randomize_va_space is 1, not 2" in checks["vm-sysctl"]["message"]
    assert "module sctp loaded" in checks["vm-modules"]["message"]
    assert checks["vm-partitions"]["passed"] and checks["vm-audit"]["passed"]  # the rest of the image is fine
    assert checks["testinfra"]["skipped"] and checks["vm-offline-boot"]["skipped"]
    assert "verification of webapp" in out.stderr and "failed" in out.stderr
    catalog = open_catalog(root / ".bakery")
    newest = gate.latest_verification(catalog, "webapp", built.json["version"], "vm")
    assert newest is not None and newest["passed"] is False
    with pytest.raises(Exception, match="failed its last vm verification"):
        gate.require_verified(catalog, "webapp", built.json["version"], required=("vm",), force=False, env="qa")
    assert qemu_of(str(root)) == []


def started(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(BAKE), "--project", str(project), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_until(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout} s")


def test_kill_9_of_disk_and_of_verify_vm_leaves_nothing_the_next_command_keeps(example_project, webapp_image,
                                                                               webapp_disk):
    version = webapp_image["version"]
    disks = example_project / ".bakery" / "disks"
    first = Path(webapp_disk["path"])
    kept = first.with_name(first.name + ".kept")
    os.rename(first, kept)  # the recorded disk is missing: the next `disk` rebuilds it
    try:
        building = started(example_project, "disk", f"webapp:{version}")
        work = wait_until(lambda: list(disks.glob(".work-*/fs")), 300)[0].parent  # past unpacking, mid-build
        building.kill()
        building.wait()
        assert work.exists() and not first.exists()  # no half disk is ever listed
        dry = bake(example_project, "gc", "--dry-run", "--json")
        assert dry.rc == 0 and str(work) in dry.json["disks"]
        assert bake(example_project, "gc").rc == 0 and not work.exists()
    finally:
        os.replace(kept, first)

    catalog = open_catalog(example_project / ".bakery")
    recorded = len(catalog.verifications("webapp", version))
    verifying = started(example_project, "verify", f"webapp:{version}", "--vm")
    wait_until(lambda: qemu_of(str(example_project / ".bakery" / "runs")), 120)
    verifying.kill()
    verifying.wait()
    wait_until(lambda: not qemu_of(str(example_project / ".bakery" / "runs")), 30)  # qemu dies with bakery
    cleaned = bake(example_project, "gc", "--json")
    assert cleaned.rc == 0
    assert not list((example_project / ".bakery" / "runs").rglob("overlay.qcow2"))
    assert len(catalog.verifications("webapp", version)) == recorded  # nothing recorded half-done
