"""Runs INSIDE the verify VM (python3 from the image, as root through sudo; standard library only) and prints one
JSON document of the kernel-level facts a container cannot show. bakery sends this file over SSH on stdin and
judges the facts on the host (vm_facts.py): nothing of it is baked into the image.
"""

import glob
import json
import os
import re
import subprocess


def sh(*argv):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def sysctls():
    """Every key the image's /etc/sysctl.d files set, in systemd-sysctl's order (Debian's /etc/sysctl.conf is
    there as 99-sysctl.conf)."""
    files = sorted(glob.glob("/etc/sysctl.d/*.conf"), key=os.path.basename)
    found = []
    for path in files:
        for line in (read(path) or "").splitlines():
            line = line.strip()
            if not line or line[0] in "#;" or "=" not in line:
                continue
            optional = line.startswith("-")  # systemd-sysctl ignores a missing key marked so
            key, _, value = line.lstrip("-").partition("=")
            key = key.strip().replace("/", ".")
            if "*" in key:
                continue
            live = read("/proc/sys/" + key.replace(".", "/"))
            found.append({"key": key, "want": " ".join(value.split()), "file": path, "optional": optional,
                          "have": " ".join(live.split()) if live is not None else None})
    return found


def modules():
    """Modules the image's modprobe.d keeps out (install ... /bin/false|true, blacklist), each tried for real."""
    names = {}
    for path in glob.glob("/etc/modprobe.d/*.conf"):
        for line in (read(path) or "").splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "install" and words[2] in ("/bin/false", "/bin/true",
                                                                          "/usr/bin/false", "/usr/bin/true"):
                names[words[1]] = words[2]
    result = []
    for name in sorted(names):
        code, _, err = sh("modprobe", name)
        exists = sh("modinfo", name)[0] == 0
        loaded = os.path.isdir("/sys/module/" + name.replace("-", "_"))
        result.append({"module": name, "modprobe_rc": code, "exists": exists, "loaded": loaded,
                       "install": names[name],
                       "message": err.strip()[-200:]})
    return result


def apparmor():
    profiles = read("/sys/kernel/security/apparmor/profiles") or ""
    modes = {}
    for line in profiles.splitlines():
        match = re.match(r"^(.*) \((\w+)\)$", line.strip())
        if match:
            modes[match.group(1)] = match.group(2)
    return {"enabled": (read("/sys/module/apparmor/parameters/enabled") or "").strip(),
            "lsm": (read("/sys/kernel/security/lsm") or "").strip(), "profiles": modes}


def main():
    audit_rc, audit_status, audit_err = sh("auditctl", "-s")
    rules = sh("auditctl", "-l")[1]
    mounts = json.loads(sh("findmnt", "-J", "-o", "TARGET,SOURCE,FSTYPE,OPTIONS")[1] or '{"filesystems": []}')
    flat = []
    stack = list(mounts.get("filesystems", []))
    while stack:
        entry = stack.pop()
        stack.extend(entry.pop("children", []) or [])
        flat.append(entry)
    root = os.statvfs("/")
    facts = {
        "sysctl": sysctls(),
        "audit": {"rc": audit_rc, "status": audit_status.strip(), "error": audit_err.strip()[-200:],
                  "rules": len([r for r in rules.splitlines() if r.startswith("-")])},
        "apparmor": apparmor(),
        "modules": modules(),
        "mounts": flat,
        "timesync": sh("systemctl", "is-active", "systemd-timesyncd.service")[1].strip(),
        "root_bytes": root.f_blocks * root.f_frsize,
        "cmdline": (read("/proc/cmdline") or "").strip(),
        "failed_units": sh("systemctl", "--failed", "--no-legend", "--plain")[1].split("\n"),
    }
    print(json.dumps(facts))


main()
