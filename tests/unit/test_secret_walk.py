"""The walk's hiding places: hard links, bytes around and inside archives, names, bounds and caps."""

from __future__ import annotations

import gzip
import io
import lzma
import tarfile
import zipfile

import pytest

from bakery.errors import OperationError
from bakery.verify.secret_findings import Collector
from bakery.verify.secrets import scan_layer
from tests.unit.test_secret_archives import PEM, found, pipe, scan, tar_bytes, zip_bytes

pytestmark = pytest.mark.unit

PASSWORD_LINE = "password = " + "Hunt3rTw0Secret9\n"
AWS_ID = "AKIA" + "XQ7NHM2KZRPLW4VB"
DER_KEY = b"\x30\x82\x01\x00" + b"\x02\x01\x00" + b"A" * 253


def pax_layer(name: str, *, linkname: str = "", kind: bytes = tarfile.REGTYPE, pax: dict[str, str] | None = None,
              data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, linkname, len(data)
        info.pax_headers = pax or {}
        tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


# 1: a hard link is the same file under another name, and a name selects rules


def test_a_hard_link_gets_the_rules_its_name_selects():
    findings = scan([("opt/a/notes.txt", PASSWORD_LINE), ("etc/app/app.conf", ("hardlink", "opt/a/notes.txt"))])
    assert ("/etc/app/app.conf", "config-secret") in {(f.path, f.rule) for f in findings}
    findings = scan([("opt/a/blob.bin", DER_KEY), ("root/id.key", ("hardlink", "opt/a/blob.bin"))])
    assert {(f.path, f.rule) for f in findings} == {("/root/id.key", "der-private-key")}


def test_a_hard_link_under_a_name_that_selects_nothing_new_is_not_reported_twice():
    findings = scan([("etc/app/a.conf", PASSWORD_LINE), ("etc/app/b.conf", ("hardlink", "etc/app/a.conf"))])
    assert found(findings) == {("/etc/app/a.conf", "content")}


def test_a_hard_link_whose_name_selects_no_other_rules_passes_even_when_its_target_was_not_kept():
    """Packages hard-link binaries and docs under other plain names (e.g. /usr/bin/perl5.36.0): nothing to rescan."""
    assert scan([("usr/bin/tool-1.2", ("hardlink", "usr/bin/tool"))]) == []


def test_a_hard_link_to_a_file_not_kept_fails_closed():
    findings = scan([("etc/app/app.conf", ("hardlink", "opt/elsewhere/notes.txt"))])
    assert {(f.path, f.rule) for f in findings} == {("/etc/app/app.conf", "link-not-scanned")}


# 4: bytes an archive holds that no member does


def test_a_zip_behind_a_stub_is_found_by_its_end_record():
    archive = zip_bytes({"id_rsa": PEM})
    assert found(scan([("opt/install.sh", b"#!/bin/sh\nexit 0\n" + archive)])) == {
        ("/opt/install.sh!/id_rsa", "content")}


def test_a_zip_comment_and_text_after_a_zip_are_content():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "nothing")
        archive.comment = PEM.encode()
    assert found(scan([("opt/c.zip", buffer.getvalue())])) == {("/opt/c.zip", "content")}
    assert found(scan([("opt/d.zip", zip_bytes({"a.txt": "x"}) + PEM.encode())])) == {("/opt/d.zip", "content")}


def test_data_after_the_end_of_a_tar_is_reported():
    inner = tar_bytes([("a.txt", "nothing")]) + gzip.compress(PEM.encode())
    assert found(scan([("opt/b.tar", inner)])) == {("/opt/b.tar", "archive-not-scanned")}


def test_the_file_name_in_a_gzip_header_is_scanned():
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=AWS_ID, fileobj=buffer, mode="wb") as stream:
        stream.write(b"nothing here\n")
    assert {f.rule for f in scan([("opt/n.gz", buffer.getvalue())])} == {"aws-access-key-id"}


# 5: formats the walk opens, or names as not scanned


def ar_bytes(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        out += (name.encode().ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
                + str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b""))
    return out


def cpio_newc(members: dict[str, bytes]) -> bytes:
    out = b""
    for number, (name, data) in enumerate([*members.items(), ("TRAILER!!!", b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = [number, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        out += header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4)
        out += data + b"\0" * (-len(data) % 4)
    return out


def test_a_deb_and_an_ar_archive_are_opened():
    deb = ar_bytes({"debian-binary": b"2.0\n", "data.tar.xz": lzma.compress(tar_bytes([("./root/.netrc", "x")]))})
    assert found(scan([("var/cache/apt/archives/x.deb", deb)])) == {
        ("/var/cache/apt/archives/x.deb!/data.tar.xz!/root/.netrc", "netrc")}


def test_a_cpio_archive_is_opened():
    assert found(scan([("opt/i.cpio", cpio_newc({"root/.netrc": b"machine x\n"}))])) == {
        ("/opt/i.cpio!/root/.netrc", "netrc")}


def test_an_initramfs_gzip_around_cpio_is_scanned_when_its_decoded_size_is_within_the_bound():
    """A Debian initramfs decodes to about 52 MiB: its cpio members are the bytes the gzip decode already counted,
    so they are not counted again (they were, and the image's initramfs went unscanned)."""
    initrd = gzip.compress(cpio_newc({"root/.netrc": b"machine x\n", "lib/modules/big.ko": b"\0" * (40 << 20)}),
                           compresslevel=1)
    assert found(scan([("boot/initrd.img-6.1.0-57-cloud-amd64", initrd)])) == {
        ("/boot/initrd.img-6.1.0-57-cloud-amd64!/root/.netrc", "netrc")}


def test_old_lzma_is_decoded():
    data = lzma.compress(PEM.encode(), format=lzma.FORMAT_ALONE)
    assert found(scan([("opt/k.lzma", data)])) == {("/opt/k.lzma", "content")}


@pytest.mark.parametrize("magic", [b"\x28\xb5\x2f\xfd", b"7z\xbc\xaf\x27\x1c", b"\xed\xab\xee\xdb",
                                   b"070707", b"\x04\x22\x4d\x18"])
def test_formats_the_walk_cannot_open_are_reported(magic):
    assert found(scan([("opt/blob", magic + b"\0" * 200)])) == {("/opt/blob", "archive-not-scanned")}


def test_a_two_byte_cpio_magic_is_content_not_an_unopened_archive():
    """Old binary cpio starts with two bytes any binary may start with: failing the image on them would be a false
    alarm, so such a file is scanned as content."""
    assert found(scan([("opt/blob", b"\xc7\x71" + b"\0" * 200)])) == set()


# 6: names, link targets and PAX values


def test_names_link_targets_and_pax_values_get_the_token_and_key_rules():
    assert {f.rule for f in scan_layer(pipe(pax_layer("opt/" + AWS_ID, data=b"x")), "L", [])} == {"aws-access-key-id"}
    symlink = pax_layer("opt/lnk", kind=tarfile.SYMTYPE, linkname=AWS_ID + ":x")
    assert {f.rule for f in scan_layer(pipe(symlink), "L", [])} == {"aws-access-key-id"}
    xattr = pax_layer("opt/x", data=b"hi", pax={"SCHILY.xattr.user.k": PEM})
    assert {(f.path, f.rule) for f in scan_layer(pipe(xattr), "L", [])} == {("/opt/x", "private-key")}


# 8: one budget under a top-level file


def test_nested_archives_share_one_decode_budget(monkeypatch):
    from bakery.verify import secret_archives
    monkeypatch.setattr(secret_archives, "MAX_ARCHIVE_BYTES", 1 << 20)
    inner = zip_bytes({"z": b"\0" * (700 << 10)})
    outer = zip_bytes({f"i{n}.zip": inner for n in range(4)})
    assert found(scan([("opt/o.zip", outer)])) == {("/opt/o.zip", "archive-not-scanned")}


# 9: findings stay few


def test_findings_are_capped_per_file_and_rule():
    findings = scan([("opt/k.txt", ("-----BEGIN " + "PRIVATE KEY-----\n") * 5000)])
    assert [f.line for f in findings] == [1, 2, 3, 4, 5]
    assert "and 4,995 more lines" in findings[-1].detail and "more" not in findings[0].detail


def test_findings_are_capped_per_layer():
    collector = Collector("L", [], limit=3)
    for number in range(10):
        collector.add(f"/opt/{number}", "private-key", 1, "x")
    result = collector.result()
    assert [f.path for f in result] == ["/opt/0", "/opt/1", "/opt/2", "/"]
    assert result[-1].rule == "too-many-findings" and "7 more" in result[-1].detail


# nits


def test_a_whiteout_that_holds_data_is_reported():
    findings = scan([("root/.wh.id_rsa", PEM), ("root/.wh..wh..opq", ""), ("etc/.wh.gone", "")])
    assert found(findings) == {("/root/.wh.id_rsa", "bad-whiteout"), ("/root/.wh.id_rsa", "content")}
    link = pax_layer("etc/.wh.x", kind=tarfile.SYMTYPE, linkname="/etc/shadow")
    assert {f.rule for f in scan_layer(pipe(link), "L", [])} == {"bad-whiteout"}


def test_an_error_inside_the_rules_names_the_file(monkeypatch):
    from bakery.verify import secret_archives

    def broken(name, stream):
        raise ValueError("boom")

    monkeypatch.setattr(secret_archives, "scan_content", broken)
    with pytest.raises(OperationError, match=r"/opt/a.txt.*ValueError"):
        scan([("opt/a.txt", "hello")])


def test_a_key_in_a_tar_member_is_reported_at_the_member_only():
    assert found(scan([("opt/b.tar", tar_bytes([("root/id", PEM)]))])) == {("/opt/b.tar!/root/id", "content")}


def test_a_name_that_is_a_secret_is_redacted_in_every_finding_under_it():
    token_dir = "opt/" + AWS_ID
    findings = scan([(token_dir + "/id_rsa", PEM)])
    assert {f.rule for f in findings} >= {"aws-access-key-id", "private-key"}
    assert all(AWS_ID not in f.path and AWS_ID not in f.text() for f in findings)
    assert "/opt/<redacted>/id_rsa" in {f.path for f in findings}
