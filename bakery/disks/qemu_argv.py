"""The qemu command line of a verify VM: UEFI, the disk behind an overlay, serial console to a file, a network
that reaches nothing but the host ports bakery forwards and the IMDS endpoint.

Network: qemu's user-mode (slirp) network with restrict=on, so the guest reaches nothing outside; host
forwards (127.0.0.1 only) and the guest forward to IMDS still work under it. slirp accepts a guest forward
only to an address inside its own network, so the guest network is EC2's link-local 169.254.0.0/16 (gateway
169.254.0.2, DNS 169.254.0.3, DHCP from 169.254.0.15): with the default 10.0.2.0/24 qemu refuses
`guestfwd=tcp:169.254.169.254:80-...` ("Conflicting/invalid host:port"). Each guest connection to IMDS
runs guest_relay.py, which connects to the loopback IMDS server.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bakery.disks.qemu_host import Firmware
from bakery.disks.vm_files import VmFiles

GUEST_NETWORK = "169.254.0.0/16"
IMDS_ADDRESS = "169.254.169.254"
RELAY = Path(__file__).with_name("guest_relay.py")
DISK_INTERFACES = ("nvme", "virtio")


@dataclass(frozen=True)
class VmSettings:
    disk: Path
    memory_mib: int = 1024
    cpus: int = 2
    nic: bool = True
    forwards: tuple[int, ...] = ()  # guest TCP ports reachable from 127.0.0.1 on the host
    imds_port: int | None = None  # loopback port of the IMDS server the guest reaches at 169.254.169.254:80
    disk_interface: str = "nvme"  # EC2's Nitro instances attach EBS volumes as NVMe
    disk_size: int | None = None  # bytes; a bigger overlay lets first-boot root growth show
    extra: tuple[str, ...] = field(default=())  # more qemu arguments (tests)


def escape(value: object) -> str:
    """A value inside a qemu `-drive`/`-chardev`/`-netdev` option list, where a comma separates options."""
    return str(value).replace(",", ",,")


def network(settings: VmSettings, host_ports: dict[int, int]) -> list[str]:
    if not settings.nic:
        return ["-nic", "none"]
    options = ["user", "id=net0", "restrict=on", f"net={GUEST_NETWORK}", "ipv6=off"]
    options += [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in sorted(host_ports.items())]
    if settings.imds_port is not None:
        relay = shlex.join([sys.executable, str(RELAY), str(settings.imds_port)])
        options.append(f"guestfwd=tcp:{IMDS_ADDRESS}:80-cmd:{escape(relay)}")
    return ["-netdev", ",".join(options), "-device", "virtio-net-pci,netdev=net0"]


def disk(settings: VmSettings, files: VmFiles) -> list[str]:
    drive = f"if=none,id=root,format=qcow2,file={escape(files.overlay)},discard=unmap"
    device = "nvme,drive=root,serial=bakery-root" if settings.disk_interface == "nvme" else "virtio-blk-pci,drive=root"
    return ["-drive", drive, "-device", device]


def machine(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-machine", "q35,accel=kvm", "-cpu", "host"]
    return ["-machine", "q35,accel=tcg"]


def qemu_argv(qemu: str, settings: VmSettings, accel: str, files: VmFiles, firmware: Firmware,
              host_ports: dict[int, int]) -> list[str]:
    """Everything qemu needs; file paths are absolute (so the run directory shows in the process list) except
    the QMP socket, which is relative to the VM directory (qemu's working directory): a unix socket path may
    not exceed 107 bytes."""
    return [
        qemu, "-name", "bakery-vm", *machine(accel),
        "-m", str(settings.memory_mib), "-smp", str(settings.cpus),
        "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
        "-drive", f"if=pflash,format=raw,readonly=on,file={escape(firmware.code)}",
        "-drive", f"if=pflash,format=raw,file={escape(files.firmware_vars)}",
        *disk(settings, files),
        "-chardev", f"file,id=console,path={escape(files.console)}", "-serial", "chardev:console",
        "-qmp", f"unix:{files.qmp.name},server=on,wait=off",
        "-pidfile", str(files.pidfile),
        *network(settings, host_ports),
        *settings.extra,
    ]
