"""Bootable disk and VM verify: the disk build against `podman export | tar`, the VM verify against the container one.

    .venv/bin/python bench/bench_disk_vm.py --project /tmp/e2e --image webapp [--rounds 1] [--vm]

All in one run, side by side, on the newest version of the image in an already baked project:
- floor: `podman create` of the version, `podman export | tar -x` into a temporary directory;
- cold disk: `bake.py disk IMAGE:V --json` with the recorded disk file moved aside (the catalog still lists it,
  so the call rebuilds the same disk); cached: the same call again. The disk file is put back afterwards
  (the original bytes when the rebuild is byte-identical), so the project is left as found;
- with --vm: `verify IMAGE:V --env qa` (containers) and `verify IMAGE:V --vm --env qa` under TCG, each whole,
  with the VM's boot-to-running (vm-boot) and no-NIC boot (vm-offline-boot) from its checks, and the
  accelerator the KVM probe picks on this machine.
Emulated VMs on 2 cores distort each other: every measurement first waits until no qemu-system process runs
(at most 15 minutes) and the table gives the load average at its start. Logs go to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from common import BAKE, BENCH_LABEL, PYTHON, REPO, log, median, run, spread

GIB = 1 << 30
QUIET_POLL = 20.0  # seconds between two looks for another VM
QUIET_LIMIT = 15 * 60.0  # in all, per run
VERIFY_TIMEOUT = 1800


@dataclass
class Measured:
    """One measurement: its runs' seconds, the 1-minute load average at the start of each run, its last result."""

    seconds: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    result: dict = field(default_factory=dict)
    busy: bool = False  # another qemu-system still ran when a run started

    @property
    def median(self) -> float:
        return median(self.seconds)


def busy(project: Path) -> str:
    """What runs that would distort a measurement or race it: a VM, or a disk or verify of this project."""
    for pattern in ("qemu-system", rf"bake\.py .*--project {re.escape(str(project))} .*(disk|verify)"):
        if subprocess.run(["pgrep", "-f", pattern], capture_output=True, check=False).returncode == 0:
            return pattern.replace("\\", "")
    return ""


def wait_for_quiet(project: Path, deadline: list[float]) -> bool:
    """Wait until nothing `busy` runs, QUIET_LIMIT at most over the whole run; False when something still does."""
    if not deadline:
        deadline.append(time.monotonic() + QUIET_LIMIT)
    while running := busy(project):
        if time.monotonic() >= deadline[0]:
            log(f"{running} still runs ({QUIET_LIMIT / 60:.0f} min of waiting used up): measuring anyway")
            return False
        log(f"another process ({running}) runs: waiting")
        time.sleep(QUIET_POLL)
    return True


WAIT_DEADLINE: list[float] = []  # set by the first wait: all waits of one run share the QUIET_LIMIT


def ancestors(pid: int) -> set[int]:
    found = set()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def foreign_vm() -> bool:
    """A qemu-system process that this benchmark did not start (another session's VM) runs now."""
    pids = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True, check=False).stdout.split()
    return any(os.getpid() not in ancestors(int(pid)) for pid in pids)


def measure(project: Path, what: Measured, step) -> None:
    """One run of `step` (returns the result dict), timed, after waiting for the machine to be free of VMs; a VM
    of someone else's that starts meanwhile is noticed (sampled every 5 s) and flagged in the table."""
    what.busy |= not wait_for_quiet(project, WAIT_DEADLINE)
    what.loads.append(os.getloadavg()[0])
    done = threading.Event()

    def watch() -> None:
        while not done.wait(5.0):
            what.busy |= foreign_vm()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        what.result = step()
    finally:
        done.set()
        watcher.join()
    what.seconds.append(time.monotonic() - started)


def bake(project: Path, *args: str, env: dict[str, str] | None = None, failing_ok: bool = False) -> dict:
    """bake.py ... --json; with failing_ok a failed verification (exit 1 with its JSON) is a result too."""
    cmd = [str(PYTHON), str(BAKE), "--project", str(project), *args, "--json"]
    if not failing_ok:
        return json.loads(run(cmd, env=env, timeout=VERIFY_TIMEOUT).stdout)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=VERIFY_TIMEOUT, check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        tail = (proc.stderr.strip() or "no output").splitlines()[-1]
        raise SystemExit(f"bench: {' '.join(args)} failed (exit {proc.returncode}): {tail}") from None


def newest(project: Path, image: str) -> dict:
    versions = [v for v in bake(project, "images", image) if v.get("status") == "ready"]
    if not versions:
        raise SystemExit(f"bench: {image} has no ready version in {project}: bake it first")
    return versions[0]


def tree_bytes(root: Path) -> int:
    """Allocated bytes of a directory tree, each hard-linked file once."""
    seen, total = set(), 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            info = os.lstat(os.path.join(folder, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def export_floor(image_ref: str) -> dict:
    """podman export of a container of the version, untarred: the least any disk build must do."""
    cid = run(["podman", "create", "--label", f"{BENCH_LABEL}=disk-floor", image_ref]).stdout.strip()
    target = Path(tempfile.mkdtemp(prefix="bench-disk-floor-"))
    try:
        export = subprocess.Popen(["podman", "export", cid], stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", str(target)], stdin=export.stdout, capture_output=True,
                               check=False)
        export.stdout.close()  # type: ignore[union-attr]
        if export.wait() != 0 or untar.returncode != 0:
            raise SystemExit(f"bench: podman export {cid[:12]} | tar -x failed: {untar.stderr.decode()[-200:]}")
        return {"tree_bytes": tree_bytes(target)}
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", cid], capture_output=True, check=False)
        shutil.rmtree(target, ignore_errors=True)


class DiskAside:
    """Moves the recorded disk file aside so that `disk` rebuilds it, and puts the project back as found."""

    def __init__(self, first: dict):
        self.target = Path(first["path"])
        self.original_sha = first["sha256"] if first["cached"] else None  # None: there was no disk before
        # outside the project: gc would take a disk file in .bakery/disks that the catalog does not list
        self.aside = Path(tempfile.mkdtemp(prefix="bench-disk-aside-"))
        self.rebuilt_sha: str | None = None
        shutil.move(self.target, self.aside / self.target.name)

    def restore(self) -> str:
        kept = self.aside / self.target.name
        if self.original_sha is None:
            self.target.unlink(missing_ok=True)
            note = "no disk was there before: the one built here is removed"
        elif self.rebuilt_sha in (None, self.original_sha):
            shutil.move(kept, self.target)
            note = "the original disk file is back in place"
        else:  # the catalog now lists the rebuilt disk's sha256: keep that one
            note = (f"NOT REPRODUCIBLE: rebuilt sha256 {self.rebuilt_sha[:12]} != recorded {self.original_sha[:12]};"
                    " the rebuilt disk (as the catalog now lists it) is kept")
        shutil.rmtree(self.aside, ignore_errors=True)
        log(note)
        return note


def measure_disks(project: Path, ref: str, image_ref: str, rounds: int, cleanup: ExitStack) -> dict:
    floor, cold, cached = Measured(), Measured(), Measured()
    for _ in range(rounds):
        measure(project, floor, lambda: export_floor(image_ref))
    first = bake(project, "disk", ref)  # finds the recorded disk (or builds it when there is none)
    aside = DiskAside(first)
    cleanup.callback(aside.restore)
    shas = []
    for n in range(rounds):
        if n:
            aside.target.unlink()
        measure(project, cold, lambda: bake(project, "disk", ref))
        if cold.result.get("cached"):
            raise SystemExit("bench: the disk call with the disk file moved aside did not rebuild it")
        shas.append(cold.result["sha256"])
        aside.rebuilt_sha = cold.result["sha256"]
    for _ in range(rounds):
        measure(project, cached, lambda: bake(project, "disk", ref))
    reproducible = len(set(shas)) == 1 and (aside.original_sha in (None, shas[0]))
    return {"floor": floor, "cold": cold, "cached": cached, "reproducible": reproducible}


def probe_accel() -> str:
    """What the KVM probe picks here, as `python -c "...print(accel.probed())"` prints it, BAKERY_VM_ACCEL unset."""
    env = {k: v for k, v in os.environ.items() if k != "BAKERY_VM_ACCEL"}
    return run([str(PYTHON), "-c", "from bakery.disks import accel; print(accel.probed())"], env=env,
               cwd=REPO).stdout.strip()


def measure_vms(project: Path, ref: str, rounds: int) -> dict:
    container, vm = Measured(), Measured()
    tcg = dict(os.environ, BAKERY_VM_ACCEL="tcg")
    for _ in range(rounds):  # alternating: both see the same drift of the machine
        measure(project, container, lambda: bake(project, "verify", ref, "--env", "qa", failing_ok=True))
        measure(project, vm, lambda: bake(project, "verify", ref, "--vm", "--env", "qa", env=tcg, failing_ok=True))
    checks = {c["name"]: c for c in vm.result.get("checks", [])}
    accel = probe_accel()
    found: dict = {"container": container, "vm": vm, "checks": checks, "accel": accel}
    if "name='kvm'" in accel:  # a runner whose KVM works: the same verify with it
        found["kvm"] = kvm = Measured()
        for _ in range(rounds):
            measure(project, kvm, lambda: bake(project, "verify", ref, "--vm", "--env", "qa",
                                      env=dict(os.environ, BAKERY_VM_ACCEL="kvm"), failing_ok=True))
    return found


def load(m: Measured) -> str:
    return " / ".join(f"{x:.2f}" for x in m.loads) + (" (another session's VM ran meanwhile)" if m.busy else "")


def disk_rows(d: dict) -> list[str]:
    floor, cold, cached = d["floor"], d["cold"], d["cached"]
    disk = cold.result
    allocated, size = disk["allocated"], disk["bytes"]
    return [
        f"| floor: `podman export \\| tar -x` | {floor.median:.1f} s | {spread(floor.seconds)} | 1.00 | "
        f"{load(floor)} |",
        f"| cold `disk` (raw) | {cold.median:.1f} s | {spread(cold.seconds)} | "
        f"cold/floor {cold.median / floor.median:.2f}x | {load(cold)} |",
        f"| cached `disk` (second call) | {cached.median:.2f} s | {spread(cached.seconds)} | "
        f"cached/cold {cached.median / cold.median:.3f}x | {load(cached)} |",
        "",
        f"- disk: virtual size {size / GIB:.2f} GiB, allocated {allocated / 2**20:.0f} MiB "
        f"(<= 1 GiB: {'yes' if allocated <= GIB else 'no'}); floor tree {floor.result['tree_bytes'] / 2**20:.0f} MiB",
        f"- sha256 {disk['sha256'][:16]}...: every cold build and the recorded disk identical: "
        f"{'yes' if d['reproducible'] else 'no'}",
    ]


def vm_rows(v: dict) -> list[str]:
    container, vm, checks = v["container"], v["vm"], v["checks"]

    def check(name: str) -> str:
        c = checks.get(name)
        if c is None or c.get("skipped"):
            return "skipped" + (f" ({c['message'][:60]})" if c else "")
        return f"{c['seconds']:.1f} s" + ("" if c["passed"] else " (failed)")

    def passed(m: Measured) -> str:
        return "passed" if m.result.get("passed") else f"FAILED: {m.result.get('summary', '')[:120]}"

    kvm = "n/a here (the probe fell back to TCG)"
    if "kvm" in v:
        kvm = f"VM verify under KVM {v['kvm'].median:.1f} s ({spread(v['kvm'].seconds)}), {passed(v['kvm'])}"
    return [
        f"| container `verify --env qa` | {container.median:.1f} s | {spread(container.seconds)} | 1.00 | "
        f"{load(container)} |",
        f"| VM `verify --vm --env qa` (TCG) | {vm.median:.1f} s | {spread(vm.seconds)} | "
        f"VM/container {vm.median / container.median:.2f}x | {load(vm)} |",
        f"| VM boot to running (vm-boot) | {check('vm-boot')} | last run | | |",
        f"| VM boot with no NIC (vm-offline-boot) | {check('vm-offline-boot')} | last run | | |",
        "",
        f"- container verify: {passed(container)}; VM verify: {passed(vm)}",
        f"- accelerator the probe picks here: {v['accel']}; KVM figure: {kvm}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True, help="an already baked project (not touched beyond "
                        "new run directories and verification records)")
    parser.add_argument("--image", default="webapp")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--vm", action="store_true", help="also the container and the VM verify (about 6 min a round)")
    args = parser.parse_args()
    project = args.project.resolve()
    version = newest(project, args.image)
    ref = f"{args.image}:{version['version']}"
    log(f"{ref} ({version['image_ref']}) in {project}, {args.rounds} round(s)")
    with ExitStack() as cleanup:
        disks = measure_disks(project, ref, version["image_ref"], args.rounds, cleanup)
    vms = measure_vms(project, ref, args.rounds) if args.vm else None
    header = "| measure | median | runs / spread | ratio | load avg (1 min) at start |"
    lines = [f"{ref}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}", "", header, "|---|---|---|---|---|",
             *disk_rows(disks)]
    if vms is not None:
        lines += ["", header, "|---|---|---|---|---|", *vm_rows(vms)]
    lines.append(f"- load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
