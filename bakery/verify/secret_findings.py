"""What the secret scan reports: where, which rule, which layer; never the secret itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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


@dataclass
class Collector:
    """The findings of one scan: each once, minus what the allow-list excuses."""

    layer: str
    allowlist: list[AllowEntry]
    findings: list[Finding] = field(default_factory=list)
    _seen: set[tuple[str, str, int | None]] = field(default_factory=set)

    def add(self, path: str, rule: str, line: int | None = None, detail: str = "") -> None:
        key = (path, rule, line)
        if key in self._seen:
            return
        self._seen.add(key)
        if not is_allowed(path, rule, self.allowlist):
            self.findings.append(Finding(path, rule, line, self.layer, detail))
