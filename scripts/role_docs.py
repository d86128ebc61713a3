#!/usr/bin/env python3
"""Render the variables of Ansible roles into their README.md, from meta/argument_specs.yml.

usage: scripts/role_docs.py [--check] ROLE_DIR [ROLE_DIR ...]

For each role, the options of meta/argument_specs.yml (in their order) become a Markdown table
(variable, type, default, description) written between the lines

    <!-- BEGIN VARIABLES -->
    <!-- END VARIABLES -->

of the role's README.md. Defaults come from defaults/main.yml (the value the role really uses),
else from the spec's `default`. Defaults too long for a table cell are listed below the table as
YAML. A variable set in defaults/main.yml but missing from argument_specs is an error: every
variable must be documented.

--check changes nothing: it exits 1 and names each README that regenerating would change.

Exit codes: 0 done (or up to date); 1 a README is stale or a variable is undocumented;
2 bad usage or a role that cannot be read (missing file or marker, invalid YAML).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

VENV_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"

# Like bake.py: run inside the project's virtual environment (pinned PyYAML) whatever python started us.
if __name__ == "__main__" and VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])

import yaml  # noqa: E402

BEGIN = "<!-- BEGIN VARIABLES -->"
END = "<!-- END VARIABLES -->"
# Defaults whose one-line form is longer than this go below the table, as YAML.
MAX_INLINE_DEFAULT = 60


class RoleDocsError(Exception):
    """A role cannot be documented; carries the exit code."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _BlockDumper(yaml.SafeDumper):
    """YAML for humans: multi-line strings as | blocks, lists indented under their key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def _load_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RoleDocsError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise RoleDocsError(f"{path}: invalid YAML: {exc}") from None


def _flow(value: object) -> str:
    """A value as one line of YAML (flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _cell(text: str) -> str:
    """Plain text safe inside a Markdown table cell: one line, no table or HTML breaks, no stray emphasis."""
    text = " ".join(text.split())
    for char, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("*", "\\*")):
        text = text.replace(char, escaped)
    return text


def _code(text: str) -> str:
    """Inline code that survives backticks in the text, escaped for a table cell."""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def _type(spec: dict) -> str:
    kind = spec.get("type", "str")
    if kind == "list" and spec.get("elements"):
        kind = f"list of {spec['elements']}"
    if spec.get("choices"):
        kind += " (" + ", ".join(_flow(choice) for choice in spec["choices"]) + ")"
    return kind


def _description(spec: dict) -> str:
    description = spec.get("description", "")
    paragraphs = description if isinstance(description, list) else [description]
    return "<br>".join(_cell(str(paragraph)) for paragraph in paragraphs if str(paragraph).strip())


def _options(options: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """(dotted name, spec) for every option, suboptions after their parent."""
    flat = []
    for name, spec in (options or {}).items():
        spec = spec or {}
        flat.append((prefix + name, spec))
        flat.extend(_options(spec.get("options") or {}, prefix + name + "."))
    return flat


def render(role: Path) -> str:
    """The Markdown that goes between the markers of ROLE/README.md."""
    specs = _load_yaml(role / "meta" / "argument_specs.yml")
    if not isinstance(specs, dict) or not isinstance(specs.get("argument_specs"), dict):
        raise RoleDocsError(f"{role / 'meta' / 'argument_specs.yml'}: no argument_specs mapping")
    defaults_file = role / "defaults" / "main.yml"
    defaults = _load_yaml(defaults_file) if defaults_file.exists() else {}
    if not isinstance(defaults, dict):
        defaults = {}

    entry_points = specs["argument_specs"]
    documented = {name for entry in entry_points.values() for name in (entry or {}).get("options", {}) or {}}
    undocumented = [name for name in defaults if name not in documented]
    if undocumented:
        raise RoleDocsError(f"{defaults_file}: {', '.join(undocumented)} not documented in {role / 'meta' / 'argument_specs.yml'}", exit_code=1)

    out: list[str] = ["<!-- Generated by scripts/role_docs.py from meta/argument_specs.yml and defaults/main.yml; do not edit. -->", ""]
    for entry_name, entry in entry_points.items():
        entry = entry or {}
        if len(entry_points) > 1 or entry_name != "main":
            out += [f"### Entry point `{entry_name}`", ""]
            if entry.get("short_description"):
                out += [_cell(entry["short_description"]), ""]
        long_defaults: list[tuple[str, object]] = []
        out += ["| Variable | Type | Default | Description |", "|---|---|---|---|"]
        for name, spec in _options(entry.get("options") or {}):
            if name in defaults:
                value, has_default = defaults[name], True
            elif "default" in spec:
                value, has_default = spec["default"], True
            else:
                value, has_default = None, False
            if not has_default:
                default = "required" if spec.get("required") else ""
            else:
                one_line = _flow(value)
                if len(one_line) <= MAX_INLINE_DEFAULT and not (isinstance(value, str) and "\n" in value):
                    default = _code(one_line)
                else:
                    default = f"[see below](#default-{name.replace('.', '-').replace('_', '-')})"
                    long_defaults.append((name, value))
            out.append(f"| {_code(name)} | {_cell(_type(spec))} | {default} | {_description(spec)} |")
        for name, value in long_defaults:
            dumped = yaml.dump({name: value}, Dumper=_BlockDumper, default_flow_style=False, sort_keys=False, width=100)
            out += ["", f'<a id="default-{name.replace(".", "-").replace("_", "-")}"></a>Default of `{name}`:', "", "```yaml", dumped.rstrip(), "```"]
        out.append("")
    return "\n".join(out)


def update(role: Path, check: bool) -> bool:
    """Regenerate ROLE/README.md (or only compare, with check); True when it was up to date."""
    readme = role / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RoleDocsError(f"{readme}: no such file; write the README with the lines {BEGIN} and {END} where the variables go") from None
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < 0 or end < begin:
        raise RoleDocsError(f"{readme}: needs the line {BEGIN} and, after it, the line {END}")
    new = text[: begin + len(BEGIN)] + "\n" + render(role) + text[end:]
    if new == text:
        return True
    if not check:
        readme.write_text(new, encoding="utf-8")
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="role_docs.py",
        description="Render the variables of Ansible roles (meta/argument_specs.yml, defaults/main.yml) into their README.md.",
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a README is stale")
    parser.add_argument("roles", nargs="+", type=Path, metavar="ROLE_DIR", help="a role directory, e.g. roles/hardening")
    args = parser.parse_args(argv)

    status = 0
    for role in args.roles:
        try:
            up_to_date = update(role, args.check)
        except RoleDocsError as exc:
            print(f"role_docs.py: {exc}", file=sys.stderr)
            status = max(status, exc.exit_code)
            continue
        readme = role / "README.md"
        if args.check and not up_to_date:
            print(f"{readme} is stale: run scripts/role_docs.py {role}", file=sys.stderr)
            status = max(status, 1)
        elif not args.check:
            print(f"{readme}: {'up to date' if up_to_date else 'updated'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
