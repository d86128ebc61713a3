"""One runtime-config grammar, three readers: the library (validation at `config set` and load, and its own parse
of a delivered file), the applier on the instance (roles/base/files/bakery-runtime-config, run as a real process)
and the CloudWatch agent script. Every entry of a hostile corpus is refused by all of them or comes back
identically from all of them; systemd, the fourth reader, is checked in tests/integration/test_runtime_grammar.py.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bakery.config import Project
from bakery.environments import load_environment
from bakery.errors import ConfigError
from tests.conftest import REPO

pytestmark = pytest.mark.unit

APPLIER = REPO / "roles" / "base" / "files" / "bakery-runtime-config"
CLOUDWATCH = REPO / "roles" / "cloudwatch_agent" / "files" / "cloudwatch-agent-config"
LIMIT = 15 * 1024  # bakery.runtime_grammar.MAX_BYTES: EC2's 16 KiB of UserData less 1 KiB of headroom
SPLITTERS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # every character str.splitlines() splits on
INJECTION = "BREAK_GLASS_SSH=true"


def sized(total: int) -> str:
    """A value that makes the one-key file K="..."\\n exactly `total` bytes."""
    return "x" * (total - len('K=""\n'))


# (id, key, value, accepted): delivered as the naive rendering KEY="VALUE"\n, as today's library writes it.
VALUE_CORPUS: list[tuple[str, str, str, bool]] = [
    ("plain", "ENVIRONMENT", "qa", True),
    ("empty", "EMPTY", "", True),
    ("equals-inside", "QUERY", "a=b=c", True),
    ("spaces-around", "PADDED", "  two spaces each side  ", True),
    ("dollar-backtick", "SHELLISH", "$HOME ${PATH} `id` $(id)", True),
    ("hash-semicolon-quote", "PUNCT", "it's # not a comment ; nor this", True),
    ("latin-letters", "GREETING", "héllo wörld ÆØÅ", True),
    ("cjk", "CJK", "日本語のテキスト", True),
    ("emoji", "EMOJI", "deploy 😀 ok", True),
    ("nbsp", "NBSP", "a\u00a0b", True),
    ("format-chars", "FORMAT", "zero\u200bwidth \u202ebidi\u202c \ufeffbom", True),
    ("private-use", "PRIVATE", "\ue000\U000f0000", True),
    ("last-valid", "LAST", "\U0010fffd", True),
    ("ssh-key", "BREAK_GLASS_SSH_AUTHORIZED_KEY", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB you@laptop", True),
    ("url", "PAYMENTS_URL", "http://payments.qa.internal:8080/v1?a=1&b=2", True),
    ("at-the-limit", "K", sized(LIMIT), True),
    *[(f"split-{ord(c):04x}", "NOTE", f"ok{c}{INJECTION}{c}X=", False) for c in SPLITTERS],
    *[(f"c0-{n:02x}", "NOTE", f"a{chr(n)}b", False) for n in range(0x20) if chr(n) not in SPLITTERS],
    ("del", "NOTE", "a\x7fb", False),
    *[(f"c1-{n:02x}", "NOTE", f"a{chr(n)}b", False) for n in range(0x80, 0xa0) if chr(n) not in SPLITTERS],
    ("tab", "NOTE", "a\tb", False),
    ("nul", "NOTE", "a\x00b", False),
    ("trailing-backslash", "NOTE", "ends in a backslash\\", False),
    ("backslash-inside", "WINPATH", "C:\\temp\\x", False),
    ("double-quote", "NOTE", 'say "hi"', False),
    ("quote-injection", "NOTE", f'x"\n{INJECTION}\nY="', False),
    ("surrogate", "NOTE", "a\ud800b", False),
    ("noncharacter-fdd0", "NOTE", "a\ufdd0b", False),
    ("noncharacter-fffe", "NOTE", "a\ufffeb", False),
    ("noncharacter-ffff", "NOTE", "a\uffffb", False),
    ("noncharacter-1fffe", "NOTE", "a\U0001fffeb", False),
    ("noncharacter-10ffff", "NOTE", "a\U0010ffffb", False),
    ("over-the-limit", "K", sized(LIMIT + 1), False),
    ("hundred-kb", "NOTE", "x" * 100_000, False),
    ("secret-after-cr", "NOTE", "ok\rDATABASE_PASSWORD=hunter2-very-secret", False),
    ("key-lower-case", "note", "x", False),
    ("key-digit-first", "1NOTE", "x", False),
    ("key-underscore-first", "_NOTE", "x", False),
    ("key-dash", "NO-TE", "x", False),
    ("key-space", "NO TE", "x", False),
    ("key-empty", "", "x", False),
    ("key-unicode-letter", "ÄNOTE", "x", False),
    ("key-dotless-i", "NOTİ", "x", False),
    ("key-trailing-newline", "NOTE\n", "x", False),
    ("key-cr-injection", f"NOTE\r{INJECTION}\rX", "x", False),
]

# (id, bytes of the delivered file, the values it means or None for refused).
RAW_CORPUS: list[tuple[str, bytes, dict[str, str] | None]] = [
    ("empty-file", b"", {}),
    ("comments-and-blank-lines", b"# qa settings\n\n   \nENVIRONMENT=qa\n# LOG_LEVEL=x\n", {"ENVIRONMENT": "qa"}),
    ("bare-values", b"ENVIRONMENT=qa\nLOG_LEVEL=debug\n", {"ENVIRONMENT": "qa", "LOG_LEVEL": "debug"}),
    ("no-final-newline", b'A="1"', {"A": "1"}),
    ("crlf-line-ends", b'A="1"\r\nB=2\r\n', {"A": "1", "B": "2"}),
    ("cr-inside-crlf-file", b'A="1\rB=2"\r\n', None),
    ("cr-line-ends", b'A="1"\rB="2"\r', None),
    ("cr-before-crlf", b'A="1"\r\r\n', None),
    ("not-utf8", b'A="\xff"\n', None),
    ("latin-1", 'A="café"\n'.encode("latin-1"), None),
    ("encoded-surrogate", b'A="\xed\xa0\x80"\n', None),
    ("overlong-utf8", b'A="\xc0\xaf"\n', None),
    ("utf-16", 'A="1"\n'.encode("utf-16"), None),
    ("utf-8-bom", b'\xef\xbb\xbfA="1"\n', None),
    ("gzip", gzip.compress(b'A="1"\n'), None),
    ("nul-between-lines", b'A="1"\n\x00\nB="2"\n', None),
    ("nul-in-comment", b'# a\x00b\nA="1"\n', None),
    ("cr-in-comment", b"# a\rBREAK_GLASS_SSH=true\nA=1\n", None),
    ("continuation", b'A="x\\\nB="y"\n', None),
    ("comment-continuation", b"# note \\\nBREAK_GLASS_SSH=true\n", None),
    ("reserved-key", b'LD_PRELOAD="/tmp/x.so"\n', None),
    ("unclosed-quote", b'A="1\n', None),
    ("quote-only", b'A="\n', None),
    ("single-quoted", b"A='1'\n", None),
    ("text-after-quote", b'A="1" # note\n', None),
    ("bare-leading-space", b"A= 1\n", None),
    ("bare-trailing-space", b"A=1 \n", None),
    ("spaces-around-equals", b'A = "1"\n', None),
    ("leading-space", b' A="1"\n', None),
    ("export-prefix", b'export A="1"\n', None),
    ("no-equals", b"just some text\n", None),
    ("semicolon-comment", b";comment\nA=1\n", None),
    ("duplicate-key", b'A="1"\nA="2"\n', None),
    ("raw-over-the-limit", b"# " + b"x" * LIMIT + b"\n", None),
    ("raw-at-the-limit", b'A="' + b"y" * (LIMIT - 5) + b'"\n', {"A": "y" * (LIMIT - 5)}),
    ("bare-at-the-limit-over-it-quoted", b"A=" + b"y" * (LIMIT - 3) + b"\n", None),
]


# ---- the readers


def grammar() -> ModuleType:
    from bakery import runtime_grammar

    return runtime_grammar


def script(path: Path) -> ModuleType:
    """A role's python script (no .py suffix) as a module, to call its reader directly; compiled here so that no
    __pycache__ lands in the role (it would change the role's digest and be baked)."""
    module = ModuleType(path.name.replace("-", "_"))
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), module.__dict__)
    return module


def naive(key: str, value: str) -> bytes:
    return f'{key}="{value}"\n'.encode("utf-8", "surrogatepass")


def library_read(data: bytes) -> dict[str, str] | None:
    try:
        return grammar().read(data, "launch.env")
    except ConfigError:
        return None


class Applied:
    def __init__(self, proc: subprocess.CompletedProcess, target: Path):
        self.rc = proc.returncode
        self.log = (proc.stdout + proc.stderr).decode("utf-8", "replace")
        self.target = target

    @property
    def values(self) -> dict[str, str] | None:
        return script(CLOUDWATCH).read_env(str(self.target)) if self.rc == 0 else None


def apply(tmp_path: Path, data: bytes) -> Applied:
    """The applier as the unit runs it, on scratch paths; its one log line and its output checked here."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    launch, target = tmp_path / "launch.env", tmp_path / "run" / "runtime.env"
    launch.write_bytes(data)
    env = {"PATH": os.environ["PATH"], "BAKERY_LAUNCH_FILE": str(launch), "BAKERY_RUNTIME_FILE": str(target)}
    proc = subprocess.run([sys.executable, str(APPLIER)], env=env, capture_output=True, timeout=60, check=False)
    applied = Applied(proc, target)
    assert "Traceback" not in applied.log, applied.log
    assert len(applied.log.splitlines()) == 1, applied.log
    if applied.rc == 0:
        assert applied.log.startswith("bakery-runtime-config: applied ")
        assert target.stat().st_mode & 0o777 == 0o600
    else:
        assert applied.log.startswith("bakery-runtime-config: refusing runtime config: ")
        assert not target.exists() and not Path(f"{target}.tmp").exists()
    return applied


# ---- the findings of the review, each on the interfaces that exist today


def load_with(inventory_project: Path, yaml_value: str):
    path = inventory_project / "inventories" / "qa" / "group_vars" / "all" / "runtime.yml"
    path.write_text(f"bakery_runtime:\n  ENVIRONMENT: qa\n  NOTE: {yaml_value}\n", encoding="utf-8")
    return load_environment(Project(inventory_project), "qa")


@pytest.mark.parametrize("yaml_value, shown", [
    ('"ok\\rBREAK_GLASS_SSH=true\\r"', r"\x0d"),
    ('"ok\\u2028BREAK_GLASS_SSH=true"', r"\u2028"),
    ('"ok\\x85BREAK_GLASS_SSH=true"', r"\x85"),
    ("'ends in a backslash\\'", r"\x5c"),
    ('"a\\0b"', r"\x00"),
])
def test_the_library_refuses_what_a_reader_would_split_escape_or_cut(inventory_project, yaml_value, shown):
    with pytest.raises(ConfigError) as err:
        load_with(inventory_project, yaml_value)
    text = str(err.value)
    assert text.startswith("inventories/qa/group_vars/all/runtime.yml: bakery_runtime.NOTE has ")
    assert shown in text and "BREAK_GLASS" not in text and "\n" not in text and "\r" not in text


def test_the_library_refuses_a_config_larger_than_user_data_holds(inventory_project):
    with pytest.raises(ConfigError) as err:
        load_with(inventory_project, "x" * 100_000)
    assert "runtime.yml: bakery_runtime.NOTE is 100000 bytes; the whole runtime config may be 15360 bytes" in str(
        err.value) and "xxxxxxxx" not in str(err.value)
    path = inventory_project / "inventories" / "qa" / "group_vars" / "all" / "runtime.yml"
    path.write_text("bakery_runtime:\n" + "".join(f"  PART_{n}: {'y' * 4000}\n" for n in range(4)))
    with pytest.raises(ConfigError) as err:
        load_environment(Project(inventory_project), "qa")
    assert "runtime.yml: bakery_runtime is 16040 bytes as the launch env file (largest value: PART_0); " \
           f"the limit is {LIMIT} bytes" in str(err.value)


def test_config_set_refuses_a_carriage_return_before_anything_is_written():
    from bakery.fleets.runtime_config import parse_pairs

    with pytest.raises(ConfigError) as err:
        parse_pairs(["NOTE=ok\rBREAK_GLASS_SSH=true\rDATABASE_PASSWORD=hunter2"])
    assert str(err.value).startswith("config set: NOTE has '\\x0d' (a control character) at character 3")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match="config set: a key of 4 characters is not upper-case"):
        parse_pairs(["note=x"])


@pytest.mark.parametrize("data", [
    naive("NOTE", f"ok\r{INJECTION}\rX="),
    naive("NOTE", f"ok\u2028{INJECTION}\u2028X="),
    b'NOTE="ends in a backslash\\"\nBREAK_GLASS_SSH="true"\n',
    b'ENVIRONMENT="qa"\nNOTE="a\x00b"\n',
], ids=["cr", "u2028", "trailing-backslash", "nul"])
def test_the_applier_refuses_an_injection_with_one_line(tmp_path, data):
    applied = apply(tmp_path, data)
    assert applied.rc == 1 and "BREAK_GLASS_SSH" not in applied.log


@pytest.mark.parametrize("data, says", [
    (b'ENVIRONMENT="caf\xe9"\n', "is not UTF-8 (byte 0xe9 at offset 16)"),
    (gzip.compress(b'ENVIRONMENT="qa"\n'), "is gzip-compressed"),
    (b"X=" + b"x" * 100_000 + b"\n", f"the limit is {LIMIT} bytes"),
], ids=["latin-1", "gzip", "hundred-kb"])
def test_the_applier_refuses_undecodable_or_oversized_input_without_a_traceback(tmp_path, data, says):
    applied = apply(tmp_path, data)
    assert applied.rc == 1 and says in applied.log


def test_the_applier_logs_one_line_for_an_unexpected_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "runtime.env.tmp").mkdir()  # the temporary file cannot be opened: an OSError
    launch = tmp_path / "launch.env"
    launch.write_bytes(b"A=1\n")
    env = {"PATH": os.environ["PATH"], "BAKERY_LAUNCH_FILE": str(launch),
           "BAKERY_RUNTIME_FILE": str(tmp_path / "run" / "runtime.env")}
    proc = subprocess.run([sys.executable, str(APPLIER)], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert len((proc.stdout + proc.stderr).splitlines()) == 1
    assert proc.stdout.startswith("bakery-runtime-config: failed: IsADirectoryError")


def test_the_cloudwatch_script_splits_only_where_systemd_does(tmp_path):
    """systemd reads a double-quoted value up to its closing quote, a \\r included; so does the script."""
    path = tmp_path / "runtime.env"
    path.write_bytes('CLOUDWATCH_LOG_GROUP="/a\rENVIRONMENT=evil"\nENVIRONMENT="qa\u2028x"\n'.encode())
    assert script(CLOUDWATCH).read_env(str(path)) == {"CLOUDWATCH_LOG_GROUP": "/a\rENVIRONMENT=evil",
                                                      "ENVIRONMENT": "qa\u2028x"}


# ---- the corpus through every reader


@pytest.mark.parametrize("name, key, value, accepted", VALUE_CORPUS, ids=[c[0] for c in VALUE_CORPUS])
def test_a_value_is_refused_by_every_reader_or_round_trips_through_all(tmp_path, name, key, value, accepted):
    runtime_grammar = grammar()
    try:
        runtime_grammar.validate_all({key: value}, "runtime.yml")
        validated = True
    except ConfigError as err:
        validated = False
        message = str(err)
        assert message.startswith("runtime.yml: ") and "\n" not in message and "\r" not in message
        assert len(value) < 6 or value not in message
    assert validated is accepted
    data = naive(key, value)
    applied = apply(tmp_path, data)
    assert library_read(data) == applied.values  # the two parsers of a delivered file agree on its bytes
    if not accepted:
        with pytest.raises(ConfigError):
            runtime_grammar.render({key: value})  # bakery never delivers it
        assert applied.values != {key: value}
        # the naive rendering is refused too, except where it is a well-formed file of other keys
        assert applied.rc == 1 or name == "quote-injection"
        assert "hunter2" not in applied.log and (len(value) < 6 or value not in applied.log)
        return
    rendered = runtime_grammar.render({key: value})
    assert rendered.encode("utf-8") == data
    assert applied.rc == 0 and applied.target.read_bytes() == data
    assert applied.values == {key: value}


@pytest.mark.parametrize("name, data, expected", RAW_CORPUS, ids=[c[0] for c in RAW_CORPUS])
def test_a_delivered_file_is_refused_by_every_reader_or_read_the_same_by_all(tmp_path, name, data, expected):
    applied = apply(tmp_path, data)
    assert library_read(data) == expected
    assert applied.values == expected
    if expected is not None:
        assert applied.target.read_text(encoding="utf-8") == grammar().render(expected)


def test_library_and_applier_refuse_the_same_characters():
    """Every code point, not just the corpus: the two implementations of the value rule agree."""
    library, applier = grammar(), script(APPLIER)
    for code in range(0x110000):
        char = chr(code)
        assert library.refused_character(char) == applier.refused_character(char), hex(code)


def test_the_written_grammar_is_in_the_docs():
    docs = (REPO / "docs" / "environments.md").read_text(encoding="utf-8")
    assert "## Runtime config grammar" in docs and str(LIMIT) in docs
    assert grammar().MAX_BYTES == LIMIT and script(APPLIER).MAX_BYTES == LIMIT
