"""The verify VM's one channel in: the image's own break-glass SSH, opened for this boot only.

A fresh ed25519 key pair is made per verification; its public half goes into the VM's UserData (the runtime
config keys the hardening role's break-glass unit reads), its private half stays in the run directory (0600)
and is deleted when the verification ends. Nothing is baked into the image for testing: the same path is
how an operator opens a production instance. The host key is new in every VM, so it is not pinned.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bakery.errors import ConfigError, OperationError

USER = "breakglass"


def require_client() -> None:
    """ssh and ssh-keygen, or exit 2 naming the package."""
    for command in ("ssh", "ssh-keygen"):
        if shutil.which(command) is None:
            raise ConfigError(f"{command} is not installed (Debian package openssh-client): run make setup")


def make_key(directory: Path) -> tuple[Path, str]:
    """(private key path, public key line) of a new one-time key pair."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = directory / "id_ed25519"
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bakery-verify-vm", "-f", str(private)],
                       check=True, capture_output=True, timeout=30)
    except FileNotFoundError as exc:
        raise ConfigError("ssh-keygen is not installed (Debian package openssh-client): run make setup") from exc
    return private, private.with_suffix(".pub").read_text(encoding="utf-8").strip()


def runtime_lines(public_key: str) -> str:
    """The runtime config that opens break-glass SSH with root through sudo, for this boot only."""
    return ('BREAK_GLASS_SSH="true"\n'
            f'BREAK_GLASS_SSH_AUTHORIZED_KEY="{public_key}"\n'
            'BREAK_GLASS_SSH_SUDO="true"\n')


class GuestShell:
    """Commands in the guest over SSH, as the break-glass account (root through sudo)."""

    def __init__(self, directory: Path, key: Path, port: int):
        self.port = port
        self.config = directory / "ssh_config"
        # the multiplexing socket: a run directory's path can be longer than a unix socket path may be
        self.control_dir = Path(tempfile.mkdtemp(prefix="bakery-ssh-"))
        self.config.write_text(
            f"Host guest\n  HostName 127.0.0.1\n  Port {port}\n  User {USER}\n  IdentityFile {key}\n"
            "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
            "  LogLevel ERROR\n  ConnectTimeout 5\n  BatchMode yes\n"
            # one connection for every command: a key exchange costs seconds in an emulated guest
            f"  ControlMaster auto\n  ControlPath {self.control_dir}/%C\n  ControlPersist 600\n", encoding="utf-8")

    def close(self) -> None:
        """End the shared connection and remove its socket directory."""
        subprocess.run(["ssh", "-F", str(self.config), "-O", "exit", "guest"], capture_output=True, timeout=30,
                       check=False)
        shutil.rmtree(self.control_dir, ignore_errors=True)

    @property
    def testinfra_host(self) -> str:
        return "ssh://guest"

    def run(self, command: str, *, sudo: bool = True, stdin: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        remote = f"sudo -n {command}" if sudo else command
        try:
            return subprocess.run(["ssh", "-F", str(self.config), "guest", remote], input=stdin, capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise OperationError(f"'{shlex.join(command.split()[:3])}' in the VM did not finish within "
                                 f"{timeout:g} s") from exc

    def wait_reachable(self, timeout: float) -> str:
        """Wait until SSH lets the key in and sudo works; '' then, else the last error."""
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            proc = self.run("true", timeout=30)
            if proc.returncode == 0:
                return ""
            last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            time.sleep(2)
        return last
