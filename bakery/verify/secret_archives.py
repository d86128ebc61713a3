"""The per-file walk of the secret scan, shared by a layer's tar stream and a directory tree.

Every member gets the path rules, and its name (a tar's link targets and PAX values too) the token and
key rules; every regular file the content rules over its raw bytes, read whole. A file that is an
archive by its bytes (not by its name: a zip behind a script stub is found by its end record) is opened
besides and its members get the same rules under "outer!/inner" names, within one budget per top-level
file: MAX_DEPTH deep, MAX_ARCHIVE_BYTES decoded and MAX_MEMBERS members all told. Anything over a bound,
unreadable, in a format the scan cannot open, or after a tar's end is a finding (archive-not-scanned):
the scan fails closed.
"""

from __future__ import annotations

import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from typing import IO, BinaryIO, cast

from bakery.verify.secret_content import scan_content, scan_value
from bakery.verify.secret_findings import Collector
from bakery.verify.secret_formats import Member, ar_members, cpio_members, gzip_texts
from bakery.verify.secret_hardlinks import KeptFiles, selection
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
    DECODE_ERRORS,
    NOT_OPENED,
    Budget,
    Guarded,
    Prefixed,
    Window,
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
Hit = tuple[str, int | None, str]  # rule, line, detail


class RulesFailed(Exception):
    """A rule raised on a file: reported with the file's name, not as an unreadable archive."""

    def __init__(self, path: str, error: BaseException) -> None:
        super().__init__(path, type(error).__name__)
        self.path, self.error = path, type(error).__name__


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
    """Visits members one by one, in order; findings go to the collector. close() frees the kept files."""

    def __init__(self, collector: Collector) -> None:
        self.out = collector
        self.repos = BareRepositories()
        self.kept = KeptFiles()

    def close(self) -> None:
        self.kept.close()

    def tar_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, prefix: str, depth: int,
                   budget: Budget | None = None) -> None:
        local = member_path(member.name)
        if local == "/":
            return
        kind = tar_kind(member)
        if not prefix and local.rsplit("/", 1)[-1].startswith(".wh."):
            # an OCI whiteout (".wh.<name>", ".wh..wh..opq") records a deletion: an empty regular file
            if kind == FILE and member.size == 0:
                return
            self.out.add(local, "bad-whiteout", None, DETAILS["bad-whiteout"])
        if member.linkname:
            self.value(prefix + local, "link target", member.linkname)
        for key, text in member.pax_headers.items():
            if key not in ("path", "linkpath"):
                self.value(prefix + local, f"PAX header {key}", text)
        stream = tar.extractfile(member) if kind == FILE else None
        target = prefix + member_path(member.linkname) if kind == HARDLINK else ""
        self.entry(local, prefix, kind, member.size, stream, depth, budget, target)

    def value(self, display: str, what: str, text: str) -> None:
        """A name, link target or header value through the token and key rules."""
        for hit in scan_value(display, text):
            self.out.add(display, hit.rule, None, f"its {what} matches the {hit.rule} rule")
        if what == "name":
            for segment in {part for part in text.split("/") if part and scan_value(display, part)}:
                self.out.redact(segment)

    def entry(self, local: str, prefix: str, kind: str, size: int, stream: IO[bytes] | None, depth: int,
              budget: Budget | None = None, target: str = "") -> None:
        """One member: the rules its name decides, then (a regular file) its content or its archive."""
        display = prefix + local
        for hit in name_hits(local, kind, size):
            self.out.add(prefix + hit.path, hit.rule, hit.line, hit.detail)
        self.value(display, "name", local)
        repo = self.repos.see(display)
        if repo:
            self.out.add(repo, "git-directory", None, DETAILS["git-directory"])
        if kind == HARDLINK:
            self._hard_link(local, display, target[len(prefix):], target)
        if kind == FILE and stream is not None:
            self.file(local, prefix, stream, depth, budget)

    def _hard_link(self, local: str, display: str, target_local: str, target: str) -> None:
        """The target's bytes again under the link's name, when that name selects rules the target's did not."""
        if selection(local) == selection(target_local):
            return
        kept = self.kept.get(target)
        if kept is None:
            self.out.add(display, "link-not-scanned", None, DETAILS["link-not-scanned"])
            return
        data, matched = kept
        for rule, line, detail in self._content(display, data, structure_checks(local)):
            if rule not in matched:
                self.out.add(display, rule, line, detail)

    def file(self, local: str, prefix: str, stream: IO[bytes], depth: int, budget: Budget | None = None) -> None:
        """A regular file, spooled (a zip's end record is at its end; a hard link may want it again)."""
        display = prefix + local
        top = budget is None
        budget = budget or Budget(MAX_ARCHIVE_BYTES, MAX_MEMBERS)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            size = _copy(stream, spool)
            try:
                self._rules(local, display, cast(IO[bytes], spool), size, depth, budget)
            except RulesFailed:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a rule raises, the file is named
                raise RulesFailed(display, exc) from exc
        if top and budget.exceeded:
            self.out.add(display, ARCHIVE_NOT_SCANNED, None,
                         f"more than {MAX_ARCHIVE_BYTES >> 20} MiB decoded under this file: not scanned past the bound")
        if top and budget.too_many:
            self._too_many(display)

    def _rules(self, local: str, display: str, spool: IO[bytes], size: int, depth: int, budget: Budget) -> None:
        spool.seek(0)
        head = spool.read(HEAD)
        spool.seek(0)
        hits = self._content(display, spool, structure_checks(local) if size else [])
        self.kept.keep(display, spool, size, frozenset(rule for rule, _, _ in hits))
        self._archive(kind_of(head), display, spool, depth, budget)
        self._add_raw(display, hits)

    def _add_raw(self, display: str, hits: list[Hit]) -> None:
        """Hits in an archive's raw (or decoded) bytes: a member's own finding says it better."""
        inside = self.out.rules_under(display + "!")
        for rule, line, detail in hits:
            if rule not in inside:
                self.out.add(display, rule, line, detail)

    def _archive(self, kind: str | None, display: str, spool: IO[bytes], depth: int, budget: Budget) -> None:
        """Open what the spool holds, if it is an archive (one found by its zip end record only, too)."""
        spool.seek(0)
        embedded = kind is None and zipfile.is_zipfile(spool)
        kind = "zip" if embedded else kind
        if kind is None:
            return
        if kind in NOT_OPENED.values():
            self.out.add(display, ARCHIVE_NOT_SCANNED, None, f"a {kind} archive: the scan cannot open it")
        elif depth >= MAX_DEPTH:
            self.out.add(display, ARCHIVE_NOT_SCANNED, None,
                         f"an archive nested more than {MAX_DEPTH} deep: not opened")
        elif kind in COMPRESSIONS:
            self._compressed(kind, display, spool, depth, budget)
        else:
            spool.seek(0)
            broken = self._container(kind, display, spool, depth + 1, budget)
            if broken and not embedded:
                self._unreadable(display, kind, broken)

    def _compressed(self, kind: str, display: str, spool: IO[bytes], depth: int, budget: Budget) -> None:
        if kind == "gzip":
            for text in gzip_texts(spool):
                self.value(display, "gzip header", text)
        spool.seek(0)
        guarded = Guarded(decoder(kind, spool), budget)
        decoded = buffered(guarded)
        head = read_head(decoded, HEAD)
        if kind == "lzma" and guarded.broken:
            return  # not .lzma after all: only its properties byte looked like it
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as inner:
            _copy(buffered(Prefixed(head, decoded)), inner)
            hits = self._content(display, cast(IO[bytes], inner), [])
            self._archive(kind_of(head), display, cast(IO[bytes], inner), depth + 1, budget)
            self._add_raw(display, hits)
        if guarded.broken:
            self._unreadable(display, kind, guarded.broken)

    def _container(self, kind: str, display: str, spool: IO[bytes], depth: int, budget: Budget) -> str:
        """The archive's members through the walk; the error class when it could not be read to its end."""
        try:
            if kind == "tar":
                return self._tar(buffered(Guarded(spool, budget)), display, depth, budget)
            if kind == "zip":
                with zipfile.ZipFile(spool) as archive:
                    return self._zip_members(archive, display, depth, budget)
            members = ar_members(spool) if kind == "ar" else cpio_members(spool)
            return self._listed(members, spool, display, depth, budget)
        except DECODE_ERRORS as exc:
            return type(exc).__name__

    def _tar(self, stream: IO[bytes], display: str, depth: int, budget: Budget) -> str:
        with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape") as tar:
            for member in tar:
                if not budget.take_member():
                    return ""
                self.tar_member(tar, member, display + "!", depth, budget)
            rest = cast(IO[bytes], tar.fileobj)
            while chunk := rest.read(1 << 16):
                if chunk.strip(b"\0"):
                    self.out.add(display, ARCHIVE_NOT_SCANNED, None,
                                 "data after the tar's end-of-archive marker: not scanned as members")
                    break
        return ""

    def _zip_members(self, archive: zipfile.ZipFile, display: str, depth: int, budget: Budget) -> str:
        for info in archive.infolist():
            if not budget.take_member():
                return ""
            local = member_path(info.filename)
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            kind = DIR if info.is_dir() else SYMLINK if is_link else FILE
            if kind != FILE:
                self.entry(local, display + "!", kind, 0, None, depth, budget)
                continue
            try:
                member = archive.open(info)
            except DECODE_ERRORS as exc:  # encrypted, or a compression zipfile does not know
                self.out.add(display + "!" + local, ARCHIVE_NOT_SCANNED, None,
                             f"a member that cannot be read ({type(exc).__name__}): not scanned")
                self.entry(local, display + "!", kind, info.file_size, None, depth, budget)
                continue
            guarded = Guarded(member, budget)
            with member:
                self.entry(local, display + "!", kind, info.file_size, buffered(guarded), depth, budget)
            if budget.exceeded or guarded.broken:
                return guarded.broken
        return ""

    def _listed(self, members: Iterator[Member], spool: IO[bytes], display: str, depth: int, budget: Budget) -> str:
        """ar and cpio: members located in the spool by their readers."""
        for member in members:
            if not budget.take_member() or budget.exceeded:
                return ""
            # a member's bytes are already in the spool, counted when they were decoded into it: reading them
            # again is no decompression (an initramfs, gzip around cpio, was counted twice and went unscanned)
            window = Window(spool, member.start, member.size)
            stream = buffered(window) if member.kind == FILE else None
            self.entry(member_path(member.name), display + "!", member.kind, member.size, stream, depth, budget)
        return ""

    def _content(self, display: str, stream: IO[bytes], checks: list[tuple[str, Check]]) -> list[Hit]:
        """The content rules and the name's structured checks over a seekable stream: (rule, line, detail)."""
        stream.seek(0)
        hits: list[Hit] = [(hit.rule, hit.line, f"the content matches the {hit.rule} rule")
                           for hit in scan_content(display, cast(BinaryIO, stream))]
        for rule, check in checks:
            stream.seek(0)
            hits += [(rule, hit.line, hit.detail) for hit in check(stream)]
        return hits

    def _too_many(self, display: str) -> None:
        self.out.add(display, ARCHIVE_NOT_SCANNED, None, f"more than {MAX_MEMBERS:,} members: not scanned past them")

    def _unreadable(self, display: str, kind: str, error: str) -> None:
        self.out.add(display, ARCHIVE_NOT_SCANNED, None, f"unreadable as {kind} ({error}): not scanned")


def _copy(source: IO[bytes], target: IO[bytes]) -> int:
    """Copy to the end; the number of bytes copied."""
    copied = 0
    while chunk := source.read(1 << 16):
        target.write(chunk)
        copied += len(chunk)
    return copied
