"""Checks of the boot role; Molecule runs them in a container, and bake.py verify runs them on the image's instances.

The same tests run on a podman instance and on a VM booted from the image's disk: what only a VM can show (the
kernel command line in effect, systemd-networkd running, the root partition grown) is checked there, and in a
container the same units must skip themselves so that the system still reaches "running".
"""

import pytest

KERNEL_PACKAGE = "linux-image-cloud-amd64"
EFI_BINARY = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
CMDLINE_FRAGMENT = "/etc/bakery/kernel-cmdline.d/10-boot.conf"
KERNEL_ARGS = ["console=tty0", "console=ttyS0,115200n8", "nvme_core.io_timeout=4294967295"]
NETWORK_FILE = "/etc/systemd/network/80-bakery-dhcp.network"
VM_ONLY_NETWORK_UNITS = [
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-networkd-wait-online.service",
    "systemd-network-generator.service",
]
REPART_FILE = "/etc/repart.d/50-bakery-grow-root.conf"
RESOLVED_DROPIN = "/etc/systemd/system/systemd-resolved.service.d/60-bakery-skip-in-container.conf"
SERIAL_GETTY = "serial-getty@ttyS0.service"
SERIAL_GETTY_DROPIN = f"/etc/systemd/system/{SERIAL_GETTY}.d/60-bakery-nohangup.conf"
# Drivers the initramfs must load to find the root by PARTUUID on virtio, and the NICs before wait-online's check.
INITRAMFS_MODULES = ["virtio_pci.ko", "virtio_blk.ko", "virtio_scsi.ko", "virtio_net.ko", "ena.ko", "xen-blkfront.ko"]
# What the cloud kernel has built in instead (not in the initramfs, so checked in its config).
BUILT_IN = ["CONFIG_BLK_DEV_NVME=y", "CONFIG_EXT4_FS=y", "CONFIG_EFI_STUB=y", "CONFIG_SERIAL_8250_CONSOLE=y"]


@pytest.fixture(scope="module")
def in_container(host):
    return host.run("systemd-detect-virt --container --quiet").rc == 0


@pytest.fixture(scope="module")
def kernel_version(host):
    kernels = [name for name in host.file("/boot").listdir() if name.startswith("vmlinuz-")]
    assert len(kernels) == 1, f"exactly one kernel expected in /boot, found {kernels}"
    return kernels[0].removeprefix("vmlinuz-")


def _show(host, unit, *properties):
    shown = host.check_output(f"systemctl show {unit} " + " ".join(f"-p {name}" for name in properties))
    return dict(line.split("=", 1) for line in shown.splitlines())


# --- the system as a whole -----------------------------------------------------------------


def test_system_is_running_not_degraded(host):
    state = host.run("timeout 60 systemctl is-system-running --wait").stdout.strip()
    failed = host.run("systemctl --failed --no-legend --plain").stdout
    assert state == "running", f"system is {state}; failed units:\n{failed}"


# --- kernel, initramfs, EFI binary ---------------------------------------------------------


@pytest.mark.parametrize("name", [KERNEL_PACKAGE, "initramfs-tools", "udev", "systemd-boot-efi",
                                  "systemd-resolved", "libnss-myhostname"])
def test_boot_package_is_installed(host, name):
    assert host.package(name).is_installed


def test_exactly_one_kernel_with_its_initramfs(host, kernel_version):
    kernel = host.file(f"/boot/vmlinuz-{kernel_version}")
    initrd = host.file(f"/boot/initrd.img-{kernel_version}")
    assert kernel.is_file and kernel.size > 1_000_000
    assert initrd.is_file and initrd.size > 1_000_000
    assert [name for name in host.file("/boot").listdir() if name.startswith("initrd.img-")] == [
        f"initrd.img-{kernel_version}"]


def test_initramfs_finds_the_root_on_virtio_and_nvme(host, kernel_version):
    listed = host.check_output("lsinitramfs /boot/initrd.img-%s", kernel_version).splitlines()
    names = {path.rsplit("/", 1)[-1] for path in listed}
    missing = [module for module in INITRAMFS_MODULES if module not in names]
    assert not missing, f"the initramfs lacks {missing}"
    # root=PARTUUID= is resolved by udev and blkid in the initramfs
    assert {"blkid", "udevadm"} <= names
    config = host.file(f"/boot/config-{kernel_version}")
    for option in BUILT_IN:
        assert config.contains(f"^{option}$"), f"the kernel lacks {option}"


def test_systemd_boot_efi_binary_is_there(host):
    efi = host.file(EFI_BINARY)
    assert efi.is_file and efi.size > 10_000
    # a PE image: "MZ" DOS header
    assert host.check_output("head -c 2 %s", EFI_BINARY) == "MZ"


def test_apt_lists_and_downloads_are_removed(host):
    # The layer carries no package lists or downloaded packages. (/var/cache/apt/*.bin is left out: package_facts
    # rebuilds it from the empty lists on the idempotence run.)
    assert host.check_output("find /var/lib/apt/lists /var/cache/apt/archives -type f ! -name lock") == ""


# --- kernel command line -------------------------------------------------------------------


def test_kernel_cmdline_fragment_is_one_line(host):
    fragment = host.file(CMDLINE_FRAGMENT)
    assert fragment.is_file and fragment.user == "root" and fragment.mode == 0o644
    assert fragment.content_string == " ".join(KERNEL_ARGS) + "\n"


def test_kernel_cmdline_is_in_effect_on_a_vm(host, in_container):
    if in_container:
        pytest.skip("a container runs the host's kernel, with the host's command line")
    running = host.file("/proc/cmdline").content_string.split()
    assert [arg for arg in KERNEL_ARGS if arg not in running] == []
    assert any(arg.startswith("root=PARTUUID=") for arg in running)


# --- network -------------------------------------------------------------------------------


def test_dhcp_on_the_first_nic_whatever_its_name(host):
    network = host.file(NETWORK_FILE)
    assert network.contains(r"^Name=en\* eth\*$")
    assert network.contains("^Type=ether$")
    assert network.contains("^DHCP=yes$")
    assert network.contains("^RequiredFamilyForOnline=ipv4$")


def test_networkd_is_enabled_with_wait_online(host):
    assert host.service("systemd-networkd").is_enabled
    assert host.check_output("systemctl is-enabled systemd-networkd-wait-online.service") == "enabled"


def test_wait_online_waits_for_any_nic_briefly_and_only_when_there_is_one(host):
    shown = _show(host, "systemd-networkd-wait-online.service", "ExecStart")
    assert "--any" in shown["ExecStart"] and "--timeout=60" in shown["ExecStart"]
    dropin = host.file("/etc/systemd/system/systemd-networkd-wait-online.service.d/60-bakery-any-nic.conf")
    assert dropin.contains(r"^ConditionPathExistsGlob=|/sys/class/net/en\*$")
    assert dropin.contains(r"^ConditionPathExistsGlob=|/sys/class/net/eth\*$")


@pytest.mark.parametrize("unit", VM_ONLY_NETWORK_UNITS)
def test_network_unit_skips_itself_in_a_container(host, in_container, unit):
    dropin = host.file(f"/etc/systemd/system/{unit}.d/60-bakery-skip-in-container.conf")
    assert dropin.contains("^ConditionVirtualization=!container$")
    if not in_container:
        pytest.skip("on a VM the unit runs")
    # At boot network-online.target pulls them in; asked again here, they must be skipped, not failed.
    host.run("systemctl start %s", unit)
    shown = _show(host, unit, "ActiveState", "Result", "ConditionResult")
    assert shown["ConditionResult"] == "no" and shown["Result"] == "success", shown


def test_networkd_configures_a_nic_on_a_vm(host, in_container):
    if in_container:
        pytest.skip("podman configures a container's network")
    assert host.service("systemd-networkd").is_running
    if not any(name.startswith(("en", "eth")) for name in host.file("/sys/class/net").listdir()):
        pytest.skip("no NIC (an offline boot)")
    assert _show(host, "systemd-networkd-wait-online.service", "ActiveState")["ActiveState"] == "active"
    assert "routable" in host.check_output("networkctl list --no-legend")


# --- root growth ---------------------------------------------------------------------------


def test_repart_grows_the_root_partition(host):
    assert host.file(REPART_FILE).content_string.split("\n")[-3:] == ["[Partition]", "Type=root", ""]


def test_repart_skips_itself_in_a_container_and_ran_on_a_vm(host, in_container):
    if in_container:
        host.run("systemctl start systemd-repart.service")
        shown = _show(host, "systemd-repart.service", "Result", "ConditionResult")
        assert shown == {"Result": "success", "ConditionResult": "no"}
    else:
        shown = _show(host, "systemd-repart.service", "ActiveState", "Result", "ConditionResult")
        assert shown == {"ActiveState": "active", "Result": "success", "ConditionResult": "yes"}


# --- name resolution -----------------------------------------------------------------------


def test_resolver_is_enabled_and_skips_itself_in_a_container(host, in_container):
    assert host.service("systemd-resolved").is_enabled
    assert host.file(RESOLVED_DROPIN).contains("^ConditionVirtualization=!container$")
    if not in_container:
        pytest.skip("on a VM systemd-resolved runs (checked below)")
    host.run("systemctl start systemd-resolved.service")
    shown = _show(host, "systemd-resolved.service", "ActiveState", "Result", "ConditionResult")
    assert shown == {"ActiveState": "inactive", "Result": "success", "ConditionResult": "no"}, shown


def test_own_hostname_resolves_without_dns(host):
    assert host.file("/etc/nsswitch.conf").contains(r"^hosts:.*\bfiles myhostname\b")
    hostname = host.check_output("hostname")
    # "myhostname" answers for the machine's own name even when /etc/hosts does not list it (sudo asks)
    assert host.run("getent -s myhostname hosts %s", hostname).rc == 0


def test_resolved_answers_no_llmnr_or_multicast_dns(host, in_container):
    conf = host.file("/etc/systemd/resolved.conf.d/60-bakery.conf")
    assert conf.contains("^LLMNR=no$") and conf.contains("^MulticastDNS=no$")
    if not in_container:  # only the stub on loopback listens (no 0.0.0.0:5355)
        assert not [s for s in host.socket.get_listening_sockets() if s.endswith(":5355")]


def test_resolv_conf_is_podmans_in_a_container_and_resolved_stub_on_a_vm(host, in_container):
    resolv_conf = host.file("/etc/resolv.conf")
    # systemd-resolved's postinst did not move it aside at bake time
    assert not host.file("/etc/.resolv.conf.systemd-resolved.bak").exists
    if in_container:
        # podman manages it (a bind mount), and the image kept its file: no symlink into /run
        assert resolv_conf.is_file and not resolv_conf.is_symlink
        return
    # the disk builder links it to systemd-resolved's stub, which serves the DNS servers DHCP gave networkd
    assert resolv_conf.is_symlink and resolv_conf.linked_to == "/run/systemd/resolve/stub-resolv.conf"
    assert host.service("systemd-resolved").is_running
    assert host.file("/run/systemd/resolve/stub-resolv.conf").contains("^nameserver 127.0.0.53$")


# --- serial console ------------------------------------------------------------------------


def test_serial_getty_does_not_hang_up_the_console(host):
    dropin = host.file(SERIAL_GETTY_DROPIN)
    assert dropin.user == "root" and dropin.mode == 0o644
    assert host.check_output("systemctl show -p TTYVHangup --value %s", SERIAL_GETTY) == "no"
    # Debian 12's own agetty command line: its agetty knows no --nohangup (a VM boot found the getty failing)
    assert "agetty" in host.check_output("systemctl show -p ExecStart --value %s", SERIAL_GETTY)
    assert not dropin.contains("ExecStart")


def test_serial_getty_runs_on_a_vm(host, in_container):
    if in_container:
        pytest.skip("a container has no serial console (console-getty instead)")
    assert host.service(SERIAL_GETTY).is_running


def test_the_initramfs_is_gzip_so_the_secret_scan_can_read_it(host):
    """Debian 12 compresses with zstd, which bake.py verify's secret scan cannot open (archive-not-scanned)."""
    assert host.file("/etc/initramfs-tools/conf.d/60-bakery-compress.conf").contains("^COMPRESS=gzip$")
    for initrd in host.run("ls /boot/initrd.img-*").stdout.split():
        assert host.check_output(f"head -c 2 {initrd} | od -An -tx1").split() == ["1f", "8b"]
