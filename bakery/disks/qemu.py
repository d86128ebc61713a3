"""Boot a disk image as a throwaway UEFI virtual machine, the way EC2 boots an AMI.

The disk itself is never written: the VM boots a qcow2 overlay in its run directory, removed when the VM
stops, as are its private copy of the firmware variables and its QMP socket. The serial console goes to
console.log there and stays. qemu dies with bakery (tied_process), and a qemu left over anyway is found by
vm_leftovers through the run directory's qemu.pid and owner files.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from bakery.disks import accel as accelerators
from bakery.disks import qemu_host, qmp, tied_process
from bakery.disks.qemu_argv import DISK_INTERFACES, VmSettings, qemu_argv
from bakery.disks.vm_files import VmFiles, write_owner
from bakery.errors import ConfigError, OperationError

log = logging.getLogger("bakery.disks.qemu")

DISK_FORMATS = ("raw", "qcow2")
START_SECONDS = 30.0
START_ATTEMPTS = 3  # a forwarded port picked free can be taken before qemu binds it
ANSI = re.compile(r"\x1b(\[[0-9;=?]*[A-Za-z]|[()][A-Z0-9])|\r")
CONSOLE_TAIL = 15


class VirtualMachine:
    """One VM, started by `start()` (or `with`) and ended by `stop()`; `ports` maps guest to host TCP ports."""

    def __init__(self, disk: Path, run_dir: Path, *, memory_mib: int = 1024, cpus: int = 2, accel: str | None = None,
                 nic: bool = True, forwards: tuple[int, ...] = (), imds_port: int | None = None,
                 disk_interface: str = "nvme", disk_size: int | None = None):
        if disk_interface not in DISK_INTERFACES:
            raise ConfigError(f"disk interface {disk_interface!r} is not one of {', '.join(DISK_INTERFACES)}")
        if accel not in (None, "kvm", "tcg"):
            raise ConfigError(f"accelerator {accel!r} is not kvm or tcg")
        self.settings = VmSettings(disk=Path(disk), memory_mib=memory_mib, cpus=cpus, nic=nic,
                                   forwards=tuple(forwards) if nic else (), imds_port=imds_port if nic else None,
                                   disk_interface=disk_interface, disk_size=disk_size)
        self.files = VmFiles(Path(run_dir).absolute())
        self.accel = accel or ""
        self.accel_reason = f"{accel.upper()}: chosen by the caller" if accel else ""
        self.ports: dict[int, int] = {}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def console_log(self) -> Path:
        return self.files.console

    def __enter__(self) -> VirtualMachine:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def start(self) -> VirtualMachine:
        qemu, firmware = qemu_host.qemu_system(), qemu_host.firmware()
        if not self.accel:
            choice = accelerators.choose()
            self.accel, self.accel_reason = choice.name, choice.reason
        self.files.root.mkdir(parents=True, exist_ok=True)
        write_owner(self.files)
        try:
            create_overlay(self.settings.disk, self.files.overlay, self.settings.disk_size)
            shutil.copyfile(firmware.vars_template, self.files.firmware_vars)
            self.files.console.write_bytes(b"")
            for attempt in range(1, START_ATTEMPTS + 1):
                self.ports = dict(zip(self.settings.forwards, free_ports(len(self.settings.forwards)), strict=True))
                argv = qemu_argv(qemu, self.settings, self.accel, self.files, firmware, self.ports)
                log.info("starting VM (%s): %s", self.accel, " ".join(argv))
                self.files.qemu_log.write_bytes(b"")
                self._process = tied_process.start(argv, self.files.root, self.files.qemu_log)
                if self._started():
                    return self
                tied_process.end(self._process)
                if attempt == START_ATTEMPTS or not self._port_taken():
                    raise OperationError(f"qemu did not start: {self._qemu_error()} "
                                         f"(its output: {self.files.qemu_log})")
        except BaseException:
            self.stop(powerdown_seconds=0)
            raise
        return self

    def _started(self) -> bool:
        """True once qemu answers on QMP (it does only after every device and forward is set up)."""
        assert self._process is not None
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                return "return" in qmp.execute(self.files.qmp, "query-status", timeout=2.0)
            except OSError:
                time.sleep(0.1)
        return False

    def _port_taken(self) -> bool:
        return "host forwarding rule" in self.files.qemu_log.read_text(errors="replace")

    def _qemu_error(self) -> str:
        lines = [line.strip() for line in self.files.qemu_log.read_text(errors="replace").splitlines()]
        errors = [line for line in lines if line and "warning:" not in line]
        return errors[-1][:300] if errors else "no message"

    def console_text(self) -> str:
        """The console so far, without terminal colour codes and carriage returns."""
        try:
            return ANSI.sub("", self.files.console.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def wait_for_console(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first match of `pattern` in the console text (see console_text); OperationError naming the
        console log with its last lines when it does not show within `timeout` s or the VM stops first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            stopped = self._process is None or self._process.poll() is not None
            match = regex.search(self.console_text())
            if match:
                return match
            if stopped or time.monotonic() >= deadline:
                why = "the VM stopped" if stopped else f"{timeout:g} s passed"
                raise OperationError(f"the console did not show {regex.pattern!r} before {why} "
                                     f"(console log: {self.files.console}); its last lines:\n"
                                     + self.console_tail())
            time.sleep(0.5)

    def console_tail(self, lines: int = CONSOLE_TAIL) -> str:
        shown = [line for line in self.console_text().splitlines() if line.strip()][-lines:]
        return "\n".join(f"  | {line}" for line in shown) if shown else "  (the console is empty)"

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, powerdown_seconds: float = 30.0) -> bool:
        """ACPI power-down through QMP, then SIGKILL after `powerdown_seconds` (0: at once); the scratch files
        go. True when the guest shut down by itself."""
        clean = False
        if self._process is not None:
            if self._process.poll() is None and powerdown_seconds > 0:
                clean = self._power_down(powerdown_seconds)
            tied_process.end(self._process)
        self.files.remove_scratch()
        return clean

    def _power_down(self, seconds: float) -> bool:
        assert self._process is not None
        try:
            qmp.execute(self.files.qmp, "system_powerdown")
            self._process.wait(seconds)
            return True
        except OSError:
            log.info("qemu did not take system_powerdown: killing it")
        except subprocess.TimeoutExpired:
            log.info("the guest did not power down within %g s: killing qemu", seconds)
        return False


def create_overlay(disk: Path, overlay: Path, size: int | None) -> None:
    """A qcow2 overlay over `disk` (raw or qcow2), which stays untouched."""
    if not disk.is_file():
        raise ConfigError(f"disk image {disk} does not exist (make it with: bake.py disk IMAGE)")
    qemu_img = qemu_host.qemu_img()
    info = subprocess.run([qemu_img, "info", "--output=json", str(disk)], capture_output=True, text=True,
                          check=False)
    try:
        disk_format = json.loads(info.stdout)["format"] if info.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        disk_format = None
    if disk_format not in DISK_FORMATS:
        raise ConfigError(f"disk image {disk} is not a raw or qcow2 disk image "
                          f"({disk_format or info.stderr.strip()[:200] or 'unreadable'})")
    command = [qemu_img, "create", "-q", "-f", "qcow2", "-F", disk_format, "-b", str(disk.absolute()), str(overlay)]
    created = subprocess.run(command + ([str(size)] if size else []), capture_output=True, text=True, check=False)
    if created.returncode != 0:
        raise OperationError(f"qemu-img could not create the overlay {overlay}: {created.stderr.strip()[:300]}")


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now (held open together while picking)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
