"""Secret scan content rules: the detector-backed rules against the old three regexes, on the same real tree.

    .venv/bin/python bench/bench_secret_scan.py [--hits] [TREE ...]   (default: /usr/lib/python3* /usr/share/doc)
    .venv/bin/python bench/bench_secret_scan.py --hostile            (review 14a: content that was slow)

Both read every regular file from disk (the page cache is warmed first, so both read from memory): the old
rules read the first 2 MiB and search three regexes, the new ones stream the whole file through
bakery.verify.secret_content.scan_content. Prints files, MB, seconds and the ratio; with --hits, every file
the new rules flag (rule and line, never the text) - on an OS's own files each one is a false positive
unless it is a real (test) key.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bakery.verify.secret_content import scan_content  # noqa: E402

# The rules of bakery/verify/secrets.py before the detector-backed scan (git show f29030f:bakery/verify/secrets.py).
OLD_MAX_SCAN_BYTES = 2 << 20
OLD_PEM_BLOCK = re.compile(rb"-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----\r?\n"
                           rb"(?:[A-Za-z-]+:[^\n]*\r?\n)*\r?\n?[A-Za-z0-9+/=]{20,}")
OLD_RULES = {
    "private-key": re.compile(rb"-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"),
    "aws-access-key-id": re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),
    "aws-secret-access-key": re.compile(rb"(?i)aws_?secret_?access_?key['\"]?\s*[:=]\s*['\"]?"
                                        rb"[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"),
}


def old_scan(path: str) -> list[str]:
    with open(path, "rb") as handle:
        head = handle.read(OLD_MAX_SCAN_BYTES)
    binary = b"\0" in head[:8192]
    found = []
    for rule, pattern in OLD_RULES.items():
        if rule == "private-key" and binary:
            pattern = OLD_PEM_BLOCK
        if pattern.search(head):
            found.append(rule)
    return found


def new_scan(path: str) -> list[tuple[str, int | None]]:
    with open(path, "rb") as handle:
        return [(hit.rule, hit.line) for hit in scan_content("/" + path.lstrip("/"), handle)]


def regular_files(trees: list[str]) -> list[str]:
    files = []
    for tree in trees:
        for folder, _dirs, names in os.walk(tree):
            for name in names:
                path = os.path.join(folder, name)
                if os.path.isfile(path) and not os.path.islink(path) and os.access(path, os.R_OK):
                    files.append(path)
    return sorted(files)


def timed(scan, files: list[str]) -> tuple[float, dict[str, list]]:
    found = {}
    started = time.monotonic()
    for path in files:
        try:
            hits = scan(path)
        except OSError:
            continue
        if hits:
            found[path] = hits
    return time.monotonic() - started, found


# Content a detector's regex handles badly (review 14a, finding 8): seconds each, not minutes.
HOSTILE = {
    "/opt/eyJ.txt": b"eyJ" * ((4 << 20) // 3),
    "/etc/url.conf": b"x://a:b@c " * ((4 << 20) // 10),
    "/etc/url-lines.conf": b"x://a:b@c\n" * ((4 << 20) // 10),
    "/etc/pass-lines.conf": b"pass = x y\n" * ((4 << 20) // 11),
    "/etc/pass-varied.conf": b"".join(b"pass = x%d y\n" % n for n in range((4 << 20) // 16)),  # no two alike
    "/etc/pass-long.conf": (b"pass = " + b"p" * 20 + b" ") * ((4 << 20) // 28),
    "/opt/aws-long.txt": b"aws " * ((4 << 20) // 4),
    "/opt/begin-long.txt": b"-----BEGIN PRIVATE KEY----- " * ((4 << 20) // 28),
}


def hostile() -> int:
    for name, data in HOSTILE.items():
        started = time.monotonic()
        hits = scan_content(name, io.BytesIO(data))
        print(f"{name:24s} {len(data) / 2**20:5.2f} MiB {time.monotonic() - started:7.2f} s  hits {len(hits)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", default=sorted(glob.glob("/usr/lib/python3*")) + ["/usr/share/doc"])
    parser.add_argument("--hits", action="store_true", help="list every file the new rules flag")
    parser.add_argument("--hostile", action="store_true", help="time content that detectors handle badly")
    args = parser.parse_args()
    if args.hostile:
        return hostile()
    files = regular_files(args.trees)
    size = 0
    for path in files:  # warm the page cache: both scans then read from memory
        with open(path, "rb") as handle:
            while data := handle.read(1 << 20):
                size += len(data)
    old_seconds, old_found = timed(old_scan, files)
    new_seconds, new_found = timed(new_scan, files)
    print(f"trees: {' '.join(args.trees)}")
    print(f"files: {len(files)}  size: {size / 1e6:.1f} MB")
    print(f"old rules (3 regexes, first 2 MiB): {old_seconds:.2f} s  {size / 1e6 / old_seconds:.0f} MB/s  "
          f"files flagged: {len(old_found)}")
    print(f"new rules (scan_content, whole files): {new_seconds:.2f} s  {size / 1e6 / new_seconds:.0f} MB/s  "
          f"files flagged: {len(new_found)}")
    print(f"ratio new/old: {new_seconds / old_seconds:.2f}x")
    per_rule = Counter(rule for hits in new_found.values() for rule, _line in hits)
    print("new hits per rule: " + (", ".join(f"{rule} {count}" for rule, count in sorted(per_rule.items()))
                                   or "none"))
    if args.hits:
        for path, hits in new_found.items():
            print(f"  {path}: " + ", ".join(f"{rule}@{line}" for rule, line in hits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
