"""The per-file walk of the secret scan, shared by a layer's tar stream and a directory tree.

Every member gets the path rules; every regular file the content rules, read whole, once. A file that
is an archive by its bytes (tar, zip, gzip, bzip2, xz; not by its name) is opened and its members get
the same rules under "outer!/inner" names, within bounds: archives nested at most MAX_DEPTH deep, at
most MAX_ARCHIVE_BYTES decoded and MAX_MEMBERS members each. An archive over a bound or unreadable is
itself a finding (archive-not-scanned): the scan fails closed. A compressed file that is no archive
(a changelog.gz) is scanned as content.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import tempfile
import zipfile
from typing import IO, BinaryIO, cast

from bakery.verify import secret_structured as structured
from bakery.verify.secret_content import scan_content
from bakery.verify.secret_findings import Collector
from bakery.verify.secret_paths import (
    ARCHIVE_NOT_SCANNED,
    DETAILS,
    DIR,
    FILE,
    HARDLINK,
    OTHER,
    SYMLINK,
    BareRepositories,
    Check,
    name_hits,
    structure_checks,
)
from bakery.verify.secret_streams import (
    COMPRESSIONS,
    CONTAINERS,
    DECODE_ERRORS,
    Budget,
    Guarded,
    Prefixed,
    buffered,
    decoder,
    kind_of,
    read_head,
)

MAX_DEPTH = 3
MAX_ARCHIVE_BYTES = 64 << 20
MAX_MEMBERS = 10_000
HEAD = 4096  # enough for every magic number (tar's is at 257)
SPOOL_IN_MEMORY = 8 << 20  # a spooled file larger than this goes to a temporary file


def member_path(name: str) -> str:
    """A tar or zip member name as an absolute path: "./etc/x" and "etc/x/" are "/etc/x"; bytes stay as they are."""
    return "/" + "/".join(part for part in name.split("/") if part not in ("", "."))


def tar_kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return FILE
    if member.isdir():
        return DIR
    if member.issym():
        return SYMLINK
    return HARDLINK if member.islnk() else OTHER


class Walker:
    """Visits members one by one, in order; findings go to the collector."""

    def __init__(self, collector: Collector) -> None:
        self.out = collector
        self.repos = BareRepositories()

    def tar_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, prefix: str, depth: int) -> None:
        local = member_path(member.name)
        if local == "/":
            return
        if not prefix and local.rsplit("/", 1)[-1].startswith(".wh."):
            return  # an OCI whiteout (".wh.<name>", ".wh..wh..opq") records a deletion; it is no file
        kind = tar_kind(member)
        stream = tar.extractfile(member) if kind == FILE else None
        self.entry(local, prefix, kind, member.size, stream, depth)

    def entry(self, local: str, prefix: str, kind: str, size: int, stream: IO[bytes] | None, depth: int) -> None:
        """One member: the rules its name decides, then (a regular file) its content or its archive."""
        for hit in name_hits(local, kind, size):
            self.out.add(prefix + hit.path, hit.rule, hit.line, hit.detail)
        repo = self.repos.see(prefix + local)
        if repo:
            self.out.add(repo, "git-directory", None, DETAILS["git-directory"])
        if kind == HARDLINK:
            # its content was scanned under the name it links to; the checks this name calls for cannot
            # re-read it from a stream, so a credential file's name alone counts
            for rule, check in structure_checks(local):
                if check is not structured.kubeconfig_any:
                    self.out.add(prefix + local, rule, None, "a hard link with a credential file's name is baked in")
        if kind == FILE and stream is not None:
            self.file(local, prefix, size, stream, depth)

    def file(self, local: str, prefix: str, size: int, stream: IO[bytes], depth: int) -> None:
        display = prefix + local
        head = read_head(stream, HEAD)
        kind = kind_of(head)
        whole = buffered(Prefixed(head, stream))
        if kind in COMPRESSIONS:
            self._compressed(kind, display, whole, depth)
        elif kind in CONTAINERS:
            budget = Budget(MAX_ARCHIVE_BYTES)
            self._container(kind, display, buffered(Guarded(whole, budget)), depth, budget)
            self._report(display, budget, kind)
        else:
            self._content(display, whole, structure_checks(local) if head else [])

    def _compressed(self, kind: str, display: str, stream: IO[bytes], depth: int) -> None:
        budget = Budget(MAX_ARCHIVE_BYTES)
        decoded = buffered(Guarded(decoder(kind, stream), budget))
        head = read_head(decoded, HEAD)
        inner = kind_of(head)
        whole = buffered(Prefixed(head, decoded))
        if inner in COMPRESSIONS:
            self.out.add(display, ARCHIVE_NOT_SCANNED, None, f"{kind} data compressed again: not opened")
        elif inner in CONTAINERS:
            self._container(inner, display, whole, depth, budget)
        else:
            self._content(display, whole, [])
        self._report(display, budget, kind)

    def _container(self, kind: str, display: str, stream: IO[bytes], depth: int, budget: Budget) -> None:
        if depth >= MAX_DEPTH:
            self.out.add(display, ARCHIVE_NOT_SCANNED, None,
                         f"an archive nested more than {MAX_DEPTH} deep: not opened")
        elif kind == "tar":
            self._tar(stream, display, depth + 1, budget)
        else:
            self._zip(stream, display, depth + 1)

    def _tar(self, stream: IO[bytes], display: str, depth: int, budget: Budget) -> None:
        try:
            with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape") as tar:
                for count, member in enumerate(tar, start=1):
                    if count > MAX_MEMBERS:
                        self._too_many(display)
                        return
                    self.tar_member(tar, member, display + "!", depth)
        except DECODE_ERRORS as exc:
            budget.broken = budget.broken or type(exc).__name__

    def _zip(self, stream: IO[bytes], display: str, depth: int) -> None:
        """zipfile needs to seek: the zip is spooled first (bounded), then read member by member."""
        budget = Budget(MAX_ARCHIVE_BYTES)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            if _copy(stream, spool, MAX_ARCHIVE_BYTES + 1) > MAX_ARCHIVE_BYTES:
                budget.exceeded = True
            else:
                spool.seek(0)
                try:
                    with zipfile.ZipFile(spool) as archive:
                        self._zip_members(archive, display, depth, budget)
                except DECODE_ERRORS as exc:
                    budget.broken = budget.broken or type(exc).__name__
        self._report(display, budget, "zip")

    def _zip_members(self, archive: zipfile.ZipFile, display: str, depth: int, budget: Budget) -> None:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            self._too_many(display)
            return
        for info in infos:
            local = member_path(info.filename)
            is_link = stat.S_ISLNK(info.external_attr >> 16)
            kind = DIR if info.is_dir() else SYMLINK if is_link else FILE
            if kind != FILE:
                self.entry(local, display + "!", kind, 0, None, depth)
                continue
            try:
                member = archive.open(info)
            except DECODE_ERRORS as exc:  # encrypted, or a compression zipfile does not know
                self.out.add(display + "!" + local, ARCHIVE_NOT_SCANNED, None,
                             f"a member that cannot be read ({type(exc).__name__}): not scanned")
                self.entry(local, display + "!", kind, info.file_size, None, depth)
                continue
            with member:
                self.entry(local, display + "!", kind, info.file_size, buffered(Guarded(member, budget)), depth)
            if budget.exceeded or budget.broken:
                return

    def _content(self, display: str, stream: IO[bytes], checks: list[tuple[str, Check]]) -> None:
        if not checks:
            self._content_rules(display, stream)
            return
        with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spool:
            shutil.copyfileobj(stream, spool, 1 << 16)
            spool.seek(0)
            self._content_rules(display, spool)
            for rule, check in checks:
                spool.seek(0)
                for hit in check(spool):
                    self.out.add(display, rule, hit.line, hit.detail)

    def _content_rules(self, display: str, stream: IO[bytes]) -> None:
        for hit in scan_content(display, cast(BinaryIO, stream)):
            self.out.add(display, hit.rule, hit.line, f"the content matches the {hit.rule} rule")

    def _too_many(self, display: str) -> None:
        self.out.add(display, ARCHIVE_NOT_SCANNED, None, f"more than {MAX_MEMBERS:,} members: not scanned past them")

    def _report(self, display: str, budget: Budget, kind: str) -> None:
        if budget.exceeded:
            self.out.add(display, ARCHIVE_NOT_SCANNED, None,
                         f"more than {MAX_ARCHIVE_BYTES >> 20} MiB decoded: not scanned past the bound")
        elif budget.broken:
            self.out.add(display, ARCHIVE_NOT_SCANNED, None, f"unreadable as {kind} ({budget.broken}): not scanned")



def _copy(source: IO[bytes], target: IO[bytes], limit: int) -> int:
    """Copy at most `limit` bytes; the number copied."""
    copied = 0
    while copied < limit:
        chunk = source.read(min(1 << 16, limit - copied))
        if not chunk:
            break
        target.write(chunk)
        copied += len(chunk)
    return copied
