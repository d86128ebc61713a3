import xml.etree.ElementTree as ET

import pytest

from bakery.verify import junit, packages

pytestmark = pytest.mark.unit

STATUS = """Package: python3
Status: install ok installed
Architecture: amd64
Version: 3.11.2-1

Package: removed-one
Status: deinstall ok config-files
Version: 1.0

Package: libfoo
Status: install ok installed
Architecture: i386
Version: 2.0
"""


def test_dpkg_status_and_diff(tmp_path):
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(STATUS)
    installed = packages.installed(tmp_path)
    assert installed == {"libfoo:i386": "2.0", "python3": "3.11.2-1"}
    d = packages.diff({"python3": "3.11.1", "gone": "1"}, installed)
    assert d == {"added": {"libfoo:i386": "2.0"}, "removed": {"gone": "1"},
                 "changed": {"python3": {"base": "3.11.1", "image": "3.11.2-1"}}}


def test_junit_merges_suites_and_counts(tmp_path):
    other = tmp_path / "testinfra.xml"
    other.write_text('<testsuites><testsuite name="t" tests="2" failures="1" errors="0">'
                     '<testcase name="a"/><testcase name="b"><failure message="x"/></testcase>'
                     '</testsuite></testsuites>')
    path = junit.write(tmp_path / "junit.xml", "verify web:1",
                       [junit.Check("boot", True, 1.0),
                        junit.Check("secret-scan", False, 0.5, "/etc/key (private-key)"),
                        junit.Check("testinfra", True, skipped=True, message="none")], [other])
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "5" and root.get("failures") == "2"
    failure = root.find("./testsuite/testcase[@name='secret-scan']/failure")
    assert failure is not None and failure.get("message") == "/etc/key (private-key)"
