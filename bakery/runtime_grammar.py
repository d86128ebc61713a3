"""The one grammar of runtime config: what `bakery_runtime` may hold and how it travels to an instance.

Four readers see the delivered file: this library (`config set`, loading runtime.yml, reading a launch template's
UserData back), the applier on the instance (roles/base/files/bakery-runtime-config, which cannot import bakery and
carries a copy of these rules), systemd's `EnvironmentFile=` and the CloudWatch agent script (both read the
applier's output). Anything one of them would split, escape, cut or drop differently is refused here, so that every
value either reaches all of them unchanged or none of them.

Grammar (docs/environments.md, "Runtime config grammar"):

- key: `[A-Z][A-Z0-9_]*` (ASCII; an environment variable name that no shell or systemd rewrites), and not
  reserved: a name the dynamic loader, an interpreter, a shell, the C library, systemd or a bakery unit's own
  `Environment=` reads (LD_PRELOAD, PATH, PYTHON*, BROWSER, ...). `EnvironmentFile=` overrides a unit's
  `Environment=`, so such a key would change how every service runs, up to running code (PYTHONWARNINGS plus
  BROWSER runs a shell in every Python service). The applier carries the same two lists.
- value: UTF-8 text without control characters (C0 U+0000-U+001F, DEL U+007F, C1 U+0080-U+009F, so no tab, CR,
  NUL or U+0085), line and paragraph separators (U+2028, U+2029), surrogates, Unicode noncharacters (systemd
  252 refuses a whole env file holding a NUL or a noncharacter: every key is lost), double quote or backslash
  (in a double-quoted value systemd reads a backslash as an escape, and a trailing one escapes the closing quote
  and swallows the next line). `$`, backquote, `'`, `#`, `=`, spaces anywhere and every other character are
  plain text to every reader.
- file: `KEY="VALUE"` lines, ending in LF, sorted by key, UTF-8, at most MAX_BYTES. That is what bakery writes
  (render). A delivered file may also have blank lines, `#` comment lines, `KEY=VALUE` without quotes (the value
  then neither starts with a quote nor starts or ends with a space) and CRLF line ends (the CR only right before
  the LF). It is refused when it is gzip-compressed, not UTF-8, larger than MAX_BYTES (as delivered, or as
  bakery would write its values), names a key twice or has any other line.
- bakery-owned keys (OWNED_KEYS): BAKERY_PARAMS (local, aws or off: where the applier resolves references),
  BAKERY_REFRESH (`KEY=SECONDS ...`, 5..3600: the keys re-resolved live) and BAKERY_DATA_VOLUME (`LABEL:/path`).
  Only bakery writes them (render, after the user keys): runtime.yml and `config set` may not set them (they are
  reserved like every BAKERY_ key there), a delivered file may, with values in their own rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from bakery.errors import ConfigError

KEY_RE = re.compile(r"[A-Z][A-Z0-9_]*")  # used with fullmatch: `$` would let "KEY\n" through
# EC2 UserData "is limited to 16 KB, in raw form, before it is base64-encoded" (Amazon EC2 User Guide, "Work
# with instance user data", https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-add-user-data.html;
# the API refuses more than 21847 base64 characters, i.e. 16384 bytes). The env file is the whole UserData;
# 1 KiB stays free for a header or a key bakery may add itself.
USER_DATA_LIMIT = 16 * 1024
MAX_BYTES = USER_DATA_LIMIT - 1024
GZIP_MAGIC = b"\x1f\x8b"
RULE = ("a runtime config value is one line of UTF-8 text without control characters, line separators, "
        "double quotes or backslashes")
LARGE = "keep large values elsewhere and give a reference (ssm:/path, ...)"
BARE = "quote the value: KEY=\"VALUE\""
# Reserved keys (see the module docstring); the applier holds a copy of both lists and a test keeps them equal.
# WEBAPP_*: what roles/webapp/templates/webapp.service.j2 sets with Environment= (a test checks every unit).
RESERVED_KEYS = frozenset({
    "PATH", "HOME", "SHELL", "USER", "LOGNAME", "PWD", "OLDPWD", "TMPDIR", "TZDIR", "LANG", "LANGUAGE",
    "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "CDPATH", "BROWSER", "PAGER",
    "EDITOR", "VISUAL", "PERLLIB", "NODE_OPTIONS", "NODE_PATH", "NODE_EXTRA_CA_CERTS", "JAVA_TOOL_OPTIONS",
    "JDK_JAVA_OPTIONS", "SSLKEYLOGFILE", "LUA_INIT", "PHPRC", "PHP_INI_SCAN_DIR",
    "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "LOCALDOMAIN", "RES_OPTIONS",
    "GLIBC_TUNABLES", "OPENSSL_CONF", "OPENSSL_ENGINES", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE", "NOTIFY_SOCKET", "INVOCATION_ID", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY",
    "RUNTIME_DIRECTORY", "STATE_DIRECTORY", "CACHE_DIRECTORY", "LOGS_DIRECTORY", "CONFIGURATION_DIRECTORY",
    "WATCHDOG_PID", "WATCHDOG_USEC", "MAINPID", "MANAGERPID", "SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS",
    "WEBAPP_PORT", "WEBAPP_BIND", "WEBAPP_DATA_DIR",
})
RESERVED_PREFIXES = ("LD_", "PYTHON", "PERL5", "RUBY", "GEM_", "GIT_", "LUA_", "LC_", "SYSTEMD_", "LISTEN_",
                     "MALLOC_", "BAKERY_")


OWNED_KEYS = ("BAKERY_DATA_VOLUME", "BAKERY_PARAMS", "BAKERY_REFRESH")  # the applier holds a copy
LAUNCH_KEYS = ("BAKERY_DATA_VOLUME", "BAKERY_PARAMS")  # set per launch (target, deploy.yml); not part of a config
PARAMS_MODES = ("local", "aws", "off")
REFRESH_RANGE = (5, 3600)  # seconds between two resolutions of a refreshed key
DATA_VOLUME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}:/[^:\s]*")  # an ext4 label (16) and an absolute path


def escape(char: str) -> str:
    """A character as a Python escape (\\x0d, \\u2028, \\U0010ffff): shown instead of the value it is in."""
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(text: str, limit: int = 60) -> str:
    """A key (never a value) for a message: printable ASCII as it is, anything else escaped, cut at `limit`."""
    out = "".join(c if " " <= c <= "~" and c not in "'\\" else escape(c) for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def refused_kind(char: str) -> str | None:
    """Why a character may not be in a value, or None when it may."""
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return "a control character"
    if code in (0x2028, 0x2029):
        return "a line or paragraph separator"
    if 0xD800 <= code <= 0xDFFF:
        return "a surrogate, not UTF-8"
    if 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:
        return "a Unicode noncharacter, invalid to systemd"
    if char == '"':
        return "a double quote"
    if char == "\\":
        return "a backslash, an escape to systemd"
    return None


def refused_character(value: str) -> tuple[int, str, str] | None:
    """The first character a value may not hold: (1-based position, escape, why), or None."""
    for position, char in enumerate(value, start=1):
        kind = refused_kind(char)
        if kind:
            return position, escape(char), kind
    return None


def reserved(key: str) -> str | None:
    """Why a key may not be set by runtime config, or None when it may."""
    if key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES):
        return ("it is read by the dynamic loader, an interpreter, a shell, the C library, systemd or a bakery "
                "unit's own Environment=")
    return None


def validate_key(key: object, where: str, name: str = "key", owned: bool = False) -> str:
    """owned: a bakery-owned key is allowed (a file bakery delivers; never runtime.yml or `config set`)."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ConfigError(f"{where}: a {name} of {len(str(key))} characters is not upper-case letters, digits and "
                          "'_' starting with a letter (an environment variable name); it is not shown, it may be a "
                          "value pasted without its key")
    why = None if owned and key in OWNED_KEYS else reserved(key)
    if why:
        raise ConfigError(f"{where}: {name} '{key}' is reserved ({why}); give the application a name of its own")
    return key


def validate_value(value: str, where: str, name: str) -> str:
    """`name` is how the message calls the value (`bakery_runtime.KEY`, `KEY`); the value itself is never shown.
    Size first: a value that alone cannot fit is refused before any other rule (or regex) reads all of it."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise ConfigError(f"{where}: {name} is {size} bytes; the whole runtime config may be {MAX_BYTES} bytes "
                          f"(EC2 UserData holds {USER_DATA_LIMIT}): {LARGE}")
    refused = refused_character(value)
    if refused:
        position, escaped, kind = refused
        raise ConfigError(f"{where}: {name} has '{escaped}' ({kind}) at character {position}; {RULE}")
    return value


def validate_owned(key: str, value: str, where: str) -> str:
    """A bakery-owned key's value in its own rule (OWNED_KEYS); the applier checks the same."""
    if key == "BAKERY_PARAMS" and value not in PARAMS_MODES:
        raise ConfigError(f"{where}: BAKERY_PARAMS must be {', '.join(PARAMS_MODES[:-1])} or {PARAMS_MODES[-1]}, "
                          f"got '{shown(value)}'")
    if key == "BAKERY_DATA_VOLUME" and not DATA_VOLUME_RE.fullmatch(value):
        raise ConfigError(f"{where}: BAKERY_DATA_VOLUME must be LABEL:/absolute/path (a filesystem label of at most "
                          f"16 letters, digits, '_', '.', '-'), got '{shown(value)}'")
    if key == "BAKERY_REFRESH":
        refresh_intervals(value, where)
    return value


def refresh_intervals(value: str, where: str) -> dict[str, int]:
    """BAKERY_REFRESH's `KEY=SECONDS KEY2=SECONDS` as a mapping; ConfigError naming the key otherwise."""
    low, high = REFRESH_RANGE
    result: dict[str, int] = {}
    for item in value.split(" ") if value else []:
        key, sep, seconds = item.partition("=")
        if not sep or not KEY_RE.fullmatch(key):
            raise ConfigError(f"{where}: BAKERY_REFRESH: expected KEY=SECONDS items separated by one space, "
                              f"got '{shown(item)}'")
        validate_key(key, f"{where}: BAKERY_REFRESH")
        if not seconds.isdigit() or not seconds.isascii() or not low <= int(seconds) <= high:
            raise ConfigError(f"{where}: BAKERY_REFRESH: {key}'s interval {shown(seconds)} is not a whole number of "
                              f"seconds from {low} to {high}")
        if key in result:
            raise ConfigError(f"{where}: BAKERY_REFRESH names {key} twice")
        result[key] = int(seconds)
    return result


def render_refresh(intervals: Mapping[str, int]) -> str:
    """The BAKERY_REFRESH value of a key -> seconds mapping (sorted: one digest per config)."""
    return " ".join(f"{key}={seconds}" for key, seconds in sorted(intervals.items()))


def validate_all(values: Mapping[str, str], where: str, prefix: str = "", owned: bool = False) -> None:
    """Every key and value, and the size of the file they make; `prefix` names the mapping (`bakery_runtime`);
    owned: the bakery-owned keys are allowed, in their own rules (a file bakery writes or delivers)."""
    for key, value in values.items():
        validate_key(key, where, f"{prefix} key" if prefix else "key", owned=owned)
        validate_value(value, where, f"{prefix}.{key}" if prefix else key)
        if owned and key in OWNED_KEYS:
            validate_owned(key, value, where)
    size = len(_lines(values).encode("utf-8"))
    if size > MAX_BYTES:
        largest = max(values, key=lambda k: len(values[k].encode("utf-8")))
        raise ConfigError(f"{where}: {prefix or 'the runtime config'} is {size} bytes as the launch env file "
                          f"(largest value: {largest}); the limit is {MAX_BYTES} bytes (EC2 UserData holds "
                          f"{USER_DATA_LIMIT}): {LARGE}")


def render(values: Mapping[str, str], owned: Mapping[str, str] | None = None) -> str:
    """The env file delivered at launch: KEY="VALUE" lines, LF, the user keys sorted, then the bakery-owned keys
    (in `values`, as BAKERY_REFRESH is, or in `owned`) sorted; refused (ConfigError) if off-grammar."""
    user = {k: v for k, v in values.items() if k not in OWNED_KEYS}
    bakery = {**{k: v for k, v in values.items() if k in OWNED_KEYS}, **(owned or {})}
    validate_all(user, "runtime config")
    validate_all({**user, **bakery}, "runtime config", owned=True)
    return _lines(user) + _lines(bakery)


def _lines(values: Mapping[str, str]) -> str:
    user = sorted((k, v) for k, v in values.items() if k not in OWNED_KEYS)
    bakery = sorted((k, v) for k, v in values.items() if k in OWNED_KEYS)
    return "".join(f'{key}="{value}"\n' for key, value in user + bakery)


def read(data: bytes, source: str) -> dict[str, str]:
    """A delivered file (bytes, as the applier reads it) into its values; ConfigError naming source and line."""
    if data[:2] == GZIP_MAGIC:
        raise ConfigError(f"{source} is gzip-compressed; deliver the runtime config as plain KEY=\"VALUE\" lines")
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{source} is {len(data)} bytes; the limit is {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{source} is not UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start})") from None
    return parse(text, source)


def parse_config(text: str, source: str) -> dict[str, str]:
    """A delivered file's config: its values without LAUNCH_KEYS (BAKERY_REFRESH stays: it is the config's), so
    that it has the digest it was deployed under."""
    return {key: value for key, value in parse(text, source).items() if key not in LAUNCH_KEYS}


def parse(text: str, source: str) -> dict[str, str]:
    """A delivered file's text into its values: split at LF only (never str.splitlines), one rule per line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError(f"{source} is larger than {MAX_BYTES} bytes")
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        where = f"{source}:{number}"
        line = line.removesuffix("\r")
        if line.startswith("#"):
            if line.endswith("\\"):
                raise ConfigError(f"{where}: the comment ends in a backslash, which joins the next line to it in "
                                  "systemd before 254; drop the backslash")
            validate_value(line.replace('"', "").replace("\\", ""), where, "the comment")
            continue
        if not line.strip(" "):
            continue
        key, sep, raw = line.partition("=")
        if not sep or not KEY_RE.fullmatch(key):
            raise ConfigError(f"{where}: expected KEY=VALUE with an upper-case KEY (the text before '=' is not "
                              "shown: it may be a value pasted without its key)")
        validate_key(key, where, owned=True)
        value = _unquoted(raw, where, key)
        if key in values:
            raise ConfigError(f"{where}: {key} is given twice (first on line {lines[key]})")
        values[key], lines[key] = value, number
    validate_all(values, source, owned=True)  # the file bakery would write for these values fits, too
    return values


def _unquoted(raw: str, where: str, key: str) -> str:
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise ConfigError(f"{where}: {key} opens a double quote that does not end the line")
        return validate_value(raw[1:-1], where, key)
    if raw.startswith("'") or raw != raw.strip(" "):
        raise ConfigError(f"{where}: {key} has a bare value that starts with a quote or a space or ends with a "
                          f"space; {BARE}")
    return validate_value(raw, where, key)
