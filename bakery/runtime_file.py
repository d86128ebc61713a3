"""runtime.yml (`bakery_runtime`) read strictly: every value as it is written, each key once, no secret by value.

YAML would silently turn `0x1F` into 31, `01234` into 668, `12:30` into 750, `1.10` into 1.1, `NO` into false,
a date into a reformatted timestamp, and let a second `A:` (or a second `bakery_runtime:`) replace the first.
Runtime config is text delivered to services, so a scalar is taken only when YAML reads it as a string, a
decimal integer or `true`/`false` written that way; anything else, explicit tags and anchors are refused with
one line naming the file, the line and the key (never the value) that says to quote the value.

A value may also be a mapping `{value: <reference>, refresh: 30s}` (issue 17, Contract 5): the instance re-resolves
the reference every `refresh` (Ns, Nm or an integer of seconds, 5 s to 1 h) and reloads its services when it
changed. The refresh intervals travel with the config as the bakery-owned key BAKERY_REFRESH (so the config digest,
a rollback and the launch file carry them); a refresh on a value that is no reference is refused.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import yaml

from bakery import runtime_grammar
from bakery.errors import ConfigError
from bakery.params import names

TAG = "tag:yaml.org,2002:"
DECIMAL_RE = re.compile(r"[-+]?(0|[1-9][0-9]*)")
QUOTE = 'quote the value: KEY: "..."'
# Secrets are given by reference (an SSM parameter, a file path), never by value. A secret word is any
# `_`-separated part of the key (DB_PASSWD, AWS_SECRET_ACCESS_KEY); a key whose last part says it is a setting
# about the secret (PASSWORD_MIN_LENGTH, TOKEN_TTL, ..._URL) is not one itself.
SECRET_NAME_RE = re.compile(r"(?:^|_)(?:PASSWORD|PASSWD|PASS|PWD|PASSPHRASE|SECRETS?|TOKENS?|CREDENTIALS?|APIKEY"
                            r"|(?:PRIVATE|API|AUTH|SIGNING|ENCRYPTION|MASTER)_KEY)(?:_|$)")
NOT_SECRET_SUFFIXES = ("_URL", "_URI", "_ENDPOINT", "_HOST", "_PORT", "_FILE", "_PATH", "_TTL", "_TIMEOUT",
                       "_LENGTH")
SECRET_REF_RE = re.compile(r"^(ssm:|arn:aws:|file:|secretsmanager:)")
# scheme://user:password@host; the lookbehind starts a scheme only at its first letter (else quadratic on long values)
URL_CREDENTIALS_RE = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*:[^/?#@\s]+@")
REFERENCE = "give a reference (ssm:/path, secretsmanager:name, arn:aws:..., file:/path) instead"
REFRESH_RE = re.compile(r"([0-9]{1,7})([sm]?)")
ENTRY_KEYS = ("refresh", "value")


def load(path: Path, rel: str) -> dict[str, str]:
    """runtime.yml's `bakery_runtime` as text values, checked against the grammar and the secret rules."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{rel}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    values, refresh = runtime_entries(text, rel)
    for key, value in values.items():
        check_secret(key, value, rel)
        names.parse_reference(value, f"{rel}: bakery_runtime.{key}")  # a malformed reference fails here, not at boot
    runtime_grammar.validate_all(values, rel, "bakery_runtime")  # and it fits into UserData
    if refresh:
        values["BAKERY_REFRESH"] = runtime_grammar.render_refresh(refresh)
        runtime_grammar.validate_all(values, rel, "bakery_runtime", owned=True)  # with it, too
    return values


def runtime_values(text: str, rel: str) -> dict[str, str]:
    """The `bakery_runtime` mapping of a runtime.yml text, every value as it is written; ConfigError otherwise."""
    return runtime_entries(text, rel)[0]


def runtime_entries(text: str, rel: str) -> tuple[dict[str, str], dict[str, int]]:
    """The values of a runtime.yml text (a `{value:, refresh:}` entry gives its value) and the refresh intervals in
    seconds of the keys that ask for one."""
    root = _compose(text, rel)
    if root is None:
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{rel}: the file must be a mapping with bakery_runtime, got {_kind(root)}")
    block = None
    for key, value in _pairs(root, rel, ""):
        if key != "bakery_runtime":
            raise ConfigError(f"{rel}: the file: unknown key '{runtime_grammar.shown(key)}'; known keys: "
                              "bakery_runtime")
        block = value
    if block is None or (isinstance(block, yaml.ScalarNode) and block.tag == TAG + "null"):
        return {}, {}
    if not isinstance(block, yaml.MappingNode):
        raise ConfigError(f"{rel}: bakery_runtime must be a mapping, got {_kind(block)}")
    result, refresh = {}, {}
    for key, node in _pairs(block, rel, "bakery_runtime."):
        runtime_grammar.validate_key(key, rel, "bakery_runtime key")
        where = f"{rel}:{node.start_mark.line + 1}: bakery_runtime.{key}"
        if isinstance(node, yaml.MappingNode):
            text_value, seconds = _entry(node, rel, key, where)
            if seconds is not None:
                refresh[key] = seconds
        else:
            text_value = _scalar(node, where)
        result[key] = runtime_grammar.validate_value(text_value, rel, f"bakery_runtime.{key}")
    return result, refresh


def _entry(node: yaml.MappingNode, rel: str, key: str, where: str) -> tuple[str, int | None]:
    """`{value: <reference>, refresh: 30s}`: the value, and the refresh in seconds (None when not asked for)."""
    fields = dict(_pairs(node, rel, f"bakery_runtime.{key}."))
    unknown = sorted(set(fields) - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{runtime_grammar.shown(unknown[0])}'; known keys: "
                          f"{', '.join(ENTRY_KEYS)}")
    if "value" not in fields:
        raise ConfigError(f"{where}.value is required ({{value: ssm:/path, refresh: 30s}})")
    value = _scalar(fields["value"], f"{where}.value")
    if "refresh" not in fields:
        return value, None
    seconds = _refresh(fields["refresh"], f"{where}.refresh")
    if names.parse_reference(value, where) is None:
        env = _environment_of(rel)
        raise ConfigError(f"{where} has refresh, but its value is not a reference (ssm:/path, secretsmanager:name): "
                          f"change a live value with ./bake.py param set --env {env} {key} VALUE, or drop the "
                          "refresh to give a plain value")
    return value, seconds


def _refresh(node: yaml.Node, where: str) -> int:
    """Ns, Nm or an integer of seconds, 5 s to 1 h."""
    text = node.value if isinstance(node, yaml.ScalarNode) and node.tag in (TAG + "str", TAG + "int") else None
    match = REFRESH_RE.fullmatch(text or "")
    if not match:
        raise ConfigError(f"{where} must be seconds (30), 30s or 5m")
    seconds = int(match.group(1)) * (60 if match.group(2) == "m" else 1)
    low, high = runtime_grammar.REFRESH_RANGE
    if not low <= seconds <= high:
        raise ConfigError(f"{where} must be from {low} s to 1 h ({high} s), got '{text}'")
    return seconds


def _environment_of(rel: str) -> str:
    """The environment a runtime.yml belongs to (inventories/<env>/...), for a hint; ENV when it is elsewhere."""
    parts = Path(rel).parts
    return parts[parts.index("inventories") + 1] if "inventories" in parts[:-1] else "ENV"


def check_secret(key: str, value: str, rel: str) -> None:
    """No secret by value: by its name, a password in a URL, or what the verify gate's secret scan finds in it."""
    if SECRET_REF_RE.match(value):
        return
    name = f"{rel}: bakery_runtime.{key}"
    if SECRET_NAME_RE.search(key) and not key.endswith(NOT_SECRET_SUFFIXES):
        raise ConfigError(f"{name} looks like a secret given by value; {REFERENCE}")
    if URL_CREDENTIALS_RE.search(value):  # the value is never repeated: it would print the password
        raise ConfigError(f"{name} carries a password in its URL (user:password@host); give a reference "
                          "(ssm:/path, secretsmanager:name, ...) or a URL without the password plus a reference "
                          f"in {key.removesuffix('_URL')}_PASSWORD")
    if len(value) >= 8:  # no token of the scan is shorter; saves loading detect-secrets for short values
        from bakery.verify.secret_content import scan_content

        hits = scan_content("runtime.env", io.BytesIO(f"{key}={value}\n".encode()))
        if hits:
            raise ConfigError(f"{name} holds what looks like a secret ({hits[0].rule}); {REFERENCE}")


def _compose(text: str, rel: str) -> yaml.Node | None:
    try:
        key = None  # the scalar before a node: in a block mapping, the key the node is the value of
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            _plain(event, rel, key)
            key = event.value if isinstance(event, yaml.ScalarEvent) else None
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{rel}{where}: malformed YAML: {problem}; fix the syntax") from None


def _plain(event: yaml.Event, rel: str, key: str | None) -> None:
    """No explicit tag (`!!binary`, `!!str`), anchor or alias: each changes or hides what a value is."""
    if not isinstance(event, yaml.NodeEvent):
        return
    tag = getattr(event, "tag", None)
    if not (event.anchor or tag):
        return
    name = "bakery_runtime" if key in (None, "bakery_runtime") else f"bakery_runtime.{runtime_grammar.shown(key)}"
    what = "an alias" if isinstance(event, yaml.AliasEvent) else "an explicit tag" if tag else "an anchor"
    line = f":{event.start_mark.line + 1}" if event.start_mark else ""
    raise ConfigError(f"{rel}{line}: {name} has {what}; write the value itself, {QUOTE}")


def _pairs(mapping: yaml.MappingNode, rel: str, prefix: str) -> list[tuple[str, yaml.Node]]:
    seen: dict[str, int] = {}
    pairs = []
    for key_node, value in mapping.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != TAG + "str":
            raise ConfigError(f"{rel}:{line}: {prefix or 'the file: '}key must be a name, got {_kind(key_node)}")
        key = key_node.value
        if key in seen:
            raise ConfigError(f"{rel}:{line}: {prefix}{runtime_grammar.shown(key)} is given twice (first on line "
                              f"{seen[key]}); keep one")
        seen[key] = line
        pairs.append((key, value))
    return pairs


def _scalar(node: yaml.Node, name: str) -> str:
    """A value's text as written: a string, a decimal integer or true/false; anything YAML would change refused."""
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{name} must be a string, number or boolean, got {_kind(node)}")
    tag = node.tag.removeprefix(TAG)
    if tag == "str":
        return node.value
    if tag == "int" and DECIMAL_RE.fullmatch(node.value):
        return str(int(node.value))
    if tag == "bool" and node.value in ("true", "false"):
        return node.value
    if tag == "null":
        raise ConfigError(f"{name} is empty (YAML null); give a value, or {QUOTE} for an empty one")
    kind = {"int": "a number that is not a plain decimal", "bool": "a boolean not written true or false"}.get(
        tag, f"a {tag}")
    raise ConfigError(f"{name} is read by YAML as {kind}, not as the text written; {QUOTE}")


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"a {node.tag.removeprefix(TAG)}"
