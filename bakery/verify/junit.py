"""JUnit XML for verification reports: bakery's own checks plus the testinfra suites, in one file any CI viewer
opens."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    name: str
    passed: bool
    seconds: float = 0.0
    message: str = ""
    output: str = ""
    skipped: bool = False


def write(path: Path, suite_name: str, checks: list[Check], extra_reports: list[Path]) -> Path:
    """Write <testsuites> with one suite for bakery's checks and every testsuite of the extra JUnit files."""
    root = ET.Element("testsuites", name=suite_name)
    suite = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(checks)),
                          failures=str(sum(1 for c in checks if not c.passed and not c.skipped)),
                          skipped=str(sum(1 for c in checks if c.skipped)), errors="0",
                          time=f"{sum(c.seconds for c in checks):.3f}")
    for check in checks:
        case = ET.SubElement(suite, "testcase", classname=suite_name, name=check.name, time=f"{check.seconds:.3f}")
        if check.skipped:
            ET.SubElement(case, "skipped", message=check.message)
        elif not check.passed:
            failure = ET.SubElement(case, "failure", message=check.message[:1000])
            failure.text = check.output or check.message
        elif check.output:
            ET.SubElement(case, "system-out").text = check.output
    for report in extra_reports:
        if not report.is_file():
            continue
        other = ET.parse(report).getroot()
        suites = [other] if other.tag == "testsuite" else list(other.iter("testsuite"))
        root.extend(suites)
    tests = sum(int(s.get("tests", "0")) for s in root.iter("testsuite"))
    failures = sum(int(s.get("failures", "0")) for s in root.iter("testsuite"))
    errors = sum(int(s.get("errors", "0")) for s in root.iter("testsuite"))
    root.set("tests", str(tests))
    root.set("failures", str(failures))
    root.set("errors", str(errors))
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
