"""Hard links: the same file under a second name, and a name selects rules (config keywords, DER keys,
credential files). A layer's tar holds a hard link's data once, under the first name; the link comes
later in the same stream. So the walk keeps each small file of the layer (spooled, at most KEEP_FILE
each and KEEP_TOTAL all told) and, when a link's name selects rules its target's name did not, runs the
rules again under the link's name. A target that was not kept is reported: the scan fails closed.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import PurePosixPath
from typing import IO

from bakery.verify.secret_content import is_config, is_unit
from bakery.verify.secret_content_keys import DER_NAMES, PKCS12_NAMES
from bakery.verify.secret_detectors import is_shadow_copy
from bakery.verify.secret_paths import structure_checks

KEEP_FILE = 16 << 20
KEEP_TOTAL = 1 << 30
IN_MEMORY = 32 << 20  # the store goes to a temporary file past this


def selection(path: str) -> tuple[bool, bool, bool, bool, bool, frozenset[str]]:
    """What in a name decides which content rules run: config or not, a unit, a shadow copy, a DER/PKCS#12
    key name, a .vault-token, the structured checks. Only a link whose name changes one of these is scanned
    again (a link under any other name adds nothing, and failing it as unscanned would fail good images)."""
    name = PurePosixPath(path).name
    key_name = bool(DER_NAMES.search(path) or PKCS12_NAMES.search(path))
    return (is_config(path), is_unit(path), is_shadow_copy(path), key_name, name == ".vault-token",
            frozenset(rule for rule, _ in structure_checks(path)))


class KeptFiles:
    """The small files of one layer by their path, with the rules their content already matched."""

    def __init__(self) -> None:
        self._store = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)  # noqa: SIM115 - closed by close()
        self._files: dict[str, tuple[int, int, frozenset[str]]] = {}
        self._used = 0

    def keep(self, path: str, spool: IO[bytes], size: int, rules: frozenset[str]) -> None:
        if size > KEEP_FILE or self._used + size > KEEP_TOTAL:
            self._files.pop(path, None)
            return
        offset = self._store.seek(0, io.SEEK_END)
        spool.seek(0)
        shutil.copyfileobj(spool, self._store, 1 << 16)
        self._files[path] = (offset, size, rules)
        self._used += size

    def get(self, path: str) -> tuple[IO[bytes], frozenset[str]] | None:
        """The file's bytes and the rules it matched, or None when it was not kept."""
        if path not in self._files:
            return None
        offset, size, rules = self._files[path]
        self._store.seek(offset)
        return io.BytesIO(self._store.read(size)), rules

    def close(self) -> None:
        self._store.close()
