"""KVM when it actually works, software emulation (TCG) otherwise: probe rather than trust /dev/kvm.

On some hosts /dev/kvm exists and opens, but a KVM guest stops at its first instructions ("KVM internal
error", emulation failure) and never prints anything. So the probe boots the UEFI firmware alone under KVM:
when KVM works it writes to its serial console well within a second; when it does not, nothing comes. The
choice is made once per process. BAKERY_VM_ACCEL=kvm|tcg skips the probe.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bakery.disks import qemu_host, tied_process
from bakery.errors import ConfigError

OVERRIDE = "BAKERY_VM_ACCEL"
KVM_DEVICE = Path("/dev/kvm")
PROBE_SECONDS = 5.0
KVM_FAILURE = "KVM internal error"


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg", as qemu's -machine accel= takes it
    reason: str  # one line to print: which, and why


def tcg(why: str) -> Accel:
    return Accel("tcg", f"TCG (software emulation): {why}")


def choose() -> Accel:
    """The accelerator for this process's VMs: BAKERY_VM_ACCEL when set, else the (cached) probe's answer."""
    wanted = os.environ.get(OVERRIDE)
    if wanted is None or wanted == "":
        return probed()
    if wanted == "kvm":
        return Accel("kvm", f"KVM: {OVERRIDE}=kvm")
    if wanted == "tcg":
        return tcg(f"{OVERRIDE}=tcg")
    raise ConfigError(f"{OVERRIDE}={wanted[:40]!r} is not an accelerator: set it to kvm or tcg, or unset it "
                      f"to let bakery probe KVM")


@functools.cache
def probed() -> Accel:
    if not KVM_DEVICE.exists():
        return tcg(f"{KVM_DEVICE} is absent")
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return tcg(f"no read/write access to {KVM_DEVICE} (add this user to the kvm group)")
    return probe_kvm(PROBE_SECONDS)


def probe_kvm(seconds: float) -> Accel:
    """Boot the firmware alone under KVM for at most `seconds`: any serial output means KVM works."""
    firmware = qemu_host.firmware()
    qemu = qemu_host.qemu_system()
    with tempfile.TemporaryDirectory(prefix="bakery-kvm-probe-") as tmp:
        work = Path(tmp)
        shutil.copyfile(firmware.vars_template, work / "vars.fd")
        console, output = work / "console.log", work / "qemu.log"
        console.touch()
        argv = [qemu, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "128", "-nodefaults", "-display", "none",
                "-monitor", "none", "-nic", "none", "-no-reboot",
                "-drive", f"if=pflash,format=raw,readonly=on,file={firmware.code}",
                "-drive", "if=pflash,format=raw,file=vars.fd", "-serial", "file:console.log"]
        started = time.monotonic()
        process = tied_process.start(argv, work, output)
        try:
            while (elapsed := time.monotonic() - started) < seconds:
                if console.stat().st_size > 0:
                    return Accel("kvm", f"KVM: probe booted firmware in {elapsed:.1f} s")
                if process.poll() is not None or KVM_FAILURE in output.read_text(errors="replace"):
                    return tcg(f"{KVM_DEVICE} present but KVM failed: {_first_line(output)}")
                time.sleep(0.05)
        finally:
            tied_process.end(process)
    return tcg(f"{KVM_DEVICE} present but a probe guest made no progress in {seconds:g} s")


def _first_line(output: Path) -> str:
    """qemu's first error line, without the warnings that precede it."""
    lines = [line.strip() for line in output.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "warning:" not in line]
    return (errors or lines or ["qemu exited without a message"])[0][:160]
