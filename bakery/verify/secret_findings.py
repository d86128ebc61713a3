"""What the secret scan reports: where, which rule, which layer; never the secret itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bakery.verify.secret_allowlist import AllowEntry, is_allowed


@dataclass(frozen=True)
class Finding:
    path: str  # absolute in the image; an archive member as "/opt/x.tar.gz!/inner/file"
    rule: str
    line: int | None = None
    layer: str = ""
    detail: str = ""  # a fixed text about the rule; never the matched value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """One printable line for logs and JUnit: control characters and undecodable bytes escaped."""
        where = printable(self.path) + (f":{self.line}" if self.line is not None else "")
        layer = f" (layer {self.layer})" if self.layer else ""
        return f"{where}: {self.rule}: {self.detail}{layer}"


def printable(text: str) -> str:
    """A name as one line: a newline in a file name becomes \\n, an undecodable byte \\xNN."""
    out = []
    for char in text:
        if "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char == "\\":
            out.append("\\\\")
        elif not char.isprintable():
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


MAX_FINDINGS = 1_000  # per layer; past it one summary finding says how many more there are
MAX_LINES = 5  # findings per (path, rule); the last one counts the lines past it


@dataclass
class Collector:
    """The findings of one scan, minus what the allow-list excuses: per (path, rule) the first MAX_LINES
    lines and a count of the others, at most `limit` in all, so that a file of a million key markers
    stays a handful of findings."""

    layer: str
    allowlist: list[AllowEntry]
    limit: int = MAX_FINDINGS
    findings: list[Finding] = field(default_factory=list)
    _index: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # positions in findings; [] allowed
    _more: dict[int, int] = field(default_factory=dict)  # lines past MAX_LINES, on the last position
    _dropped: int = 0
    _under: dict[str, set[str]] = field(default_factory=dict)  # archive path + "!" -> rules found inside
    _redacted: set[str] = field(default_factory=set)  # name segments that are secrets themselves

    def redact(self, segment: str) -> None:
        """A file or directory name that is itself a secret: reports show `<redacted>` in its place."""
        self._redacted.add(segment)

    def _shown(self, path: str) -> str:
        return "/".join("<redacted>" if part in self._redacted else part for part in path.split("/"))

    def rules_under(self, prefix: str) -> set[str]:
        """The rules found (or allowed) in members whose path starts with `prefix` ("/opt/x.tar!")."""
        return self._under.get(prefix, set())

    def add(self, path: str, rule: str, line: int | None = None, detail: str = "") -> None:
        key = (path, rule)
        for cut in (i for i, char in enumerate(path) if char == "!"):
            self._under.setdefault(path[: cut + 1], set()).add(rule)
        positions = self._index.get(key)
        if positions is None:
            if is_allowed(path, rule, self.allowlist):
                self._index[key] = []
                return
            positions = self._index[key] = []
        elif not positions or any(self.findings[p].line == line for p in positions):
            return  # allowed, or this line is reported
        if len(positions) >= MAX_LINES:
            self._more[positions[-1]] = self._more.get(positions[-1], 0) + 1
        elif len(self.findings) >= self.limit:
            self._dropped += 1
        else:
            positions.append(len(self.findings))
            self.findings.append(Finding(path, rule, line, self.layer, detail))

    def result(self) -> list[Finding]:
        """The findings, the last of a (path, rule) with its count of further lines, and a summary when
        some were left out."""
        out = [replace(finding, path=self._shown(finding.path),
                       detail=finding.detail + (f" (and {self._more[i]:,} more lines)" if i in self._more else ""))
               for i, finding in enumerate(self.findings)]
        if self._dropped:
            out.append(Finding("/", "too-many-findings", None, self.layer,
                               f"{self._dropped:,} more findings are not listed (over {self.limit:,} in one "
                               "layer); fix the ones listed and scan again"))
        return out
