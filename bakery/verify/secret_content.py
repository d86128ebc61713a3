"""Content rules of the secret scan: what inside a file is a secret.

Interface (fixed; the path rules, archives and layer walk build on it):
  scan_content(name, stream) -> list[ContentHit]   every content rule over the WHOLE stream
  CONTENT_RULE_NAMES                                every rule name scan_content can return

The stream is read once, in chunks, to its end (a key after gigabytes of logs is still found) and never
held whole. An image layer holds ~100k files, so the detectors only see candidate lines: one compiled
regex of cheap anchors runs over each chunk, and only the lines it hits go to the detectors (at most
WINDOW bytes either side of the hit, so a minified or binary "line" of megabytes costs linear time).
Binary files (a NUL in the first 8 KiB) get the token and key-block rules but not the keyword rules;
UTF-16 text is decoded first. Hits carry the rule and the line, never the matched text.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

from bakery.verify.secret_content_keys import (
    ANSIBLE_VAULT,
    BASE64_PEM,
    KEY_ANCHORS,
    KEY_RULE_NAMES,
    LOOKAHEAD,
    PEM_MARKER,
    PUTTY,
    WIREGUARD,
    base64_pem_is_key,
    block_follows,
    der_rule,
    marker_rule,
    putty_private_follows,
    utf16_codec,
)
from bakery.verify.secret_detectors import LEGACY_VAULT_TOKEN, RULE_NAMES, anchors, token_rules

CHUNK = 1 << 20  # bytes read at a time
HEAD = 8 << 10  # a NUL in this much makes a file binary
WINDOW = 32 << 10  # bytes either side of a prefilter hit that a detector sees on a long line
OVERLAP = 4 << 10  # a line longer than a chunk is scanned in pieces that overlap this much


@dataclass(frozen=True)
class ContentHit:
    rule: str
    line: int | None  # 1-based line number where there is one


CONTENT_RULE_NAMES = frozenset(RULE_NAMES | KEY_RULE_NAMES)

# Keyword rules (password = ..., passwords in URLs) only in files that are configuration by their name: in
# source code and documentation the same words are variable names and examples.
CONFIG_SUFFIXES = (".conf", ".cfg", ".cnf", ".ini", ".env", ".properties", ".yml", ".yaml", ".toml", ".json",
                   ".npmrc", ".pypirc", ".s3cfg", ".netrc", ".boto", ".tfvars", ".config")
CONFIG_NAMES = frozenset({".env", "credentials", "config", ".npmrc", ".pypirc", ".s3cfg", ".netrc", ".boto",
                          ".git-credentials", ".pgpass", ".my.cnf", ".vault-token"})


def is_config(name: str) -> bool:
    base = PurePosixPath(name).name
    return (name.startswith("/etc/") or base in CONFIG_NAMES or base.lower().endswith(CONFIG_SUFFIXES)
            or base.startswith(".env."))


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


def _utf16_as_utf8(chunks: Iterator[bytes], codec: str) -> Iterator[bytes]:
    decoder = codecs.getincrementaldecoder(codec)(errors="replace")
    for data in chunks:
        yield decoder.decode(data).encode("utf-8")
    yield decoder.decode(b"", final=True).encode("utf-8")


class _Scanner:
    """Finds (rule, line) pairs in a sequence of chunks."""

    def __init__(self, *, binary: bool, config: bool) -> None:
        self.binary = binary
        self.config = config and not binary
        self.prefilter = _PREFILTERS[self.config]
        self.hits: set[tuple[str, int | None]] = set()

    def run(self, chunks: Iterator[bytes]) -> None:
        buf, line = b"", 1
        for data in chunks:
            buf += data
            cut = buf.rfind(b"\n") + 1
            if not cut and len(buf) < CHUNK:
                continue  # wait for the end of this line
            keep = self._scan(buf, cut or len(buf), line, final=False)
            if not cut:
                keep = min(keep, len(buf) - OVERLAP)  # a line longer than a chunk: keep an overlap
            line += buf.count(b"\n", 0, keep)
            buf = buf[keep:]
        self._scan(buf, len(buf), line, final=True)

    def _scan(self, buf: bytes, end: int, line: int, *, final: bool) -> int:
        """Check every candidate line before `end`; return where the next round starts (a key marker whose
        body is not read yet is looked at again with more data)."""
        done, counted = 0, 0
        for match in self.prefilter.finditer(buf, 0, end):
            if match.start() < done:
                continue
            newline = buf.rfind(b"\n", max(0, match.start() - WINDOW), match.start())
            lo = newline + 1 if newline >= 0 else max(0, match.start() - WINDOW)
            stop = buf.find(b"\n", match.end(), min(end, match.end() + WINDOW))
            hi = stop if stop >= 0 else min(end, match.end() + WINDOW)
            if not final and len(buf) - hi < LOOKAHEAD and _NEEDS_LOOKAHEAD.search(buf, lo, hi):
                return lo
            line += buf.count(b"\n", counted, lo)
            counted = lo
            for rule in self._rules(buf, lo, hi):
                self.hits.add((rule, None if self.binary else line))  # a binary's "lines" mean nothing
            done = hi
        return end

    def _rules(self, buf: bytes, lo: int, hi: int) -> set[str]:
        segment = buf[lo:hi]
        rules = set()
        for marker in PEM_MARKER.finditer(segment):
            alone = not self.binary and segment.strip() == marker.group()
            if alone or block_follows(buf, lo + marker.end()):
                rules.add(marker_rule(marker.group()))
        if any(putty_private_follows(buf, lo + m.end()) for m in PUTTY.finditer(segment)):
            rules.add("putty-private-key")
        if WIREGUARD.search(segment):
            rules.add("wireguard-private-key")
        if any(base64_pem_is_key(m.group()) for m in BASE64_PEM.finditer(segment)):
            rules.add("private-key-base64")
        if not self.binary and ANSIBLE_VAULT.search(segment):
            rules.add("ansible-vault")
        tokens = token_rules(segment.decode("latin-1"), config=self.config)
        if rules:
            tokens.discard("config-secret")  # `PrivateKey = ...` is a key, not also a password
        return rules | tokens


def scan_content(name: str, stream: BinaryIO) -> list[ContentHit]:
    """Every content rule over the whole stream, read once; hits sorted by line."""
    raw = _RawChunks(stream)
    codec = utf16_codec(raw.head)
    binary = codec is None and b"\0" in raw.head[:HEAD]
    scanner = _Scanner(binary=binary, config=is_config(name))
    scanner.run(_utf16_as_utf8(iter(raw), codec) if codec else iter(raw))
    hits = scanner.hits
    der = der_rule(name, raw.head, raw.size)
    if der:
        hits.add((der, None))
    if PurePosixPath(name).name == ".vault-token" and LEGACY_VAULT_TOKEN.fullmatch(raw.head.decode("latin-1")):
        hits.add(("vault-token", 1))
    return [ContentHit(rule, line) for rule, line in sorted(hits, key=lambda hit: (hit[1] or 0, hit[0]))]
