"""An environment's runtime config (runtime.yml) edited by `bake.py config set`: KEY=VALUE pairs written into
the file in place, other lines and comments kept, and validated like a deploy would load it before the real
file is touched.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from bakery import runtime_file, runtime_grammar
from bakery.config import PROJECT_FILE, Project
from bakery.environments import Environment, load_environment
from bakery.errors import ConfigError

RUNTIME_HEADER = re.compile(r"^bakery_runtime\s*:\s*(#.*)?$")


def parse_pairs(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:  # the argument is not repeated: it may be a secret pasted on its own
            raise ConfigError("config set: an argument has no '='; give KEY=VALUE (an upper-case variable name, "
                              "'=', the value)")
        # the one runtime config grammar, before anything is written; a value is never repeated in the message
        key = runtime_grammar.validate_key(key, "config set")
        if key in values:
            raise ConfigError(f"config set: {key} is given twice; give each key once")
        values[key] = runtime_grammar.validate_value(value, "config set", key)
    if not values:
        raise ConfigError("give at least one KEY=VALUE to set")
    return values


def edit_runtime_yaml(text: str | None, values: dict[str, str]) -> str:
    """runtime.yml with `values` set under bakery_runtime; other lines, comments and CRLF line ends stay as they
    are. Values are written as JSON strings (valid YAML double-quoted scalars), every character as itself.

    A key written `{value: <reference>, refresh: 30s}` keeps its refresh: the new value replaces the reference (a
    plain value there is refused when the file is loaded: a live value is changed with `bake.py param set`)."""
    text = text or "---\nbakery_runtime:\n"
    newline = "\r\n" if "\r\n" in text else "\n"
    refresh = _refresh_of(text)
    lines = [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")]  # never str.splitlines
    start = next((i for i, line in enumerate(lines) if RUNTIME_HEADER.match(line)), None)
    if start is None:  # no block form to edit in place (flow style, or no bakery_runtime): rewrite the mapping
        # the environment loaded this file already, so it reads; were it edited since, refuse rather than drop keys
        runtime = {**runtime_file.runtime_values(text, "runtime.yml"), **values}
        body = "".join(f"  {key}: {_entry(value, refresh.get(key))}{newline}" for key, value in runtime.items())
        return f"---{newline}bakery_runtime:{newline}" + body
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][:1] in (" ", "\t") or _comment(lines[end])):
        end += 1
    block = lines[start + 1:end]
    keys = [i for i, line in enumerate(block) if line.strip() and not _comment(line)]
    indent = next((m.group(1) for i in keys if (m := re.match(r"^(\s+)", block[i]))), "  ")
    last_key = max(keys, default=-1)
    for key, value in values.items():
        rendered = f"{indent}{key}: {_entry(value, refresh.get(key))}"
        pattern = re.compile(rf"""^{re.escape(indent)}(?:{key}|"{key}"|'{key}')\s*:""")
        index = next((i for i, line in enumerate(block) if pattern.match(line)), None)
        if index is None:
            last_key += 1
            block.insert(last_key, rendered)
            continue
        following = index + 1  # a value on the next lines (a folded >- or literal | block) goes with the key
        while following < len(block) and block[following][:len(indent) + 1].strip() == "" and \
                len(block[following]) > len(indent) and block[following].strip():
            following += 1
        block[index:following] = [rendered]
        last_key -= following - index - 1 if index < last_key else 0
    return newline.join(lines[:start + 1] + block + lines[end:]) + newline


def _refresh_of(text: str) -> dict[str, int]:
    """The refresh of each key that has one; none when the file does not read (loading it names the problem)."""
    try:
        return runtime_file.runtime_entries(text, "runtime.yml")[1]
    except ConfigError:
        return {}


def _entry(value: str, refresh: int | None) -> str:
    return _quoted(value) if refresh is None else f"{{value: {_quoted(value)}, refresh: {refresh}s}}"


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # ASCII escapes would split U+10000 and up into two surrogates


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def runtime_path(env: Environment) -> Path:
    return env.path / "group_vars" / "all" / "runtime.yml"


def validate_runtime(project: Project, env_name: str, text: str) -> Environment:
    """Load the environment as it would be with this runtime.yml, without touching the real file."""
    real = project.root / "inventories" / env_name / "group_vars" / "all"
    with tempfile.TemporaryDirectory(prefix="bakery-config-") as tmp:
        shadow = Path(tmp)
        shutil.copy(project.root / PROJECT_FILE, shadow / PROJECT_FILE)
        folder = shadow / "inventories" / env_name / "group_vars" / "all"
        folder.mkdir(parents=True)
        shutil.copy(real / "deploy.yml", folder / "deploy.yml")
        (folder / "runtime.yml").write_text(text, encoding="utf-8", newline="")
        try:
            env = load_environment(Project(shadow), env_name, check_promotion=False)
        except ConfigError as error:  # name the real file, never the temporary copy that is gone by now
            raise ConfigError(str(error).replace(f"{shadow}/", "")) from None
    env.path = project.root / "inventories" / env_name
    return env
