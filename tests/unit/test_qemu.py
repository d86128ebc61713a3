"""The qemu layer of `verify --vm` without booting a guest: the command line, the accelerator choice, missing host
tools, QMP, the per-connection IMDS relay, and leftover VMs (real processes: a real idle qemu, a real sleep)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bakery.disks import accel, qemu_host, qmp, tied_process, vm_leftovers
from bakery.disks.qemu import VirtualMachine, create_overlay
from bakery.disks.qemu_argv import RELAY, VmSettings, qemu_argv
from bakery.disks.vm_files import VmFiles, owner_alive, write_owner
from bakery.errors import ConfigError, OperationError

pytestmark = pytest.mark.unit

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None,
                                reason="qemu-system-x86 and qemu-utils are not installed (make setup)")
FIRMWARE = qemu_host.Firmware(Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd"))


def argv_of(tmp_path: Path, accel_name: str = "tcg", **settings) -> list[str]:
    files = VmFiles(tmp_path / "run,1" / "vm")
    ports = dict(zip(settings.get("forwards", ()), (40022, 40080), strict=False))
    return qemu_argv("/usr/bin/qemu-system-x86_64", VmSettings(disk=tmp_path / "disk.raw", **settings), accel_name,
                     files, FIRMWARE, ports)


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_the_command_line_boots_uefi_from_the_overlay_with_a_serial_console_qmp_and_a_pid_file(tmp_path):
    argv = argv_of(tmp_path)
    run = f"{tmp_path}/run,,1/vm"  # a comma in a path is doubled inside qemu's option lists
    assert option(argv, "-drive") == [
        "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        f"if=pflash,format=raw,file={run}/OVMF_VARS.fd",
        f"if=none,id=root,format=qcow2,file={run}/overlay.qcow2,discard=unmap"]
    assert option(argv, "-device")[0] == "nvme,drive=root,serial=bakery-root"
    assert option(argv, "-chardev") == [f"file,id=console,path={run}/console.log"]
    assert option(argv, "-serial") == ["chardev:console"]
    assert option(argv, "-qmp") == ["unix:qmp.sock,server=on,wait=off"]
    assert option(argv, "-pidfile") == [f"{tmp_path}/run,1/vm/qemu.pid"]
    assert option(argv, "-machine") == ["q35,accel=tcg"] and "-cpu" not in argv
    assert option(argv, "-m") == ["1024"] and option(argv, "-smp") == ["2"]
    assert "-nodefaults" in argv and "-no-reboot" in argv


def test_kvm_uses_the_host_cpu_and_virtio_disks_can_be_asked_for(tmp_path):
    argv = argv_of(tmp_path, "kvm", disk_interface="virtio", memory_mib=2048, cpus=1)
    assert option(argv, "-machine") == ["q35,accel=kvm"] and option(argv, "-cpu") == ["host"]
    assert option(argv, "-device")[0] == "virtio-blk-pci,drive=root"
    assert option(argv, "-m") == ["2048"] and option(argv, "-smp") == ["1"]


def test_no_nic_means_no_network_device_at_all(tmp_path):
    argv = argv_of(tmp_path, nic=False)
    assert option(argv, "-nic") == ["none"]
    assert "-netdev" not in argv and not any("virtio-net" in arg for arg in argv)


def test_the_network_is_restricted_link_local_with_loopback_forwards_and_the_imds_relay(tmp_path):
    argv = argv_of(tmp_path, forwards=(22, 8080), imds_port=45678)
    netdev = option(argv, "-netdev")[0].split(",")
    assert netdev[:5] == ["user", "id=net0", "restrict=on", "net=169.254.0.0/16", "ipv6=off"]
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in netdev and "hostfwd=tcp:127.0.0.1:40080-:8080" in netdev
    guestfwd = [item for item in netdev if item.startswith("guestfwd=")]
    assert guestfwd == [f"guestfwd=tcp:169.254.169.254:80-cmd:{sys.executable} {RELAY} 45678"]
    assert "virtio-net-pci,netdev=net0" in option(argv, "-device")


def test_a_vm_without_a_nic_drops_its_forwards(tmp_path):
    vm = VirtualMachine(tmp_path / "disk.raw", tmp_path / "vm", nic=False, forwards=(22,), imds_port=1234)
    assert vm.settings.forwards == () and vm.settings.imds_port is None


def test_bad_accelerator_or_disk_interface_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="'hvf' is not kvm or tcg"):
        VirtualMachine(tmp_path / "d", tmp_path / "vm", accel="hvf")
    with pytest.raises(ConfigError, match="'ide' is not one of nvme, virtio"):
        VirtualMachine(tmp_path / "d", tmp_path / "vm", disk_interface="ide")


# --- the accelerator -------------------------------------------------------------------------------------------

@pytest.fixture
def no_probe(monkeypatch):
    def refuse():
        raise AssertionError("the probe ran although BAKERY_VM_ACCEL was set")

    monkeypatch.setattr(accel, "probed", refuse)


@pytest.mark.parametrize(("value", "name"), [("tcg", "tcg"), ("kvm", "kvm")])
def test_bakery_vm_accel_overrides_the_probe(monkeypatch, no_probe, value, name):
    monkeypatch.setenv("BAKERY_VM_ACCEL", value)
    choice = accel.choose()
    assert choice.name == name and f"BAKERY_VM_ACCEL={value}" in choice.reason


def test_a_bad_bakery_vm_accel_is_a_config_error_naming_it(monkeypatch, no_probe):
    monkeypatch.setenv("BAKERY_VM_ACCEL", "KVM!")
    with pytest.raises(ConfigError, match=r"BAKERY_VM_ACCEL='KVM!' is not an accelerator: set it to kvm or tcg"):
        accel.choose()


def test_without_dev_kvm_the_choice_is_tcg_and_is_made_once(monkeypatch, tmp_path):
    monkeypatch.delenv("BAKERY_VM_ACCEL", raising=False)
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "kvm")
    accel.probed.cache_clear()
    try:
        first = accel.choose()
        (tmp_path / "kvm").touch()  # appears later: the cached answer stands
        assert accel.choose() is first
    finally:
        accel.probed.cache_clear()
    assert first == accel.Accel("tcg", f"TCG (software emulation): {tmp_path / 'kvm'} is absent")


@needs_qemu
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm to probe")
def test_the_kvm_probe_answers_within_its_time_and_leaves_no_qemu(tmp_path):
    started = time.monotonic()
    choice = accel.probe_kvm(5.0)
    assert time.monotonic() - started < 7.0
    assert choice.reason.startswith("KVM: probe booted firmware in ") if choice.name == "kvm" else \
        choice.reason.startswith("TCG (software emulation): /dev/kvm present but ")
    assert [pid for pid in qemu_pids() if parent_of(pid) == os.getpid()] == []


def qemu_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()
            and vm_leftovers.command_line(int(entry))[:1] != []
            and os.path.basename(vm_leftovers.command_line(int(entry))[0]).startswith("qemu-system")]


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


# --- missing host tools ----------------------------------------------------------------------------------------

def test_missing_qemu_and_qemu_img_name_their_debian_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="qemu-system-x86_64 is not installed: install the Debian package "
                                          "qemu-system-x86"):
        qemu_host.qemu_system()
    with pytest.raises(ConfigError, match="qemu-img is not installed: install the Debian package qemu-utils"):
        qemu_host.qemu_img()


def test_missing_firmware_names_the_ovmf_package(monkeypatch, tmp_path):
    monkeypatch.setattr(qemu_host, "OVMF_DIR", tmp_path)
    with pytest.raises(ConfigError, match=f"UEFI firmware {tmp_path}/OVMF_CODE_4M.fd is missing: install the "
                                          "Debian package ovmf"):
        qemu_host.firmware()


# --- overlays, the console ---------------------------------------------------------------------------------------

@needs_qemu
@pytest.mark.parametrize("disk_format", ["raw", "qcow2"])
def test_the_overlay_is_backed_by_the_disk_which_stays_untouched(tmp_path, disk_format):
    disk = tmp_path / f"disk.{disk_format}"
    subprocess.run(["qemu-img", "create", "-q", "-f", disk_format, str(disk), "4M"], check=True)
    before = disk.read_bytes()
    create_overlay(disk, tmp_path / "overlay.qcow2", 8 * 1024 * 1024)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(tmp_path / "overlay.qcow2")],
                                     capture_output=True, text=True, check=True).stdout)
    assert (info["format"], info["backing-filename"], info["backing-filename-format"]) == (
        "qcow2", str(disk), disk_format)
    assert info["virtual-size"] == 8 * 1024 * 1024 and disk.read_bytes() == before


@needs_qemu
def test_a_missing_disk_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=f"disk image {tmp_path}/nope.raw does not exist"):
        create_overlay(tmp_path / "nope.raw", tmp_path / "overlay.qcow2", None)


def test_waiting_for_the_console_matches_text_without_colour_codes_and_fails_with_its_last_lines(tmp_path):
    vm = VirtualMachine(tmp_path / "disk.raw", tmp_path / "vm")
    vm.files.root.mkdir()
    vm.files.console.write_bytes(b"BdsDxe: starting\r\n[\x1b[0;32m  OK  \x1b[0m] Reached target "
                                 b"\x1b[0;1;39mmulti-user.target\x1b[0m - Multi-User System.\r\n"
                                 + b"".join(b"line %d\r\n" % n for n in range(30)))
    assert vm.wait_for_console(r"Reached target (\S+)", 1).group(1) == "multi-user.target"
    with pytest.raises(OperationError) as failure:
        vm.wait_for_console("login:", 1)
    message = str(failure.value)
    assert message.startswith(f"the console did not show 'login:' before the VM stopped (console log: "
                              f"{tmp_path}/vm/console.log); its last lines:\n")
    assert message.endswith("\n".join(f"  | line {n}" for n in range(15, 30)))


# --- QMP and a real (idle) qemu -----------------------------------------------------------------------------------

def idle_qemu(vm_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A real qemu that runs no guest (-machine none, stopped), naming vm_dir as a VM would, with its pid file."""
    vm_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(["qemu-system-x86_64", "-machine", "none", "-S", "-nodefaults", "-display", "none",
                                "-monitor", "none", "-qmp", "unix:qmp.sock,server=on,wait=off",
                                "-pidfile", str(vm_dir / "qemu.pid"), *extra], cwd=vm_dir,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not (vm_dir / "qemu.pid").exists() or not (vm_dir / "qmp.sock").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the idle qemu did not start"
        time.sleep(0.05)
    return process


@needs_qemu
def test_qmp_reaches_a_socket_whose_path_is_longer_than_a_unix_socket_path_may_be(tmp_path):
    vm_dir = tmp_path / ("deep-" * 30) / "vm"
    assert len(str(vm_dir / "qmp.sock")) > 108
    process = idle_qemu(vm_dir)
    try:
        assert qmp.execute(vm_dir / "qmp.sock", "query-status")["return"]["status"] == "prelaunch"
    finally:
        tied_process.end(process)


@needs_qemu
def test_a_vm_starts_answers_qmp_and_stop_leaves_no_qemu_and_no_scratch_files(tmp_path):
    disk = tmp_path / "blank.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "16M"], check=True)
    vm = VirtualMachine(disk, tmp_path / "vm", accel="tcg", memory_mib=128, cpus=1, forwards=(22,))
    with vm:
        assert vm.running() and set(vm.ports) == {22}
        pid = int(vm.files.pidfile.read_text())
        assert vm_leftovers.is_vm_qemu(pid, vm.files.root)
        with socket.create_connection(("127.0.0.1", vm.ports[22]), timeout=5):
            pass  # qemu listens on the forwarded port
        assert vm.files.overlay.exists() and vm.files.firmware_vars.exists() and owner_alive(vm.files)
        assert vm.stop(powerdown_seconds=0.5) is False  # the firmware alone ignores ACPI power-down: killed
    assert not vm.running() and not Path(f"/proc/{pid}").exists()
    assert sorted(path.name for path in vm.files.root.iterdir()) == ["console.log", "qemu.log"]
    assert disk.stat().st_size == 16 * 1024 * 1024


@needs_qemu
def test_qemu_dies_when_the_bakery_process_that_started_it_is_killed(tmp_path):
    script = ("import sys; from pathlib import Path; from bakery.disks import tied_process\n"
              "p = tied_process.start(['qemu-system-x86_64', '-machine', 'none', '-S', '-nodefaults', '-display',"
              " 'none', '-monitor', 'none'], Path(sys.argv[1]), Path(sys.argv[1]) / 'qemu.log')\n"
              "print(p.pid, flush=True); sys.stdin.read()\n")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert vm_leftovers.command_line(pid)[0] == "qemu-system-x86_64"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()


# --- leftovers -----------------------------------------------------------------------------------------------------

def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@needs_qemu
def test_leftovers_kill_the_qemu_of_a_dead_bakery_and_remove_its_overlay(tmp_path):
    vm_dir = tmp_path / "runs" / "20250101T000000Z-verify-abc" / "vm"
    process = idle_qemu(vm_dir)
    try:
        (vm_dir / "overlay.qcow2").write_bytes(b"overlay")
        (vm_dir / "console.log").write_text("kept\n")
        (vm_dir / "owner").write_text(f"{dead_pid()} 1\n")
        found = vm_leftovers.clean(tmp_path / "runs")
        assert found.killed == [process.pid]
        assert process.wait(5) == -signal.SIGKILL
    finally:
        tied_process.end(process)
    assert vm_dir / "overlay.qcow2" in found.removed
    assert sorted(path.name for path in vm_dir.iterdir()) == ["console.log"]


@needs_qemu
def test_leftovers_leave_the_vm_of_a_live_bakery_alone_and_never_kill_another_vms_qemu(tmp_path):
    vm_dir, copied = tmp_path / "runs" / "run-1", tmp_path / "runs" / "run-2"
    process = idle_qemu(vm_dir)
    try:
        write_owner(VmFiles(vm_dir))  # this test process is the owner, and it is alive
        (vm_dir / "overlay.qcow2").write_bytes(b"overlay")
        copied.mkdir()
        shutil.copy(vm_dir / "qemu.pid", copied / "qemu.pid")  # a qemu, but not this directory's
        found = vm_leftovers.clean(tmp_path / "runs")
        assert found.killed == [] and found.removed == [copied / "qemu.pid"]
        assert process.poll() is None and (vm_dir / "overlay.qcow2").exists()
    finally:
        tied_process.end(process)


def test_an_owner_whose_pid_was_reused_is_not_alive(tmp_path):
    files = VmFiles(tmp_path)
    write_owner(files)
    assert owner_alive(files)
    pid, _, started = files.owner.read_text().partition(" ")
    files.owner.write_text(f"{pid} {int(started) + 1}\n")  # same pid, another start time: another process
    assert not owner_alive(files)


def test_leftovers_never_kill_a_process_whose_command_line_is_not_that_vms_qemu(tmp_path):
    runs = tmp_path / "runs"
    sleeper = subprocess.Popen(["sleep", "60"])
    other_dir = runs / "run-2" / "vm"
    try:
        for name in ("run-1", "run-2/vm"):  # pids reused by an unrelated process
            (runs / name).mkdir(parents=True)
            (runs / name / "qemu.pid").write_text(f"{sleeper.pid}\n")
            (runs / name / "overlay.qcow2").write_bytes(b"stale")
        assert not vm_leftovers.is_vm_qemu(sleeper.pid, other_dir)
        found = vm_leftovers.clean(runs)
        assert found.killed == [] and sleeper.poll() is None
        assert sorted(found.removed) == sorted([runs / "run-1" / "overlay.qcow2", runs / "run-1" / "qemu.pid",
                                                other_dir / "overlay.qcow2", other_dir / "qemu.pid"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_leftovers_of_a_missing_runs_root_are_none(tmp_path):
    assert vm_leftovers.clean(tmp_path / "no-runs").empty()


# --- the IMDS relay ------------------------------------------------------------------------------------------------

class TokenHandler(BaseHTTPRequestHandler):
    def do_PUT(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"token")

    def log_message(self, *args):
        pass


def test_the_relay_carries_one_connection_each_way_and_passes_on_the_close():
    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    guest, relay_end = socket.socketpair()
    try:
        relay = subprocess.Popen([sys.executable, str(RELAY), str(server.server_address[1])], stdin=relay_end,
                                 stdout=relay_end, stderr=relay_end)
        relay_end.close()
        guest.sendall(b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nContent-Length: 0\r\n\r\n")
        guest.settimeout(10)
        answer = b""
        while chunk := guest.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.0 200 OK") and answer.endswith(b"\r\n\r\ntoken")
        guest.close()
        assert relay.wait(5) == 0
    finally:
        server.shutdown()
        server.server_close()


def test_the_relay_closes_the_guest_connection_quietly_when_nothing_listens():
    guest, relay_end = socket.socketpair()
    with guest:
        relay = subprocess.Popen([sys.executable, str(RELAY), "1"], stdin=relay_end, stdout=relay_end,
                                 stderr=relay_end)
        relay_end.close()
        guest.settimeout(10)
        assert guest.recv(100) == b""  # no traceback reaches the guest
        assert relay.wait(5) == 1
