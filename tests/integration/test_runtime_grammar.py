"""The fourth reader of runtime config is systemd itself: the hostile corpus of tests/unit/test_runtime_grammar.py
through the real applier and a real unit's `EnvironmentFile=`, in one container of the bookworm base image.

Every value the grammar accepts reaches the process byte for byte; every value it refuses never reaches systemd
(the applier writes nothing); and the refused ones are refused for a reason: written straight into an env file,
systemd reads them differently from the value (a trailing backslash swallows the next line; a NUL or a Unicode
noncharacter makes systemd 252 refuse the whole file, so every key is lost).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from bakery import podman
from tests.conftest import REPO
from tests.unit.test_runtime_grammar import RAW_CORPUS, VALUE_CORPUS, naive

pytestmark = pytest.mark.integration

APPLIER = REPO / "roles" / "base" / "files" / "bakery-runtime-config"
INSIDE = "/usr/local/libexec/bakery/bakery-runtime-config"
LAUNCH, TARGET = "/tmp/grammar/launch.env", "/tmp/grammar/run/runtime.env"
ACCEPTED_VALUES = [c for c in VALUE_CORPUS if c[3]]
REFUSED_VALUES = [c for c in VALUE_CORPUS if c[0] in ("split-000d", "split-2028", "nul", "trailing-backslash",
                                                          "secret-after-cr", "over-the-limit", "key-cr-injection")]
ACCEPTED_FILES = [c for c in RAW_CORPUS if c[2] is not None]
REFUSED_FILES = [c for c in RAW_CORPUS if c[0] in ("gzip", "not-utf8", "cr-in-comment", "continuation",
                                                    "comment-continuation", "reserved-key")]


def sh(name: str, script: str, data: bytes = b"", check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", "exec", "-i", name, "sh", "-c", script], input=data, capture_output=True,
                          timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return proc


@pytest.fixture(scope="module")
def instance(base_image):
    """One booted base-image container for the module, with the applier where role base installs it."""
    name = f"bakery-test-grammar-{os.getpid()}"
    try:
        podman.run("run", "-d", "--name", name, "--systemd=always", "--network", "none", base_image.ref, "/sbin/init")
        assert podman.systemd_state(name, 120) in ("running", "degraded")
        sh(name, f"mkdir -p {os.path.dirname(INSIDE)} && cat > {INSIDE} && chmod 0755 {INSIDE}",
           APPLIER.read_bytes())
        yield name
    finally:
        podman.run("rm", "-f", "-t", "0", name, check=False)


def apply(name: str, data: bytes) -> subprocess.CompletedProcess:
    """The applier in the container on `data` as the launch file (a fresh target each time)."""
    sh(name, f"rm -rf /tmp/grammar && mkdir -p /tmp/grammar && cat > {LAUNCH}", data)
    return sh(name, f"BAKERY_LAUNCH_FILE={LAUNCH} BAKERY_RUNTIME_FILE={TARGET} {INSIDE}", check=False)


def systemd_reads(name: str, path: str = TARGET) -> dict[str, str]:
    """The environment a transient service gets from `EnvironmentFile=-path`, less what systemd sets itself."""
    baseline = _unit_env(name, "/nonexistent")
    return {k: v for k, v in _unit_env(name, path).items() if k not in baseline or baseline[k] != v}


def _unit_env(name: str, path: str) -> dict[str, str]:
    proc = sh(name, f"systemd-run --wait --pipe --quiet --collect -p EnvironmentFile=-{path} /usr/bin/env -0")
    pairs = [item.decode("utf-8") for item in proc.stdout.split(b"\0") if item]
    return dict(pair.split("=", 1) for pair in pairs if not pair.startswith(("INVOCATION_ID=", "SYSTEMD_EXEC_PID=")))


@pytest.mark.parametrize("name, key, value, accepted", ACCEPTED_VALUES, ids=[c[0] for c in ACCEPTED_VALUES])
def test_an_accepted_value_reaches_the_process_byte_for_byte(instance, name, key, value, accepted):
    applied = apply(instance, naive(key, value))
    assert applied.returncode == 0, applied.stdout
    assert systemd_reads(instance) == {key: value}


@pytest.mark.parametrize("name, data, expected", ACCEPTED_FILES, ids=[c[0] for c in ACCEPTED_FILES])
def test_an_accepted_file_reaches_the_process_as_the_library_reads_it(instance, name, data, expected):
    applied = apply(instance, data)
    assert applied.returncode == 0, applied.stdout
    assert systemd_reads(instance) == expected


@pytest.mark.parametrize("name, data", [(c[0], naive(c[1], c[2])) for c in REFUSED_VALUES]
                         + [(c[0], c[1]) for c in REFUSED_FILES],
                         ids=[c[0] for c in REFUSED_VALUES] + [c[0] for c in REFUSED_FILES])
def test_a_refused_config_never_reaches_systemd(instance, name, data):
    applied = apply(instance, data)
    log = (applied.stdout + applied.stderr).decode("utf-8", "replace")
    assert applied.returncode == 1 and len(log.splitlines()) == 1 and "Traceback" not in log
    assert sh(instance, f"test -e {TARGET}", check=False).returncode == 1
    assert systemd_reads(instance) == {}


@pytest.mark.parametrize("data, systemd_gets", [
    (b'NOTE="ends in a backslash\\"\nBREAK_GLASS_SSH="true"\n',
     {"NOTE": 'ends in a backslash"\nBREAK_GLASS_SSH=true"'}),
    (b'ENVIRONMENT="qa"\nNOTE="a\0b"\nLOG_LEVEL="debug"\n', {}),
    ('ENVIRONMENT="qa"\nNOTE="a\ufffeb"\n'.encode(), {}),
    (b'NOTE="say \\"hi\\""\n', {"NOTE": 'say "hi"'}),
    (b'NOTE="C:\\temp\\x"\n', {"NOTE": "C:\\temp\\x"}),
    (b"# note \\\nBREAK_GLASS_SSH=true\nA=1\n", {"A": "1"}),
], ids=["trailing-backslash", "nul", "noncharacter", "escaped-quotes", "backslash-inside",
      "comment-continuation"])
def test_what_systemd_would_read_differently_the_applier_refuses(instance, data, systemd_gets):
    """Written straight into an env file, bypassing the applier, systemd 252 reads these its own way: a trailing
    backslash escapes the closing quote and swallows the next line (a comment's too), a NUL or a noncharacter
    makes it refuse the whole file (every key lost), and a backslash is an escape only before some characters.
    The applier refuses each of them, so no reader ever depends on systemd's escapes."""
    sh(instance, f"rm -rf /tmp/grammar && mkdir -p /tmp/grammar/run && cat > {TARGET}", data)
    assert systemd_reads(instance) == systemd_gets
    assert apply(instance, data).returncode == 1
