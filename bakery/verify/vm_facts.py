"""Judge the kernel-level facts guest_facts.py reports from the verify VM: one JUnit check per control.

Each check fails naming the cause (the sysctl key, file and both values; the module that loaded; the mount and
the option it lacks), so a failed verification says what to fix without opening the VM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bakery.disks.layout import Layout
from bakery.verify.junit import Check

GUEST_SCRIPT = Path(__file__).with_name("guest_facts.py")


def _check(name: str, problems: list[str], ok: str) -> Check:
    if problems:
        return Check(name, False, 0.0, "; ".join(problems[:10]) + (f" and {len(problems) - 10} more"
                                                                     if len(problems) > 10 else ""))
    return Check(name, True, 0.0, output=ok)


def sysctl(facts: dict[str, Any]) -> Check:
    """Every baked key in effect with the value of the file systemd-sysctl applies last."""
    effective: dict[str, dict[str, Any]] = {}
    for entry in facts["sysctl"]:
        effective[entry["key"]] = entry
    problems = []
    for key, entry in sorted(effective.items()):
        if entry["have"] is None:
            if not entry["optional"]:
                problems.append(f"{key} (set in {entry['file']}) does not exist in this kernel")
        elif entry["have"] != entry["want"]:
            problems.append(f"{key} is {entry['have']}, not {entry['want']} as {entry['file']} sets it")
    return _check("vm-sysctl", problems, f"{len(effective)} baked kernel parameters in effect")


def audit(facts: dict[str, Any]) -> Check:
    status = dict(line.split(" ", 1) for line in facts["audit"]["status"].splitlines() if " " in line)
    problems = []
    if facts["audit"]["rc"] != 0:
        problems.append(f"auditctl -s failed: {facts['audit']['error'] or 'auditd not installed?'}")
    elif status.get("enabled") != "2":
        problems.append(f"audit is 'enabled {status.get('enabled', '?')}', not 2 (rules loaded and immutable)")
    if facts["audit"]["rules"] == 0:
        problems.append("no audit rules are loaded")
    if "audit=1" not in facts["cmdline"].split():
        problems.append("audit=1 is not on the kernel command line")
    return _check("vm-audit", problems, f"audit enabled 2 (immutable), {facts['audit']['rules']} rules loaded")


def apparmor(facts: dict[str, Any]) -> Check:
    state = facts["apparmor"]
    problems = []
    if state["enabled"] != "Y":
        problems.append(f"AppArmor is not enabled in the kernel (enabled={state['enabled'] or 'absent'})")
    if "apparmor" not in state["lsm"].split(","):
        problems.append(f"apparmor is not an active LSM ({state['lsm'] or 'none'})")
    profiles = state["profiles"]
    if not profiles:
        problems.append("no AppArmor profile is loaded")
    problems += [f"profile {name} is in {mode} mode, not enforce" for name, mode in sorted(profiles.items())
                 if mode != "enforce"]
    return _check("vm-apparmor", problems, f"AppArmor enabled, {len(profiles)} profiles enforced")


def modules(facts: dict[str, Any]) -> Check:
    entries = facts["modules"]
    # `install X /bin/true` makes modprobe succeed without loading: only /sys/module tells then
    problems = [f"module {m['module']} loaded despite the image's modprobe.d" for m in entries
                if m["loaded"] or (m["modprobe_rc"] == 0 and not m.get("install", "").endswith("true"))]
    present = [m["module"] for m in entries if m["exists"]]
    return _check("vm-modules", problems, f"{len(entries)} disabled modules refused "
                                          f"({len(present)} of them shipped by this kernel: {', '.join(present)})")


def partitions(facts: dict[str, Any], layout: Layout) -> Check:
    mounted = {m["target"]: m for m in facts["mounts"]}
    problems = []
    for part in layout.all:
        entry = mounted.get(part.mount)
        if entry is None:
            problems.append(f"{part.mount} is not a separate mount")
            continue
        have = set(entry["options"].split(","))
        wanted = [o for o in part.options if o in ("nodev", "nosuid", "noexec")]
        problems += [f"{part.mount} is mounted without {o}" for o in wanted if o not in have]
    return _check("vm-partitions", problems,
                  f"{len(layout.all)} separate partitions mounted with their options")


def timesync(facts: dict[str, Any]) -> Check:
    state = facts["timesync"]
    return _check("vm-time-sync", [] if state == "active" else [f"systemd-timesyncd is {state or 'absent'}"],
                  "systemd-timesyncd is active")


def root_growth(facts: dict[str, Any], built_root: int, extra: int) -> Check:
    """The root filesystem grew into the volume at first boot: the VM's volume is `extra` bytes larger than the
    disk, as an EBS volume may be larger than its snapshot."""
    grown = facts["root_bytes"]
    return _check("vm-root-growth", [] if grown > built_root + extra // 2 else [
        f"the root filesystem is {grown >> 20} MiB after boot on a volume {extra >> 20} MiB larger than the disk: "
        f"it did not grow (built {built_root >> 20} MiB)"],
        f"root grew from {built_root >> 20} MiB to {grown >> 20} MiB")


def judge(facts: dict[str, Any], layout: Layout, built_root: int, extra: int) -> list[Check]:
    return [sysctl(facts), audit(facts), apparmor(facts), modules(facts), partitions(facts, layout),
            timesync(facts), root_growth(facts, built_root, extra)]
