"""Content rules of the secret scan: what inside a file is a secret.

Interface (fixed; the path rules, archives and layer walk build on it):
  scan_content(name, stream) -> list[ContentHit]   every content rule over the WHOLE stream
  scan_value(name, text) -> list[ContentHit]       token and key rules over a name, link target or PAX value
  CONTENT_RULE_NAMES                                every rule name either can return

The stream is read once, in chunks, to its end (a key after gigabytes of logs is still found) and never
held whole. An image layer holds ~100k files, so the detectors only see candidate slices: one compiled
regex of cheap anchors runs over each chunk, and a detector sees the line around a hit, but at most BEFORE
and AFTER bytes of it (a token run reaching past that is followed to its end, up to LONG_TOKEN), so a
minified or binary "line" of megabytes costs linear time whatever it repeats.
Binary files (a NUL in the first 8 KiB) get the token and key-block rules but not the line rules (keyword,
marker alone on its line, Ansible Vault); in a file that is configuration by its name, only a slice holding
a NUL is binary. UTF-16 and UTF-32 text is decoded first (and its raw bytes scanned too). Hits carry the
rule and the line, never the matched text.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

from bakery.verify.secret_content_keys import (
    ANSIBLE_VAULT,
    BASE64_PEM,
    KEY_ANCHORS,
    KEY_RULE_NAMES,
    KEYSTORE_MAGICS,
    KEYSTORE_MAX,
    LOOKAHEAD,
    PEM_MARKER,
    PUTTY,
    WIREGUARD,
    base64_pem_is_key,
    block_follows,
    der_rule,
    keystore_holds_key,
    marker_rule,
    putty_private_follows,
    text_codec,
)
from bakery.verify.secret_detectors import (
    LEGACY_VAULT_TOKEN,
    RULE_NAMES,
    SHADOW_HASH,
    anchors,
    is_shadow_copy,
    token_rules,
    unit_lines,
)

CHUNK = 1 << 20  # bytes read at a time
HEAD = 8 << 10  # a NUL in this much makes a file binary
BEFORE, AFTER = 256, 1024  # bytes before and after an anchor that a detector sees on a long line
TAIL = 256  # an anchor this close to the end of a slice that was cut short gets a slice of its own
LONG_TOKEN = 16 << 10  # how far past its anchor a token run (a long JWT) is followed
OVERLAP = 4 << 10  # a line longer than a chunk is scanned in pieces that overlap this much


@dataclass(frozen=True)
class ContentHit:
    rule: str
    line: int | None  # 1-based line number where there is one


CONTENT_RULE_NAMES = frozenset(RULE_NAMES | KEY_RULE_NAMES)

# Keyword rules (password = ..., passwords in URLs) only in files that are configuration by their name: in
# source code and documentation the same words are variable names and examples.
CONFIG_SUFFIXES = (".conf", ".cfg", ".cnf", ".ini", ".env", ".properties", ".yml", ".yaml", ".toml", ".json",
                   ".npmrc", ".pypirc", ".s3cfg", ".netrc", ".boto", ".tfvars", ".tfstate", ".config")
UNIT_SUFFIXES = (".service", ".socket", ".mount", ".swap")  # systemd units that take Environment=
CONFIG_NAMES = frozenset({".env", "credentials", "config", ".npmrc", ".pypirc", ".s3cfg", ".netrc", ".boto",
                          ".git-credentials", ".pgpass", ".my.cnf", ".vault-token"})


# configuration whose keys name things, not secrets: nsswitch.conf's `passwd: files` is the NSS database `passwd`
# served from files (the boot role's libnss-myhostname rewrites it, so it is in a layer the scan reads)
NOT_CONFIG = frozenset({"/etc/nsswitch.conf"})


def is_config(name: str) -> bool:
    base = PurePosixPath(name).name
    if name in NOT_CONFIG:
        return False
    return (name.startswith("/etc/") or base in CONFIG_NAMES or base.lower().endswith(CONFIG_SUFFIXES)
            or base.startswith(".env.") or is_unit(name))


def is_unit(name: str) -> bool:
    """A systemd unit or drop-in: its Environment= lines are assignments the keyword rule reads one by one."""
    return name.endswith(UNIT_SUFFIXES) or ("/systemd/" in name and name.endswith(".conf"))


def _trie(words: list[bytes]) -> bytes:
    """An alternation of literals grouped by their first byte: the regex engine tries a few branches per
    position instead of all of them (several times faster than a flat alternation)."""
    groups: dict[bytes, list[bytes]] = {}
    for word in words:
        groups.setdefault(word[:1], []).append(word[1:])
    parts = []
    for first, rests in sorted(groups.items()):
        head = re.escape(first)
        if b"" in rests:  # the shorter literal is enough: any longer one starts with it
            parts.append(head)
        else:
            parts.append(head + (b"(?:" + _trie(rests) + b")" if len(rests) > 1 else re.escape(rests[0])))
    return b"|".join(parts)


def _prefilter(*, config: bool) -> re.Pattern[bytes]:
    return re.compile(_trie(sorted({*KEY_ANCHORS, *(a.encode() for a in anchors(config=config))})))


_PREFILTERS = {False: _prefilter(config=False), True: _prefilter(config=True)}
_NEEDS_LOOKAHEAD = re.compile(PEM_MARKER.pattern + b"|" + PUTTY.pattern.replace(b"(?m)^", b""))
_TOKEN_RUN = re.compile(rb"[\w.+/=-]*+")


class _RawChunks:
    """The stream in CHUNK reads, counting its size; the first HEAD bytes are read up front to classify it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        parts: list[bytes] = []
        self.size = 0
        while self.size < HEAD and (data := stream.read(CHUNK)):
            parts.append(data)
            self.size += len(data)
        self.head = b"".join(parts)

    def __iter__(self) -> Iterator[bytes]:
        if self.head:
            yield self.head
        while data := self._stream.read(CHUNK):
            self.size += len(data)
            yield data


def _decoded_as_utf8(chunks: Iterator[bytes], codec: str) -> Iterator[bytes]:
    decoder = codecs.getincrementaldecoder(codec)(errors="replace")
    for data in chunks:
        yield decoder.decode(data).encode("utf-8")
    yield decoder.decode(b"", final=True).encode("utf-8")


class _Scanner:
    """Finds (rule, line) pairs in a sequence of chunks.

    binary: the file has a NUL in its head; config: it is configuration by its name (keyword rules, and a slice
    without a NUL counts as text even in a binary file); unit: a systemd unit; shadow: a copy of /etc/shadow."""

    def __init__(self, *, binary: bool, config: bool, unit: bool = False, shadow: bool = False) -> None:
        self.binary = binary
        self.config = config
        self.unit = unit
        self.shadow = shadow
        self.lines = config or not binary  # a binary's "lines" mean nothing
        self.prefilter = _PREFILTERS[config]
        self.vault = not binary  # an Ansible Vault header counts where it starts a line
        self.hits: set[tuple[str, int | None]] = set()
        self._buf, self._line = b"", 1

    def run(self, chunks: Iterable[bytes]) -> None:
        for data in chunks:
            self.feed(data)
        self.finish()

    def feed(self, data: bytes) -> None:
        buf = self._buf + data
        cut = buf.rfind(b"\n") + 1
        if not cut and len(buf) < CHUNK:
            self._buf = buf  # wait for the end of this line
            return
        keep = self._scan(buf, cut or len(buf), self._line, final=False)
        if not cut:
            keep = min(keep, len(buf) - OVERLAP)  # a line longer than a chunk: keep an overlap
        self._shadow_hashes(buf, keep, self._line)
        self._line += buf.count(b"\n", 0, keep)
        self._buf = buf[keep:]

    def finish(self) -> None:
        self._scan(self._buf, len(self._buf), self._line, final=True)
        self._shadow_hashes(self._buf, len(self._buf), self._line)

    def _shadow_hashes(self, buf: bytes, end: int, line: int) -> None:
        if self.shadow:
            for match in SHADOW_HASH.finditer(buf, 0, end):
                self.hits.add(("password-hash", line + buf.count(b"\n", 0, match.start())))

    def _scan(self, buf: bytes, end: int, line: int, *, final: bool) -> int:
        """Check every candidate slice before `end`; return where the next round starts (a key marker whose
        body is not read yet is looked at again with more data)."""
        done, counted = 0, 0
        for match in self.prefilter.finditer(buf, 0, end):
            if match.start() < done:
                continue
            lo, hi, line_end = _slice(buf, match.start(), match.end(), end)
            if not final and len(buf) - hi < LOOKAHEAD and _NEEDS_LOOKAHEAD.search(buf, lo, hi):
                return lo
            line += buf.count(b"\n", counted, lo)
            counted = lo
            for rule in self._rules(buf, lo, hi):
                self.hits.add((rule, line if self.lines else None))
            done = hi if line_end else hi - TAIL
        return end

    def _rules(self, buf: bytes, lo: int, hi: int) -> set[str]:
        segment = buf[lo:hi]
        text = not self.binary or (self.config and b"\0" not in segment)
        rules = set()
        for marker in PEM_MARKER.finditer(segment):
            alone = text and segment.strip() == marker.group()
            if alone or block_follows(buf, lo + marker.end()):
                rules.add(marker_rule(marker.group()))
        if any(putty_private_follows(buf, lo + m.end()) for m in PUTTY.finditer(segment)):
            rules.add("putty-private-key")
        if WIREGUARD.search(segment):
            rules.add("wireguard-private-key")
        if any(base64_pem_is_key(m.group()) for m in BASE64_PEM.finditer(segment)):
            rules.add("private-key-base64")
        if (self.vault or text) and ANSIBLE_VAULT.search(segment):
            rules.add("ansible-vault")
        decoded = segment.decode("latin-1")
        config = self.config and text
        tokens = set().union(*(token_rules(part, config=config)
                               for part in (unit_lines(decoded) if self.unit else [decoded])))
        if rules:
            tokens.discard("config-secret")  # `PrivateKey = ...` is a key, not also a password
        return rules | tokens


def _slice(buf: bytes, start: int, stop: int, end: int) -> tuple[int, int, bool]:
    """The part of the anchor's line a detector sees: at most BEFORE bytes before it and AFTER after it, a token
    run cut there followed to its end (up to LONG_TOKEN); and whether that reaches the end of the line."""
    newline = buf.rfind(b"\n", max(0, start - BEFORE), start)
    lo = newline + 1 if newline >= 0 else max(0, start - BEFORE)
    newline = buf.find(b"\n", stop, min(end, stop + AFTER))
    if newline >= 0:
        return lo, newline, True
    hi = min(end, stop + AFTER)
    run = _TOKEN_RUN.match(buf, hi, min(end, stop + LONG_TOKEN))
    hi = run.end() if run else hi
    return lo, hi, hi >= end or buf[hi:hi + 1] == b"\n"


def scan_value(name: str, text: str) -> list[ContentHit]:
    """The token and key rules (not the keyword rules) over a short string that is not a file's content: a member
    name, a symlink target, a PAX header value such as an xattr (`name` is where it was found). A value has no
    lines, so a key marker counts only with its body."""
    del name  # the rules do not depend on where the value is; callers name it for their report
    scanner = _Scanner(binary=True, config=False)
    scanner.vault = True  # an xattr may hold a whole vault file
    scanner.run(iter([text.encode("utf-8", "surrogateescape")]))
    return [ContentHit(rule, None) for rule in sorted({rule for rule, _line in scanner.hits})]


def _tee(raw: Iterable[bytes], raw_scanner: _Scanner | None, kept: bytearray | None) -> Iterator[bytes]:
    """The raw chunks, read once: handed on (maybe to be decoded) while a second scanner sees them as they are and
    a keystore's bytes are kept (up to KEYSTORE_MAX) to be read when the stream ends."""
    for data in raw:
        if kept is not None and len(kept) <= KEYSTORE_MAX:
            kept += data
        if raw_scanner:
            raw_scanner.feed(data)
        yield data
    if raw_scanner:
        raw_scanner.finish()


def scan_content(name: str, stream: BinaryIO) -> list[ContentHit]:
    """Every content rule over the whole stream, read once; hits sorted by line."""
    raw = _RawChunks(stream)
    codec = text_codec(raw.head)
    binary = codec is None and b"\0" in raw.head[:HEAD]
    scanner = _Scanner(binary=binary, config=is_config(name), unit=is_unit(name), shadow=is_shadow_copy(name))
    raw_scanner = _Scanner(binary=True, config=False) if codec else None
    kept = bytearray() if raw.head[:4] in KEYSTORE_MAGICS else None
    chunks = _tee(raw, raw_scanner, kept)
    scanner.run(_decoded_as_utf8(chunks, codec) if codec else chunks)
    hits = scanner.hits | (raw_scanner.hits if raw_scanner else set())
    der = der_rule(name, raw.head, raw.size)
    if der:
        hits.add((der, None))
    if kept is not None and keystore_holds_key(bytes(kept) if len(kept) <= KEYSTORE_MAX else None):
        hits.add(("java-keystore", None))
    if PurePosixPath(name).name == ".vault-token" and LEGACY_VAULT_TOKEN.fullmatch(raw.head.decode("latin-1")):
        hits.add(("vault-token", 1))
    return [ContentHit(rule, line) for rule, line in sorted(hits, key=lambda hit: (hit[1] or 0, hit[0]))]
