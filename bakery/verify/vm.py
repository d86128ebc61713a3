"""`bake.py verify --vm`: boot the version's bootable disk as a UEFI virtual machine, the way EC2 will.

The disk booted is the one `bake.py disk` recorded, checked against its recorded sha256 first: what passes here
is byte for byte what is published. The VM gets its runtime config the EC2 way, as UserData from a local IMDSv2
endpoint, plus a one-time key that opens the image's own break-glass SSH for this boot. Over it run the image's
testinfra suite and every baked role's tests, the health check (through a forwarded port) and the kernel-level
facts a container cannot show. A second boot with no NIC at all must reach multi-user without a failed unit.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from typing import Any

from bakery.catalog import Catalog, SqliteCatalog
from bakery.config import Project
from bakery.disks.builder import DiskResult
from bakery.disks.imds import ImdsEndpoint
from bakery.disks.layout import ESP_MOUNT, GIB, Layout, Partition
from bakery.disks.qemu import VirtualMachine
from bakery.errors import ConfigError, OperationError
from bakery.progress import Progress
from bakery.provenance import utc_now
from bakery.runs import Run
from bakery.signals import cancellable
from bakery.verify import junit, vm_facts, vm_ssh
from bakery.verify.runner import HEALTH_TIMEOUT, Verifier, VerifyResult

BOOT_TIMEOUT = 420  # first boot under software emulation: firmware, kernel, growfs, host keys
EXTRA_VOLUME = 2 * GIB  # the VM's volume is this much larger than the disk: the root must grow into it
VERIFY_KEYS = ("BREAK_GLASS_SSH", "BREAK_GLASS_SSH_AUTHORIZED_KEY", "BREAK_GLASS_SSH_SUDO")
# systemd's console lines for a unit that failed, a mount that failed, and a unit whose dependency failed
FAILED_UNIT = re.compile(r"\[FAILED\] (?:Failed to start|Failed to mount|Dependency failed for) (\S+)")


def disk_layout(disk: DiskResult, fallback: Layout) -> Layout:
    """The partitions the booted disk was built with (its record), not today's bakery.yml."""
    recorded = [p for p in disk.details.get("partitions", []) if p["mount"] not in ("/", ESP_MOUNT)]
    if not recorded:
        return fallback
    return Layout(tuple(Partition(p["mount"], p["bytes"], tuple(p["options"])) for p in recorded))


def user_data(runtime_text: str, public_key: str) -> bytes:
    """The environment's runtime config without the keys verify sets itself, plus the one-time SSH opening, with
    references left unresolved (BAKERY_PARAMS="off"): a throwaway VM never gets an environment's secrets."""
    kept = [line for line in runtime_text.splitlines()
            if line.split("=", 1)[0].strip() not in (*VERIFY_KEYS, "BAKERY_PARAMS")]
    return ("\n".join(kept) + "\n" + vm_ssh.runtime_lines(public_key) + 'BAKERY_PARAMS="off"\n').encode("utf-8")


class VmVerifier(Verifier):
    """One `verify --vm` run of one version's disk."""

    def verify_vm(self, record: dict[str, Any], disk: DiskResult, layout: Layout, runtime_text: str,
                  health: dict[str, Any], env_name: str | None) -> VerifyResult:
        started_at, started = utc_now(), time.monotonic()
        image, version = record["image"], record["version"]
        self.progress.note(f"verify --vm {image}:{version}: {disk.path} (run {self.run.id})")
        with cancellable(), ExitStack() as cleanup:
            if self._check_digest(disk):
                self._online(cleanup, record, disk, layout, runtime_text, health, env_name)
                if any(c.name == "vm-boot" and c.passed for c in self.checks):
                    self._offline(disk)
                else:  # a system that does not come up with its network will not without: save the boot
                    self._add(junit.Check("vm-offline-boot", False, 0.0, skipped=True,
                                          message="not run: the boot with a network already failed"))
        return self._finish(record, started_at, started, env_name, disk)

    def _check_digest(self, disk: DiskResult) -> bool:
        from bakery.disks.assemble import sha256_file

        t = time.monotonic()
        have = sha256_file(disk.path)
        ok = have == disk.sha256
        self._add(junit.Check("vm-disk-digest", ok, time.monotonic() - t,
                              "" if ok else f"{disk.path} has sha256 {have}, not the recorded {disk.sha256}: "
                                            "rebuild it with bake.py disk",
                              f"sha256 {have} as recorded" if ok else ""))
        return ok

    def _online(self, cleanup: ExitStack, record: dict[str, Any], disk: DiskResult, layout: Layout,
                runtime_text: str, health: dict[str, Any], env_name: str | None) -> None:
        ssh_dir = self.run.path / "ssh"
        cleanup.callback(shutil.rmtree, ssh_dir, True)
        key, public = vm_ssh.make_key(ssh_dir)
        data = user_data(runtime_text, public)
        imds = cleanup.enter_context(ImdsEndpoint(data, f"i-{self.run.id.rsplit('-', 1)[-1]}0000000000",
                                                  "local", f"{record['image']}:{record['version']}"))
        port = int(health.get("port", 0))
        vm = VirtualMachine(disk.path, self.run.path / "vm-online", forwards=(22, port) if port else (22,),
                            imds_port=imds.port, disk_size=disk.bytes + EXTRA_VOLUME)
        with vm:
            self.progress.note(f"  accelerator: {vm.accel_reason}")
            shell = vm_ssh.GuestShell(ssh_dir, key, vm.ports[22])
            cleanup.callback(shell.close)
            if not self._boot(vm, shell):
                return
            self._run_testinfra(record["image"], record["version"], record, "", env_name,
                                hosts=(f"--hosts={shell.testinfra_host}", f"--ssh-config={shell.config}", "--sudo"))
            if port:
                self._health_from_host(vm.ports[port], health)
            self._kernel_facts(shell, layout, disk)

    def _boot(self, vm: VirtualMachine, shell: vm_ssh.GuestShell) -> bool:
        """The vm-boot check; True when the break-glass SSH answers, so that the other checks can still run (and
        name more causes) on a system that came up degraded."""
        t = time.monotonic()
        last = shell.wait_reachable(BOOT_TIMEOUT)
        if last:
            failed = sorted(set(FAILED_UNIT.findall(vm.console_text())))
            self._add(junit.Check("vm-boot", False, time.monotonic() - t,
                                  f"no break-glass SSH within {BOOT_TIMEOUT} s ({last})"
                                  + (f"; failed units: {', '.join(failed)}" if failed else "")
                                  + f"; console log {vm.console_log}", vm.console_tail(40)))
            return False
        state = shell.run("systemctl is-system-running --wait", sudo=False, timeout=BOOT_TIMEOUT).stdout.strip()
        seconds = time.monotonic() - t
        if state == "running":
            self._add(junit.Check("vm-boot", True, seconds, output=f"running after {seconds:.0f} s ({vm.accel})"))
            return True
        units = shell.run("systemctl --failed --no-legend --plain", sudo=False).stdout.split("\n")
        names = [u.split()[0] for u in units if u.strip()]
        journal = shell.run("journalctl --no-pager -n 40 " + " ".join(f"-u {u}" for u in names)).stdout if names \
            else ""
        self._add(junit.Check("vm-boot", False, seconds, f"systemd is '{state}'"
                              + (f"; failed units: {', '.join(names)}" if names else "")
                              + f" (console log {vm.console_log})", journal + "\n" + vm.console_tail(40)))
        return True

    def _health_from_host(self, host_port: int, health: dict[str, Any]) -> None:
        url = f"http://127.0.0.1:{host_port}{health.get('path', '/health')}"
        t, last = time.monotonic(), ""
        while time.monotonic() - t < HEALTH_TIMEOUT:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback, port of our VM
                    if answer.status == 200:
                        self._add(junit.Check("vm-health", True, time.monotonic() - t,
                                              output=f"guest port {health.get('port')} answered 200 through "
                                                     f"127.0.0.1:{host_port}"))
                        return
                    last = str(answer.status)
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "code", "") or exc)
            time.sleep(1)
        self._add(junit.Check("vm-health", False, time.monotonic() - t,
                              f"{health.get('path')} on guest port {health.get('port')} did not answer 200 within "
                              f"{HEALTH_TIMEOUT} s (last: {last})"))

    def _kernel_facts(self, shell: vm_ssh.GuestShell, layout: Layout, disk: DiskResult) -> None:
        t = time.monotonic()
        proc = shell.run("python3 -", stdin=vm_facts.GUEST_SCRIPT.read_text(encoding="utf-8"))
        (self.run.path / "vm-facts.json").write_text(proc.stdout or "{}", encoding="utf-8")
        try:
            facts = json.loads(proc.stdout)
        except ValueError:
            self._add(junit.Check("vm-kernel-facts", False, time.monotonic() - t,
                                  f"could not read the VM's kernel facts: {proc.stderr.strip()[-300:]}"))
            return
        root = next((p["bytes"] for p in disk.details.get("partitions", []) if p["mount"] == "/"), 0)
        for check in vm_facts.judge(facts, disk_layout(disk, layout), root, EXTRA_VOLUME):
            check.seconds = time.monotonic() - t
            self._add(check)

    def _offline(self, disk: DiskResult) -> None:
        """No NIC at all: no IMDS, no SSH; the console must reach the login prompt with no failed unit."""
        t = time.monotonic()
        vm = VirtualMachine(disk.path, self.run.path / "vm-offline", nic=False)
        with vm:
            try:
                vm.wait_for_console(r"login: *$|login:", BOOT_TIMEOUT)
                time.sleep(5)  # units still starting after the getty would show their failure now
            except OperationError as error:
                self._add(junit.Check("vm-offline-boot", False, time.monotonic() - t, str(error).splitlines()[0]))
                return
            failed = sorted(set(FAILED_UNIT.findall(vm.console_text())))
        seconds = time.monotonic() - t
        if failed:
            self._add(junit.Check("vm-offline-boot", False, seconds, f"failed units with no network: "
                                  f"{', '.join(failed)} (console log {vm.console_log})"))
        else:
            self._add(junit.Check("vm-offline-boot", True, seconds,
                                  output=f"login prompt after {seconds:.0f} s with no NIC, no failed unit"))

    def _finish(self, record: dict[str, Any], started_at: str, started: float, env_name: str | None,
                disk: DiskResult) -> VerifyResult:
        # the bytes that passed: the gate accepts this verification only while the version's disk has this digest
        return self._record(record, started_at, started, env_name, "vm",
                            {"console": str(self.run.path / "vm-online" / "console.log"), "disk_sha256": disk.sha256})


def verify_vm_image(project: Project, catalog: SqliteCatalog, progress: Progress, image: str, version: str | None,
                    env_name: str | None = None) -> VerifyResult:
    """Everything that can refuse the request (tools, image, environment) is checked before the run starts; the
    disk is built first when the version has none yet."""
    from bakery.disks import accel, qemu_host, vm_leftovers
    from bakery.disks.builder import make_disk
    from bakery.verify.runner import runtime_text

    definition = project.image(image)
    text = runtime_text(project, env_name)
    qemu_host.qemu_system(), qemu_host.qemu_img(), qemu_host.firmware()
    accel.choose()  # a bad BAKERY_VM_ACCEL is exit 2 before anything is built or written
    vm_ssh.require_client()
    record = catalog.resolve(image, version)
    disk = make_disk(project, catalog, progress, record, definition.disk, "raw", definition.disk.disk_size)
    vm_leftovers.clean(project.state_dir / "runs")  # a killed verify's VMs go before this one starts
    run = Run.start(project.state_dir, "verify-vm")
    return VmVerifier(project, catalog, progress, run).verify_vm(record, disk, definition.disk, text,
                                                                 definition.health_check, env_name)


def ensure_vm_verified(project: Project, catalog: Catalog, progress: Progress, image: str, version: str,
                       env_name: str, force: bool = False) -> str:
    """For the pipeline: the version's passed VM verification, reused when there is one (unless `force`)."""
    from bakery.verify.gate import latest_verification

    if not isinstance(catalog, SqliteCatalog):
        raise ConfigError("a VM verification is made on the local target: run the pipeline with --target local")
    last = latest_verification(catalog, image, version, "vm")
    if last and last["passed"] and not force:
        return f"its VM verification of {last['started']} passed (run {last['run_id']}); not repeated"
    result = verify_vm_image(project, catalog, progress, image, version, env_name)
    if not result.passed:
        raise OperationError(f"VM verification of {image}:{version} failed: {result.summary} "
                             f"(report {result.reports['junit']})")
    return f"its disk passed the VM verification in {result.seconds:.0f} s"
