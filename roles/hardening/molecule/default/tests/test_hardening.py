"""Checks of the hardening role; Molecule runs them, and so can bake.py verify on every image with this role.

Each test fails when its control is missing. The Molecule prepare step plants what the role must
clean up (a compiler, a password hash, an empty password, a system account with a shell, a
world-writable file and directory, loose modes on the shadow files); the tests of the planted
fixtures skip themselves on an image that never had them.

Kernel-level controls (sysctl, modprobe, auditd, AppArmor, the kernel command line, time sync)
cannot take effect inside a container, so their files are checked, and their units must skip
cleanly: the system must still be "running". On a VM (bake.py verify --vm, through the break-glass
SSH session with sudo) the same tests check that they did take effect, and the tests that open and
close break-glass themselves skip (they would cut the session the tests run through).
"""

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

PLANTED_DIR = "/usr/local/share/molecule-hardening"
# Molecule exports MOLECULE_* to its verifier; bake.py verify runs these tests on a real image without them.
UNDER_MOLECULE = "MOLECULE_SCENARIO_NAME" in os.environ


def require_planted(present: bool, what: str) -> None:
    """Skip on an image that never had the fixture; under Molecule, whose prepare.yml plants it, a missing one fails."""
    if present:
        return
    if UNDER_MOLECULE:
        pytest.fail(f"{what} is missing: molecule/default/prepare.yml plants it before converge")
    pytest.skip(f"{what} is not on this image (not a Molecule instance)")


def _load_sibling(name):
    """A helper module next to this file (bake.py verify runs pytest with --import-mode=importlib: no sys.path)."""
    spec = importlib.util.spec_from_file_location(f"hardening_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sshd_check = _load_sibling("sshd_effective")

BREAK_GLASS_USER = "breakglass"
RUNTIME_ENV = "/run/bakery/runtime.env"
BREAK_GLASS_SUDOERS = "/etc/sudoers.d/bakery-break-glass"
SUDO_LOG = "/var/log/sudo.log"
BANNER_FIRST_LINE = "Authorised access only."


def _lines(host, path):
    return [line.strip() for line in host.file(path).content_string.splitlines()]


@pytest.fixture(scope="module")
def in_container(host):
    """True in a podman instance (Molecule, bake.py verify); False on a VM, where kernel-level controls act."""
    return host.run("systemd-detect-virt --container --quiet").rc == 0


@pytest.fixture
def container_only(in_container):
    """Skip on a VM: the test opens and closes break-glass, the channel a VM's tests run through."""
    if not in_container:
        pytest.skip("changes break-glass, through which the tests of a VM connect")


def _unit(host, name):
    return host.service(name).systemd_properties


def assert_skipped_in_container_else_active(host, unit, in_container):
    """A kernel-level unit: skipped by its condition in a container (system stays running), active on a VM."""
    props = _unit(host, unit)
    if in_container:
        assert props["ConditionResult"] == "no", f"{unit} is not skipped in a container: {props['ConditionResult']}"
        assert props["Result"] == "success"
    else:
        assert (props["ActiveState"], props["Result"]) == ("active", "success"), unit


# --- the system as a whole -----------------------------------------------------------------


def test_system_is_running_not_degraded(host):
    # auditd (and anything else the role installs) must skip cleanly in a container.
    state = host.run("timeout 60 systemctl is-system-running --wait").stdout.strip()
    failed = host.run("systemctl --failed --no-legend --plain").stdout
    assert state == "running", f"system is {state}; failed units:\n{failed}"


# --- 6. compilers and unneeded packages ----------------------------------------------------

ABSENT_PACKAGES = [
    "gcc", "gcc-12", "g++", "g++-12", "cpp", "cpp-12", "clang", "tcc",
    "telnet", "inetutils-telnet", "telnetd", "rsh-client", "rsh-redone-client", "rsh-server",
    "talk", "inetutils-talk", "nis", "ypserv", "xinetd", "openbsd-inetd", "tftp-hpa", "tftpd-hpa",
    "ftp", "vsftpd", "avahi-daemon", "cups", "cups-daemon", "rpcbind", "nfs-kernel-server", "slapd",
    "isc-dhcp-server", "snmpd",
]  # fmt: skip


@pytest.mark.parametrize("name", ABSENT_PACKAGES)
def test_unneeded_package_is_absent(host, name):
    assert not host.package(name).is_installed


@pytest.mark.parametrize("command", ["cc", "gcc", "gcc-12", "c++", "g++", "cpp", "telnet"])
def test_no_compiler_or_clear_text_client_on_path(host, command):
    assert not host.exists(command)


def test_no_apt_lists_are_left_in_the_layer(host):
    # the role installs packages (openssh-server, libpam-pwquality, auditd) and purges others:
    # its own layer must not carry package lists or downloaded packages. (/var/cache/apt/*.bin is
    # left out: package_facts rebuilds it from the empty lists on the idempotence run.)
    assert host.check_output("find /var/lib/apt/lists /var/cache/apt/archives -type f ! -name lock") == ""


# --- 1. sshd: installed, hardened, disabled ------------------------------------------------


def test_openssh_server_is_installed_but_disabled(host, in_container):
    assert host.package("openssh-server").is_installed
    ssh = host.service("ssh")
    assert not ssh.is_enabled
    if not in_container:
        pytest.skip("on a VM the tests connect through the sshd that break-glass started")
    assert not ssh.is_running
    assert not host.service("ssh.socket").is_enabled
    assert not host.socket("tcp://0.0.0.0:22").is_listening
    assert not host.socket("tcp://:::22").is_listening


def test_sshd_config_is_private(host):
    config = host.file("/etc/ssh/sshd_config")
    assert config.user == "root"
    assert config.group == "root"
    assert config.mode == 0o600


def _run_on(host):
    """The command runner sshd_effective.check expects: shell command -> (exit code, stdout, stderr)."""

    def run(command):
        result = host.run(command)
        return result.rc, result.stdout, result.stderr

    return run


def test_sshd_effective_configuration_is_hardened(host):
    # what sshd really uses (`sshd -T`, `sshd -T -C` for root, the break-glass account and every Match block of
    # the drop-ins; the banner of `sshd -i`), not what sshd_config says: a drop-in's Match block can override it
    problems = sshd_check.check(_run_on(host))
    assert problems == [], "\n".join(problems)


def test_sshd_check_catches_a_match_block_in_a_drop_in(host):
    """The check itself, on this sshd: a copy of the configuration whose drop-in re-enables passwords for one user."""
    scratch = "/tmp/bakery-sshd-check-selftest"
    host.run_test(f"rm -rf {scratch} && mkdir -p {scratch}/sshd_config.d")
    host.run_test(f"sed 's|^Include .*|Include {scratch}/sshd_config.d/*.conf|' /etc/ssh/sshd_config"
                  f" > {scratch}/sshd_config")
    host.run_test(f"printf 'Match User deploy\\n  PasswordAuthentication yes\\n' > {scratch}/sshd_config.d/50-x.conf")
    try:
        problems = sshd_check.check(_run_on(host), f"{scratch}/sshd_config")
    finally:
        host.run(f"rm -rf {scratch}")
    assert problems == ["user=deploy,host=client.example,addr=203.0.113.1: passwordauthentication is 'yes', want 'no'"]


def test_no_ssh_host_keys_are_baked(host):
    """None in the image; on an instance whose runtime config opened break-glass (verify --vm does) the
    break-glass unit made them at this boot."""
    keys = host.run("find /etc/ssh -name 'ssh_host_*'").stdout.split()
    if not opened_at_this_boot(host):
        assert keys == []
        return
    booted = int(host.check_output("awk '/^btime/ {print $2}' /proc/stat"))
    assert keys and all(int(host.check_output(f"stat -c %Y {key}")) >= booted for key in keys)


def opened_at_this_boot(host):
    """The runtime config of this boot asked for break-glass SSH (what bakery-runtime-config wrote)."""
    runtime = host.file("/run/bakery/runtime.env")
    return runtime.exists and 'BREAK_GLASS_SSH="true"' in runtime.content_string.splitlines()


def test_ssh_keysign_is_not_setuid(host):
    keysign = host.file("/usr/lib/openssh/ssh-keysign")
    assert keysign.exists
    assert not keysign.mode & 0o4000


# --- 3. kernel and network parameters ------------------------------------------------------

SYSCTL_EXPECTED = {
    "net.ipv4.ip_forward": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.secure_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.all.log_martians": "1",
    "net.ipv4.icmp_echo_ignore_broadcasts": "1",
    "net.ipv4.icmp_ignore_bogus_error_responses": "1",
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv6.conf.all.accept_ra": "0",
    "net.ipv6.conf.all.accept_redirects": "0",
    "kernel.randomize_va_space": "2",
    "kernel.kptr_restrict": "2",
    "kernel.dmesg_restrict": "1",
    "kernel.yama.ptrace_scope": "1",
    "fs.suid_dumpable": "0",
    "fs.protected_hardlinks": "1",
    "fs.protected_symlinks": "1",
}


def test_sysctl_hardening_file(host):
    # host.sysctl() would read the live kernel values, which a container cannot change
    # (/proc/sys is read-only and systemd-sysctl skips itself): check the file applied at boot on a VM.
    conf = host.file("/etc/sysctl.d/zz-bakery-hardening.conf")
    assert conf.user == "root"
    assert conf.mode == 0o644
    settings = {}
    for line in conf.content_string.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    for key, value in SYSCTL_EXPECTED.items():
        assert settings.get(key) == value, key


# --- 4. login.defs and PAM -----------------------------------------------------------------


def _login_defs(host):
    values = {}
    for line in _lines(host, "/etc/login.defs"):
        if line and not line.startswith("#"):
            parts = line.split(None, 1)
            values[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return values


def test_login_defs_password_aging_and_hashing(host):
    defs = _login_defs(host)
    assert defs["PASS_MAX_DAYS"] == "365"
    assert defs["PASS_MIN_DAYS"] == "1"
    assert defs["PASS_WARN_AGE"] == "7"
    assert defs["ENCRYPT_METHOD"] == "YESCRYPT"
    assert defs["YESCRYPT_COST_FACTOR"] == "5"


def test_new_accounts_are_locked_after_30_inactive_days(host):
    assert "INACTIVE=30" in host.check_output("useradd -D").splitlines()


def test_pwquality_is_installed_and_configured(host):
    assert host.package("libpam-pwquality").is_installed
    settings = {}
    for line in _lines(host, "/etc/security/pwquality.conf"):
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert int(settings["minlen"]) >= 14
    assert settings["minclass"] == "4"
    assert "enforce_for_root" in settings


def test_faillock_is_configured(host):
    settings = {}
    for line in _lines(host, "/etc/security/faillock.conf"):
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert settings["deny"] == "5"
    assert settings["unlock_time"] == "900"


def _pam_modules(host, stack):
    """(module, arguments) of the active lines of /etc/pam.d/common-<stack>, in order."""
    modules = []
    for line in _lines(host, f"/etc/pam.d/common-{stack}"):
        if not line or line.startswith("#"):
            continue
        fields = re.sub(r"\[[^]]*\]", "control", line).split()
        modules.append((fields[2], " ".join(fields[3:])))
    return modules


def test_faillock_is_in_the_auth_and_account_stacks(host):
    auth = _pam_modules(host, "auth")
    names = [name for name, _ in auth]
    preauth = auth.index(("pam_faillock.so", "preauth"))
    unix = names.index("pam_unix.so")
    authfail = auth.index(("pam_faillock.so", "authfail"))
    assert preauth < unix < authfail
    assert "pam_faillock.so" in [name for name, _ in _pam_modules(host, "account")]


def test_pam_unix_refuses_empty_passwords(host):
    for stack in ("auth", "password"):
        assert "nullok" not in host.file(f"/etc/pam.d/common-{stack}").content_string


def test_password_quality_and_history_come_before_pam_unix(host):
    password = _pam_modules(host, "password")
    names = [name for name, _ in password]
    assert names.index("pam_pwquality.so") < names.index("pam_pwhistory.so") < names.index("pam_unix.so")
    history = dict(password)["pam_pwhistory.so"]
    assert "remember=5" in history.split()
    assert "use_authtok" in history.split()


# --- 5. umask ------------------------------------------------------------------------------


def test_login_shells_get_umask_027(host):
    assert host.check_output("bash -l -c umask") == "0027"
    assert host.run(f"runuser -u {BREAK_GLASS_USER} -- bash -l -c umask").stdout.strip() == "0027"


def test_login_defs_umask(host):
    assert _login_defs(host)["UMASK"] == "027"


# --- 7. core dumps -------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["nobody", "root"])
def test_pam_sessions_cannot_dump_core(host, user):
    # runuser goes through PAM (pam_limits), like a login would.
    assert host.check_output(f"runuser -u {user} -- sh -c 'ulimit -H -c'") == "0"


def test_systemd_stores_no_core_dumps(host):
    coredump = host.file("/etc/systemd/coredump.conf.d/60-bakery.conf")
    assert coredump.contains("^Storage=none$")
    assert coredump.contains("^ProcessSizeMax=0$")
    assert host.file("/etc/systemd/system.conf.d/60-bakery-coredump.conf").contains("^DefaultLimitCORE=0$")


# --- 8. auditd -----------------------------------------------------------------------------


def test_auditd_is_installed_and_enabled(host):
    assert host.package("auditd").is_installed
    assert host.service("auditd").is_enabled


def test_auditd_skips_itself_in_a_container(host, in_container):
    dropin = host.file("/etc/systemd/system/auditd.service.d/60-bakery-skip-in-container.conf")
    assert dropin.contains("^ConditionVirtualization=!container$")
    assert_skipped_in_container_else_active(host, "auditd.service", in_container)


def test_audit_rules_are_loaded_and_locked_on_a_vm(host, in_container):
    if in_container:
        pytest.skip("a container has no kernel audit subsystem")
    status = dict(line.split(" ", 1) for line in host.check_output("auditctl -s").splitlines() if " " in line)
    assert status["enabled"] == "2"
    assert "-w /etc/shadow -p wa -k identity" in host.check_output("auditctl -l").splitlines()


AUDIT_RULES = [
    "-w /etc/passwd -p wa -k identity",
    "-w /etc/group -p wa -k identity",
    "-w /etc/shadow -p wa -k identity",
    "-w /etc/gshadow -p wa -k identity",
    "-w /etc/security/opasswd -p wa -k identity",
    "-w /etc/sudoers -p wa -k scope",
    "-w /etc/sudoers.d -p wa -k scope",
    "-w /etc/localtime -p wa -k time-change",
    "-w /var/log/lastlog -p wa -k logins",
    "-w /var/run/faillock -p wa -k logins",
    "-w /var/run/utmp -p wa -k session",
    "-w /var/log/wtmp -p wa -k session",
    "-w /var/log/btmp -p wa -k session",
    "-a always,exit -F arch=b64 -S adjtimex,settimeofday -k time-change",
    "-a always,exit -F arch=b64 -S mount -F auid>=1000 -F auid!=unset -k mounts",
    "-a always,exit -F arch=b64 -S init_module,finit_module,delete_module "
    "-F auid>=1000 -F auid!=unset -k kernel_modules",
    "-a always,exit -F path=/usr/bin/su -F perm=x -F auid>=1000 -F auid!=unset -k privileged",
    "-a always,exit -F path=/usr/bin/passwd -F perm=x -F auid>=1000 -F auid!=unset -k privileged",
]


@pytest.fixture(scope="module")
def audit_rules(host):
    return _lines(host, "/etc/audit/rules.d/60-bakery-hardening.rules")


@pytest.mark.parametrize("rule", AUDIT_RULES)
def test_audit_rule(audit_rules, rule):
    assert rule in audit_rules


def test_audit_rules_are_immutable_and_compiled(host):
    assert _lines(host, "/etc/audit/rules.d/99-bakery-finalize.rules")[-1] == "-e 2"
    # what augenrules --load will load at boot on a VM: the role's rules, "-e 2" last
    compiled = _lines(host, "/etc/audit/audit.rules")
    assert compiled[-1] == "-e 2"
    assert "-w /etc/shadow -p wa -k identity" in compiled
    assert host.check_output("augenrules --check") == "/usr/sbin/augenrules: No change"


def test_every_setuid_program_is_audited(host, audit_rules):
    programs = host.check_output("find / -xdev -type f -perm /6000").split()
    assert programs
    for program in programs:
        assert f"-a always,exit -F path={program} -F perm=x -F auid>=1000 -F auid!=unset -k privileged" in audit_rules


# --- 9. permissions of sensitive files -----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "user", "group", "mode"),
    [
        ("/etc/passwd", "root", "root", 0o644),
        ("/etc/group", "root", "root", 0o644),
        ("/etc/shadow", "root", "shadow", 0o640),
        ("/etc/gshadow", "root", "shadow", 0o640),
        ("/etc/cron.d", "root", "root", 0o700),
        ("/etc/cron.daily", "root", "root", 0o700),
    ],
)
def test_sensitive_file_permissions(host, path, user, group, mode):
    f = host.file(path)
    assert f.exists
    assert (f.user, f.group, f.mode) == (user, group, mode)


@pytest.mark.parametrize(("path", "mode"), [("/etc/crontab", 0o600), ("/boot/grub/grub.cfg", 0o400)])
def test_optional_sensitive_file_permissions(host, path, mode):
    f = host.file(path)
    require_planted(f.exists, path)
    assert f.user == "root"
    assert f.mode == mode


# --- 10. world-writable files --------------------------------------------------------------

WORLD_WRITABLE_FIND = (
    "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/tmp \\) -prune"
    " -o -type f -perm -0002 -print -o -type d -perm -0002 ! -perm -1000 -print"
)


def test_no_world_writable_files_or_unsticky_directories(host):
    assert host.check_output(WORLD_WRITABLE_FIND) == ""


def test_planted_world_writable_file_and_directory_were_fixed(host):
    planted_file = host.file(f"{PLANTED_DIR}/world-writable-file")
    planted_dir = host.file(f"{PLANTED_DIR}/world-writable-dir")
    require_planted(planted_file.exists, f"{PLANTED_DIR}/world-writable-file")
    assert planted_file.mode == 0o664
    assert planted_dir.mode == 0o1777


# --- 11. legal banner ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/etc/issue", "/etc/issue.net", "/etc/motd"])
def test_legal_banner_without_os_details(host, path):
    text = host.file(path).content_string
    assert text.startswith(BANNER_FIRST_LINE)
    assert "debian" not in text.lower()
    assert not re.search(r"\\[mrsvnl]", text), "getty escapes would print OS details"


def test_dynamic_motd_does_not_print_the_kernel(host):
    uname = host.file("/etc/update-motd.d/10-uname")
    if uname.exists:
        assert not uname.mode & 0o111


# --- 12. cron and at -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/etc/cron.allow", "/etc/at.allow"])
def test_cron_and_at_allow_only_root(host, path):
    f = host.file(path)
    assert f.content_string.split() == ["root"]
    assert f.user == "root"
    assert not f.mode & 0o007


@pytest.mark.parametrize("path", ["/etc/cron.deny", "/etc/at.deny"])
def test_cron_and_at_deny_lists_are_absent(host, path):
    assert not host.file(path).exists


# --- 13. accounts --------------------------------------------------------------------------


def _accounts(host):
    accounts = []
    for line in host.check_output("getent passwd").splitlines():
        name, _, uid, _, _, _, shell = line.split(":")
        accounts.append((name, int(uid), shell))
    return accounts


def test_no_account_has_a_password_hash_or_an_empty_password(host):
    for line in host.file("/etc/shadow").content_string.splitlines():
        name, password = line.split(":")[:2]
        assert not password.startswith("$"), f"{name} has a password hash"
        assert re.fullmatch(r"[!*]+", password), f"{name} has a usable password field {password!r}"


def test_planted_accounts_were_locked(host):
    require_planted(host.user("molecule-hashed").exists, "the account molecule-hashed")
    for name in ("molecule-hashed", "molecule-empty"):
        assert re.fullmatch(r"[!*]+", host.user(name).password), name


def test_system_accounts_have_no_login_shell(host):
    nologin = {"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"}
    for name, uid, shell in _accounts(host):
        if name in {"root", "sync", "shutdown", "halt"}:
            continue
        if uid < 1000 or uid == 65534:
            assert shell in nologin, f"{name} ({uid}) has the login shell {shell}"
    assert host.user("games").shell == "/usr/sbin/nologin"


# --- 14. kernel modules --------------------------------------------------------------------


def test_uncommon_modules_cannot_be_loaded(host):
    lines = _lines(host, "/etc/modprobe.d/60-bakery-hardening.conf")
    for module in ("cramfs", "freevxfs", "hfs", "hfsplus", "jffs2", "udf", "usb-storage",
                   "dccp", "sctp", "rds", "tipc"):
        assert f"install {module} /bin/false" in lines, module
        assert f"blacklist {module}" in lines, module


# --- 15. AppArmor ---------------------------------------------------------------------------

APPARMOR_DIR = "/etc/apparmor.d"
# profile files directly in /etc/apparmor.d whose flags ask for complain mode (comments left out)
APPARMOR_COMPLAIN_FIND = (
    f"find {APPARMOR_DIR} -maxdepth 1 -type f -exec grep -lE"
    " '^[^#]*\\((|[^)]*[[:space:],])complain([[:space:],)])' {} +"
)
PLANTED_APPARMOR_PROFILES = ["usr.local.bin.molecule-complain", "usr.local.bin.molecule-forced"]


def test_apparmor_is_installed_and_enabled(host):
    assert host.package("apparmor").is_installed
    assert host.service("apparmor").is_enabled


def test_apparmor_skips_itself_in_a_container(host, in_container):
    dropin = host.file("/etc/systemd/system/apparmor.service.d/60-bakery-skip-in-container.conf")
    assert dropin.contains("^ConditionVirtualization=!container$")
    assert_skipped_in_container_else_active(host, "apparmor.service", in_container)


def test_no_apparmor_profile_is_in_complain_mode(host):
    assert host.run(APPARMOR_COMPLAIN_FIND).stdout == ""
    assert host.check_output(f"find {APPARMOR_DIR}/force-complain -mindepth 1") == ""


def test_planted_complain_mode_profiles_were_enforced(host):
    planted = [f"{APPARMOR_DIR}/{name}" for name in PLANTED_APPARMOR_PROFILES]
    require_planted(all(host.file(path).exists for path in planted), "the planted AppArmor profiles")
    header = host.file(planted[0]).content_string
    assert "flags=(attach_disconnected)" in header  # complain gone, the other flag kept
    # both still compile (parsed only: a container cannot load profiles)
    for path in planted:
        host.run_test(f"apparmor_parser --skip-kernel-load --skip-cache --skip-read-cache "
                      f"--features-file {APPARMOR_DIR}/abi/3.0 {path}")


def test_apparmor_enforces_the_profiles_on_a_vm(host, in_container):
    if in_container:
        pytest.skip("a container cannot load AppArmor profiles")
    assert host.file("/sys/module/apparmor/parameters/enabled").content_string.strip() == "Y"
    assert host.check_output("aa-status --complaining") == "0"
    assert int(host.check_output("aa-status --enforced")) > 0


# --- 16. kernel command line ---------------------------------------------------------------

KERNEL_CMDLINE_FRAGMENT = "/etc/bakery/kernel-cmdline.d/50-hardening.conf"
KERNEL_ARGS = ["audit=1", "audit_backlog_limit=8192", "apparmor=1", "security=apparmor"]


def test_kernel_command_line_fragment(host):
    fragment = host.file(KERNEL_CMDLINE_FRAGMENT)
    assert (fragment.user, fragment.group, fragment.mode) == ("root", "root", 0o644)
    # one line of arguments, no comment: the disk builder joins the fragments into the boot entry
    assert fragment.content_string.splitlines() == [" ".join(KERNEL_ARGS)]


def test_kernel_booted_with_the_hardening_arguments_on_a_vm(host, in_container):
    if in_container:
        pytest.skip("a container shares the host's kernel and its command line")
    cmdline = host.file("/proc/cmdline").content_string.split()
    assert [arg for arg in KERNEL_ARGS if arg not in cmdline] == []


# --- 17. boot files ------------------------------------------------------------------------

BOOT_FILES_FIND = (
    "find /boot -maxdepth 1 -type f \\( -name 'vmlinuz-*' -o -name 'initrd.img-*'"
    " -o -name 'System.map-*' -o -name 'config-*' \\)"
)


def test_kernel_and_initramfs_are_readable_by_root_only(host):
    files = host.check_output(BOOT_FILES_FIND).split()
    require_planted(bool(files), "a kernel in /boot")
    for path in files:
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "root", 0o600), path


# --- 18. time synchronisation --------------------------------------------------------------


def test_timesyncd_is_installed_and_enabled(host):
    assert host.package("systemd-timesyncd").is_installed
    assert host.service("systemd-timesyncd").is_enabled
    for other in ("chrony", "ntp", "ntpsec", "openntpd"):
        assert not host.package(other).is_installed, f"{other}: one time daemon only (CIS 2.3.1.1)"


def test_timesyncd_uses_the_amazon_time_sync_service(host):
    conf = host.file("/etc/systemd/timesyncd.conf.d/60-bakery.conf")
    assert conf.mode == 0o644
    lines = _lines(host, conf.path)
    assert "[Time]" in lines
    assert "NTP=169.254.169.123" in lines
    assert "FallbackNTP=" in lines  # no built-in pool servers behind the configured ones


def test_timesyncd_skips_itself_in_a_container(host, in_container):
    assert_skipped_in_container_else_active(host, "systemd-timesyncd.service", in_container)
    if not in_container:
        assert host.check_output("timedatectl show -p NTP --value") == "yes"
        assert host.check_output("timedatectl show-timesync -p SystemNTPServers --value") == "169.254.169.123"


# --- 2b. sudo ------------------------------------------------------------------------------


def test_sudo_is_installed_with_the_cis_defaults(host):
    assert host.package("sudo").is_installed
    dropin = host.file("/etc/sudoers.d/60-bakery-hardening")
    assert (dropin.user, dropin.group, dropin.mode) == ("root", "root", 0o440)
    host.run_test("visudo -c")
    # what sudo really uses (root sees the defaults in `sudo -V`), not what the file says
    effective = host.check_output("sudo -V")
    assert "Always run commands in a pseudo-tty" in effective  # CIS 5.2.2 use_pty
    assert f"Path to log file: {SUDO_LOG}" in effective  # CIS 5.2.3
    assert "Authentication timestamp timeout: 5.0 minutes" in effective  # CIS 5.2.6


def _sudoers_rules(host, path):
    """The lines of a sudoers file that grant something (not comments, Defaults or includes), blanks squeezed."""
    return [" ".join(line.split()) for line in _lines(host, path)
            if line and not line.startswith(("#", "Defaults", "@include"))]


def test_no_sudo_rule_is_baked_except_root(host):
    assert _sudoers_rules(host, "/etc/sudoers") == ["root ALL=(ALL:ALL) ALL"]
    for path in host.check_output("find /etc/sudoers.d -type f").split():
        if path != BREAK_GLASS_SUDOERS:  # written at boot, only when the runtime config asks for it
            assert _sudoers_rules(host, path) == [], path
    assert "!authenticate" not in host.check_output("cat /etc/sudoers /etc/sudoers.d/*")  # CIS 5.2.5


def test_break_glass_account_has_no_sudo_unless_break_glass_granted_it(host):
    if host.file(BREAK_GLASS_SUDOERS).exists:
        pytest.skip("this boot's runtime config granted the break-glass account sudo")
    listed = host.run(f"sudo -l -U {BREAK_GLASS_USER}").stdout
    assert f"User {BREAK_GLASS_USER} is not allowed to run sudo" in listed


# --- 2. break-glass (last: it opens SSH, then puts everything back) -------------------------


def test_break_glass_unit_is_enabled_after_the_runtime_config(host):
    unit = host.service("bakery-break-glass")
    assert unit.is_enabled
    assert "bakery-runtime-config.service" in unit.systemd_properties["After"].split()
    assert unit.systemd_properties["EnvironmentFiles"].startswith("/run/bakery/runtime.env (ignore_errors=yes)")


@pytest.mark.parametrize(
    "runtime_env",
    [None, 'BREAK_GLASS_SSH="false"\\nOTHER_KEY="x"\\n', 'BREAK_GLASS_SSH="false"\\nBREAK_GLASS_SSH_SUDO="true"\\n'],
)
def test_break_glass_does_nothing_unless_the_runtime_config_says_true(host, container_only, runtime_env):
    had_runtime_dir = host.file("/run/bakery").exists
    if runtime_env:
        host.run_test(f"mkdir -p /run/bakery && printf '{runtime_env}' > {RUNTIME_ENV}")
    try:
        host.run_test("systemctl restart bakery-break-glass")
        props = host.service("bakery-break-glass").systemd_properties
        assert props["ActiveState"] == "active"
        assert props["Result"] == "success"
        assert not host.service("ssh").is_running
        assert host.run("find /etc/ssh -name 'ssh_host_*'").stdout.strip() == ""
        assert not host.file(BREAK_GLASS_SUDOERS).exists
    finally:
        if runtime_env:
            host.run(f"rm -f {RUNTIME_ENV}")
            if not had_runtime_dir:
                host.run("rmdir /run/bakery")


@pytest.fixture
def break_glass_opened(host, container_only):
    """Deliver BREAK_GLASS_SSH=true with a client key in the runtime config and restart the unit; undo afterwards."""
    yield from _open_break_glass(host, "")


@pytest.fixture
def break_glass_opened_with_sudo(host, container_only):
    """Break-glass as the VM verify asks for it: SSH, a key, and root through sudo for this boot."""
    yield from _open_break_glass(host, 'BREAK_GLASS_SSH_SUDO="tRUE"\\n')


def _open_break_glass(host, extra_env):
    key = "/root/molecule-break-glass-key"
    had_runtime_dir = host.file("/run/bakery").exists
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    host.run_test(f"ssh-keygen -q -t ed25519 -N '' -C molecule-break-glass -f {key}")
    public_key = host.file(f"{key}.pub").content_string.strip()
    host.run_test("mkdir -p /run/bakery")
    # the format bakery-runtime-config.service (base role) writes: KEY="value" lines
    host.run_test(f"""printf 'BREAK_GLASS_SSH="True"\\nBREAK_GLASS_SSH_AUTHORIZED_KEY="%s"\\n{extra_env}' """
                  f"""'{public_key}' > {RUNTIME_ENV}""")
    restart = host.run("systemctl restart bakery-break-glass")
    try:
        yield {"key": key, "since": since, "restart": restart}
    finally:
        host.run("systemctl stop ssh.service")
        host.run("rm -f /etc/ssh/ssh_host_* /root/.ssh/known_hosts")
        host.run(f"rm -rf /run/bakery-break-glass {key} {key}.pub")
        host.run(f"rm -f {RUNTIME_ENV}")
        if not had_runtime_dir:
            host.run("rmdir /run/bakery")
        host.run("systemctl restart bakery-break-glass")
        host.run("systemctl reset-failed")


def _ssh(host, key, user, command="true", *options):
    opts = " ".join(f"-o {option}" for option in options)
    return host.run(
        f"ssh -i {key} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        f" -o ConnectTimeout=10 {opts} {user}@127.0.0.1 {command}"
    )


def test_break_glass_opens_ssh_loudly(host, break_glass_opened):
    assert break_glass_opened["restart"].rc == 0, break_glass_opened["restart"].stderr
    assert host.service("ssh").is_running
    assert host.socket("tcp://0.0.0.0:22").is_listening
    # host keys were made on the instance, now
    for kind in ("ed25519", "rsa"):
        assert host.file(f"/etc/ssh/ssh_host_{kind}_key").mode == 0o600
    # a loud journal entry: priority crit or worse, text BREAK-GLASS
    journal = host.check_output(f"journalctl --no-pager -q -p crit --since '{break_glass_opened['since']}' "
                                "-t bakery-break-glass")
    assert "BREAK-GLASS" in journal

    key = break_glass_opened["key"]
    login = _ssh(host, key, BREAK_GLASS_USER, "id -un")
    assert login.rc == 0, login.stderr
    assert login.stdout.strip() == BREAK_GLASS_USER
    assert BANNER_FIRST_LINE in login.stderr  # Banner /etc/issue.net
    # root may not log in, even with an authorised key
    host.run_test(f"cp {key}.pub /run/bakery-break-glass/authorized_keys/root")
    assert _ssh(host, key, "root").rc != 0
    # only public keys are offered: no passwords, no keyboard-interactive
    denied = _ssh(host, key, BREAK_GLASS_USER, "true", "PubkeyAuthentication=no")
    assert denied.rc != 0
    assert "Permission denied (publickey)" in denied.stderr

    # no root unless the runtime config asks for it
    assert not host.file(BREAK_GLASS_SUDOERS).exists
    no_sudo = _ssh(host, key, BREAK_GLASS_USER, "sudo -n true")
    assert no_sudo.rc != 0

    # the system stays healthy with SSH open
    assert host.check_output("systemctl is-system-running") == "running"


def test_break_glass_grants_sudo_for_this_boot_when_asked(host, break_glass_opened_with_sudo):
    opened = break_glass_opened_with_sudo
    assert opened["restart"].rc == 0, opened["restart"].stderr
    dropin = host.file(BREAK_GLASS_SUDOERS)
    assert (dropin.user, dropin.group, dropin.mode) == ("root", "root", 0o440)
    assert _lines(host, BREAK_GLASS_SUDOERS) == [f"{BREAK_GLASS_USER} ALL=(ALL) NOPASSWD: ALL"]
    host.run_test("visudo -c")
    # sudo ignores file names with a dot: no half-written candidate may be left beside it
    assert host.check_output("find /etc/sudoers.d -name '.*' -type f") == ""
    root = _ssh(host, opened["key"], BREAK_GLASS_USER, "sudo -n id -u")
    assert root.rc == 0, root.stderr
    assert root.stdout.strip() == "0"
    journal = host.check_output(f"journalctl --no-pager -q -p crit --since '{opened['since']}' -t bakery-break-glass")
    assert "BREAK_GLASS_SSH_SUDO" in journal
    # CIS 5.2.3: sudo writes its own log file, which the audit rules watch
    assert "COMMAND=/usr/bin/id -u" in host.file(SUDO_LOG).content_string


def test_break_glass_removes_a_sudo_grant_of_an_earlier_boot(host, container_only):
    # /etc survives a reboot, so a grant from the last break-glass boot would outlive it
    host.run_test(f"printf '{BREAK_GLASS_USER} ALL=(ALL) NOPASSWD: ALL\\n' > {BREAK_GLASS_SUDOERS}"
                  f" && chmod 0440 {BREAK_GLASS_SUDOERS}")
    try:
        host.run_test("systemctl restart bakery-break-glass")
        assert not host.file(BREAK_GLASS_SUDOERS).exists
        assert host.service("bakery-break-glass").systemd_properties["Result"] == "success"
    finally:
        host.run(f"rm -f {BREAK_GLASS_SUDOERS}")


def test_break_glass_left_no_trace(host, container_only):
    assert not host.service("ssh").is_running
    assert host.run("find /etc/ssh -name 'ssh_host_*'").stdout.strip() == ""
    assert not host.file(RUNTIME_ENV).exists
    assert not host.file(BREAK_GLASS_SUDOERS).exists
    assert host.check_output("systemctl is-system-running") == "running"
