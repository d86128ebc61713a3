"""The layer walk: real tar streams, fed through a pipe-like reader that cannot seek, and archives inside them."""

from __future__ import annotations

import gzip
import io
import random
import tarfile
import zipfile

import pytest

from bakery.errors import OperationError
from bakery.verify.secret_content import CONTENT_RULE_NAMES
from bakery.verify.secrets import scan_layer, scan_tree

pytestmark = pytest.mark.unit

# split so that this file is not itself a finding
PEM = ("-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
       "-----END RSA PRIVATE KEY-----\n")
NETRC = "machine example.org login deploy\n"  # a credential file by its name; no secret for the content rules


class Pipe(io.RawIOBase):
    """A pipe from `podman save`: bytes in order, no seek, no tell."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        return self._data.readinto(buffer)


def pipe(data: bytes) -> io.BufferedReader:
    stream = io.BufferedReader(Pipe(data))
    assert not stream.seekable()
    return stream


def tar_bytes(entries: list[tuple[str, object]], compression: str = "") -> bytes:
    """entries: (name, bytes|str) files, (name, None) directories, (name, ('symlink'|'hardlink', target))."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}" if compression else "w",
                      format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            data = b""
            if content is None:
                info.type = tarfile.DIRTYPE
            elif isinstance(content, tuple):
                info.type = tarfile.SYMTYPE if content[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = content[1]
            else:
                data = content.encode() if isinstance(content, str) else content
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def scan(entries: list[tuple[str, object]], layer: str = "sha256:aa", allowlist=None, compression: str = ""):
    return scan_layer(pipe(tar_bytes(entries, compression)), layer, allowlist or [])


def found(findings) -> set[tuple[str, str]]:
    """(path, rule), every content rule named "content": which one fires is the content rules' business."""
    return {(f.path, "content" if f.rule in CONTENT_RULE_NAMES else f.rule) for f in findings}


def path_rules(findings) -> set[tuple[str, str]]:
    return {(f.path, f.rule) for f in findings if f.rule not in CONTENT_RULE_NAMES}


def test_a_name_with_a_newline_is_one_path_and_is_scanned():
    findings = scan([("etc/app/key\n.pem", PEM), ("root/.bash_history\nx", "ls\n")])
    assert ("/etc/app/key\n.pem", "content") in found(findings)
    # ".bash_history\nx" is not a history name: the newline does not split it into "/root/.bash_history"
    assert not any(f.path == "/root/.bash_history" for f in findings)


def test_undecodable_names_stay_exact():
    name = b"opt/caf\xe9/.netrc".decode("utf-8", "surrogateescape")
    assert found(scan([(name, NETRC)])) == {("/" + name, "netrc")}


def test_whiteouts_are_not_files_and_a_deleted_file_is_found_in_the_layer_that_wrote_it():
    lower = scan([("root/", None), ("root/.bash_history", "ls\n"), ("opt/k.pem", PEM)],
                 layer="sha256:lower")
    upper = scan([("root/.wh..bash_history", ""), ("opt/.wh.k.pem", ""), ("srv/.wh..wh..opq", "")],
                 layer="sha256:upper")
    assert upper == []
    assert {(f.path, f.layer) for f in lower} == {("/root/.bash_history", "sha256:lower"),
                                                  ("/opt/k.pem", "sha256:lower")}


def test_a_hardlink_is_a_name_too_and_its_target_content_is_scanned_once():
    findings = scan([("opt/data", NETRC), ("root/.netrc", ("hardlink", "opt/data")),
                     ("root/.bash_history", ("symlink", "/dev/null"))])
    assert found(findings) == {("/root/.netrc", "netrc")}


def test_a_gzip_layer_is_read_as_a_stream():
    assert found(scan([("home/u/.pgpass", "*:*:*:u:p\n")], compression="gz")) == {("/home/u/.pgpass", "pgpass")}


def test_a_key_after_two_mib_of_logs_is_found():
    findings = scan([("var/log/big.log", ("log line\n" * 300_000) + PEM)])
    hits = [f for f in findings if f.path == "/var/log/big.log"]
    assert hits and hits[0].rule in CONTENT_RULE_NAMES and hits[0].line == 300_001


def test_an_archive_in_an_archive_is_scanned_with_the_full_member_path():
    inner = zip_bytes({"home/u/.netrc": NETRC, "keys/deploy.pem": PEM, "README": "nothing\n"})
    outer = tar_bytes([("bundle/", None), ("bundle/inner.zip", inner),
                       ("bundle/.ssh/authorized_keys", "ssh-ed25519 A\n")], compression="gz")
    findings = scan([("opt/bundle.tar.gz", outer)])
    assert found(findings) == {
        ("/opt/bundle.tar.gz!/bundle/inner.zip!/home/u/.netrc", "netrc"),
        ("/opt/bundle.tar.gz!/bundle/inner.zip!/keys/deploy.pem", "content"),
        ("/opt/bundle.tar.gz!/bundle/.ssh/authorized_keys", "baked-authorized-keys"),
    }


def test_archives_are_known_by_their_bytes_not_their_names():
    disguised = tar_bytes([("root/.netrc", NETRC)], compression="gz")
    findings = scan([("opt/data.bin", disguised), ("opt/notes.tar.gz", PEM)])
    assert found(findings) == {("/opt/data.bin!/root/.netrc", "netrc"), ("/opt/notes.tar.gz", "content")}


def test_a_compressed_text_file_is_scanned_as_content():
    changelog = gzip.compress(b"pkg (1.0) bookworm; urgency=low\n\n  * Initial release.\n")
    leaked = gzip.compress(("notes\n" + PEM).encode())
    findings = scan([("usr/share/doc/pkg/changelog.Debian.gz", changelog), ("root/backup.gz", leaked)])
    assert [(f.path, f.rule in CONTENT_RULE_NAMES, f.line) for f in findings] == [("/root/backup.gz", True, 2)]


def test_archives_deeper_than_three_are_not_scanned_and_say_so():
    level = tar_bytes([("etc/.netrc", NETRC)])
    for name in ("d.tar", "c.tar", "b.tar"):
        level = tar_bytes([(name, level)])
    findings = scan([("opt/a.tar", level)])
    assert found(findings) == {("/opt/a.tar!/b.tar!/c.tar!/d.tar", "archive-not-scanned")}
    three_deep = tar_bytes([("c.tar", tar_bytes([("d.tar", tar_bytes([("etc/.netrc", NETRC)]))]))])
    assert found(scan([("opt/a.tar", three_deep)])) == {("/opt/a.tar!/c.tar!/d.tar!/etc/.netrc", "netrc")}


def test_a_zip_bomb_is_not_scanned_past_the_bound_and_fails_closed():
    bomb = zip_bytes({"home/u/.netrc": NETRC, "zeros": b"\0" * (65 << 20)})
    assert len(bomb) < 1 << 20
    findings = scan([("opt/bomb.zip", bomb)])
    assert found(findings) == {("/opt/bomb.zip!/home/u/.netrc", "netrc"), ("/opt/bomb.zip", "archive-not-scanned")}
    assert "64 MiB" in [f for f in findings if f.rule == "archive-not-scanned"][0].detail


def test_a_gzip_bomb_and_too_many_members_fail_closed():
    bomb = gzip.compress(b"\0" * (65 << 20))
    many = tar_bytes([(f"f{i}", "") for i in range(10_001)])
    findings = scan([("opt/zeros.gz", bomb), ("opt/many.tar", many)])
    assert found(findings) == {("/opt/zeros.gz", "archive-not-scanned"), ("/opt/many.tar", "archive-not-scanned")}


def test_an_unreadable_archive_is_a_finding():
    noise = random.Random(0).randbytes(20_000)  # does not compress: the cut falls inside its data
    truncated = tar_bytes([("root/.netrc", NETRC), ("opt/blob", noise)], compression="gz")[:4000]
    broken_zip = b"PK\x03\x04" + b"\x00" * 60
    findings = scan([("opt/cut.tar.gz", truncated), ("opt/broken.zip", broken_zip)])
    assert found(findings) == {("/opt/cut.tar.gz!/root/.netrc", "netrc"), ("/opt/cut.tar.gz", "archive-not-scanned"),
                               ("/opt/broken.zip", "archive-not-scanned")}


def test_an_unreadable_layer_is_an_operation_error():
    with pytest.raises(OperationError, match="layer sha256:bad"):
        scan_layer(pipe(b"not a tar stream at all" * 40), "sha256:bad", [])


def test_the_tree_walk_shares_the_rules(tmp_path):
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "bundle.tgz").write_bytes(tar_bytes([("root/.netrc", NETRC)], compression="gz"))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / ".bash_history").symlink_to("/dev/null")
    (tmp_path / "root" / ".zsh_history.old").write_text("ls\n")
    assert found(scan_tree(tmp_path, [])) == {("/opt/bundle.tgz!/root/.netrc", "netrc"),
                                              ("/root/.zsh_history.old", "shell-history")}
