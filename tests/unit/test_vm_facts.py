"""How verify --vm judges the kernel facts a VM reports, and what the gate asks of each verification kind."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from bakery.catalog import open_catalog
from bakery.disks.layout import parse_layout
from bakery.errors import OperationError
from bakery.verify import gate, vm_facts
from bakery.verify.vm import user_data

pytestmark = pytest.mark.unit

LAYOUT = parse_layout(None, "")
GOOD = {
    "sysctl": [{"key": "kernel.randomize_va_space", "want": "2", "have": "2", "file": "/etc/sysctl.d/60-h.conf",
                "optional": False},
               {"key": "net.ipv4.tcp_syncookies", "want": "1", "have": "1", "file": "/etc/sysctl.d/60-h.conf",
                "optional": False},
               {"key": "kernel.unknown_knob", "want": "1", "have": None, "file": "/etc/sysctl.d/60-h.conf",
                "optional": True}],
    "audit": {"rc": 0, "status": "enabled 2\nfailure 1\npid 300", "error": "", "rules": 60},
    "apparmor": {"enabled": "Y", "lsm": "lockdown,capability,apparmor", "profiles": {"lsb_release": "enforce"}},
    "modules": [{"module": "sctp", "modprobe_rc": 1, "exists": True, "loaded": False, "message": "install"},
                {"module": "cramfs", "modprobe_rc": 1, "exists": False, "loaded": False, "message": ""}],
    "mounts": [{"target": "/", "options": "rw,relatime"},
               {"target": "/boot/efi", "options": "rw,nosuid,nodev,noexec,fmask=0077"},
               {"target": "/var", "options": "rw,nosuid,nodev"},
               {"target": "/var/log", "options": "rw,nosuid,nodev,noexec"},
               {"target": "/var/log/audit", "options": "rw,nosuid,nodev,noexec"},
               {"target": "/tmp", "options": "rw,nosuid,nodev,noexec"},
               {"target": "/home", "options": "rw,nosuid,nodev"}],
    "timesync": "active",
    "root_bytes": 3 * 2**30,
    "cmdline": "root=PARTUUID=x ro console=ttyS0 audit=1 audit_backlog_limit=8192",
}


def judged(facts) -> dict[str, object]:
    return {c.name: c for c in vm_facts.judge(facts, LAYOUT, 2**30, 2 * 2**30)}


def test_a_healthy_vm_passes_every_check():
    checks = judged(GOOD)
    assert all(c.passed for c in checks.values()), [c.message for c in checks.values() if not c.passed]
    assert set(checks) == {"vm-sysctl", "vm-audit", "vm-apparmor", "vm-modules", "vm-partitions", "vm-time-sync",
                           "vm-root-growth"}


@pytest.mark.parametrize(("change", "check", "message"), [
    (lambda f: f["sysctl"][0].update(have="1"), "vm-sysctl",
     "kernel.randomize_va_space is 1, not 2 as /etc/sysctl.d/60-h.conf sets it"),
    (lambda f: f["sysctl"][2].update(optional=False), "vm-sysctl", "kernel.unknown_knob (set in"),
    (lambda f: f["audit"].update(status="enabled 1"), "vm-audit", "'enabled 1', not 2"),
    (lambda f: f["audit"].update(rules=0), "vm-audit", "no audit rules are loaded"),
    (lambda f: f.update(cmdline="root=x ro"), "vm-audit", "audit=1 is not on the kernel command line"),
    (lambda f: f["apparmor"].update(enabled="N"), "vm-apparmor", "AppArmor is not enabled"),
    (lambda f: f["apparmor"]["profiles"].update(ping="complain"), "vm-apparmor", "profile ping is in complain mode"),
    (lambda f: f["modules"][0].update(modprobe_rc=0, loaded=True), "vm-modules",
     "module sctp loaded despite the image's modprobe.d"),
    (lambda f: f["mounts"].pop(5), "vm-partitions", "/tmp is not a separate mount"),
    (lambda f: f["mounts"][3].update(options="rw,nosuid,nodev"), "vm-partitions", "/var/log is mounted without noexec"),
    (lambda f: f.update(timesync="inactive"), "vm-time-sync", "systemd-timesyncd is inactive"),
    (lambda f: f.update(root_bytes=2**30), "vm-root-growth", "it did not grow"),
])
def test_each_fault_fails_its_check_naming_the_cause(change, check, message):
    facts = copy.deepcopy(GOOD)
    change(facts)
    checks = judged(facts)
    assert not checks[check].passed and message in checks[check].message
    assert all(c.passed for name, c in checks.items() if name != check)


def test_a_module_kept_out_by_install_bin_true_is_judged_by_whether_it_loaded():
    facts = copy.deepcopy(GOOD)
    facts["modules"][0].update(modprobe_rc=0, install="/bin/true")  # modprobe "succeeds" and loads nothing
    assert judged(facts)["vm-modules"].passed
    facts["modules"][0].update(loaded=True)
    assert "module sctp loaded" in judged(facts)["vm-modules"].message


def test_the_guest_script_runs_with_python_alone_and_prints_json():
    """It runs in the VM with the image's python3 and nothing else: here it must at least compile and import no
    bakery module."""
    source = vm_facts.GUEST_SCRIPT.read_text()
    assert "bakery" not in [line.split()[1].split(".")[0] for line in source.splitlines()
                            if line.startswith(("import ", "from "))]
    subprocess.run([sys.executable, "-m", "py_compile", str(vm_facts.GUEST_SCRIPT)], check=True)


def test_user_data_keeps_the_environment_and_sets_the_one_time_key_once():
    text = 'ENVIRONMENT="qa"\nBREAK_GLASS_SSH="false"\nLOG_LEVEL="info"\n'
    data = user_data(text, "ssh-ed25519 AAAAC3Nza bakery-verify-vm").decode()
    lines = data.splitlines()
    assert 'ENVIRONMENT="qa"' in lines and 'LOG_LEVEL="info"' in lines
    assert [line for line in lines if line.startswith("BREAK_GLASS_SSH=")] == ['BREAK_GLASS_SSH="true"']
    assert 'BREAK_GLASS_SSH_AUTHORIZED_KEY="ssh-ed25519 AAAAC3Nza bakery-verify-vm"' in lines
    assert 'BREAK_GLASS_SSH_SUDO="true"' in lines


@pytest.fixture
def catalog(tmp_path):
    cat = open_catalog(tmp_path)
    version = cat.reserve_version("web", "r", 1)
    cat.complete_version("web", version, image_ref="x", image_id="i", input_digest="d", provenance={}, layers=[])
    yield cat, version
    cat.close()


def record(cat, version, kind, passed, disk="a" * 64):
    cat.record_verification("web", version, env="qa", started="t", seconds=1.0, passed=passed, run_id="r",
                            summary="ok" if passed else "vm-boot: degraded", reports={"disk_sha256": disk}, kind=kind)


def record_disk(cat, version, sha):
    cat.record_disk("web", version, disk_format="raw", path=f"disks/web/{version}.raw", sha256=sha, size=1, allocated=1,
                    run_id="r", details={})


def test_the_gate_asks_for_the_newest_verification_of_every_kind_the_environment_requires(catalog):
    cat, version = catalog
    record_disk(cat, version, "a" * 64)
    record(cat, version, "container", True)
    assert gate.require_verified(cat, "web", version, required=("container",), force=False, env="qa") is False
    with pytest.raises(OperationError, match="has no vm verification.*--vm"):
        gate.require_verified(cat, "web", version, required=("container", "vm"), force=False, env="qa")
    record(cat, version, "vm", False)
    with pytest.raises(OperationError, match="failed its last vm verification \\(vm-boot: degraded\\)"):
        gate.require_verified(cat, "web", version, required=("container", "vm"), force=False, env="qa")
    assert gate.require_verified(cat, "web", version, required=("container", "vm"), force=True, env="qa") is True
    record(cat, version, "vm", True)
    assert gate.require_verified(cat, "web", version, required=("container", "vm"), force=False, env="qa") is False
    record(cat, version, "container", False)  # a newer failed container verification closes the gate again
    with pytest.raises(OperationError, match="failed its last verification"):
        gate.require_verified(cat, "web", version, required=("container", "vm"), force=False, env="qa")
    assert gate.require_verified(cat, "web", version, required=(), force=False, env="qa") is False


def test_a_vm_verification_vouches_only_for_the_disk_bytes_it_booted(catalog):
    cat, version = catalog
    with pytest.raises(OperationError, match="has no disk any more"):
        record(cat, version, "vm", True)
        gate.require_verified(cat, "web", version, required=("vm",), force=False, env="qa")
    record_disk(cat, version, "a" * 64)
    assert gate.require_verified(cat, "web", version, required=("vm",), force=False, env="qa") is False
    record_disk(cat, version, "b" * 64)  # rebuilt since (another --size, another e2fsprogs): other bytes
    with pytest.raises(OperationError, match=f"disk is sha256 {'b' * 64} now, not the {'a' * 64}.*--vm again"):
        gate.require_verified(cat, "web", version, required=("vm",), force=False, env="qa")
    assert gate.require_verified(cat, "web", version, required=("vm",), force=True, env="qa") is True
