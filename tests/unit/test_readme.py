"""Every command README.md and docs/*.md show is checked: it parses, its make target exists, and a test runs it.

Running the walkthrough for real would bake, verify and roll out the example image several
times (well over ten minutes on two cores), far beyond `make test`'s budget. So each command
is checked in the cheapest way that still fails when the docs drift from the code (one test
per page, so a failure names the file):

- every `./bake.py ...` line is parsed by the real click command line (a misspelt command or
  option, a missing required option or a bad choice fails), and each bake.py command it uses
  must be run by some test under tests/ (the full behaviour is tested there);
- every `make X` names a target of the Makefile;
- `cd DIR` names a directory of the repository (or a role the page created with new-role);
  `. .venv/bin/activate` sources the virtual environment make setup creates;
  `molecule test` runs in a role with a Molecule scenario, and some test runs molecule;
- any other program must be one of the few external tools listed in EXTERNAL_TOOLS;
- the cheap commands run for real on a copy of the project: `--help`, `images`, `new-role`
  (tests/integration/test_readme_walkthrough.py runs `base`, which needs podman);
- every relative link between the pages names a file that exists, and a heading of it when it
  has an #anchor (so a moved section cannot leave a dead link behind).

Commands are taken from ```sh and ```console blocks (in console blocks, the lines after `$ `);
comment lines are example output. New sections and new docs/*.md pages need no change here.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from functools import cache
from pathlib import Path

import click
import pytest

from bakery.cli import cli
from tests.conftest import REPO, bake

pytestmark = pytest.mark.unit

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOC_IDS = [str(doc.relative_to(REPO)) for doc in DOCS]
VENV_ACTIVATE = ".venv/bin/activate"  # made by make setup (Makefile VENV), so not in the repository
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTIONS = {">", ">>", "<", "2>", "2>&1"}
# Programs the docs may show besides bake.py, make, cd and molecule: what they do is the user's, not bakery's.
EXTERNAL_TOOLS = {
    "podman": "the container engine bakery drives; the docs show how to look inside an image",
    "curl": "an HTTP client to ask the deployed app; tests/integration/test_deploy.py asks it the same through HAProxy",
    "aws": "the AWS CLI, to deploy the CloudFormation example; tests/unit/test_ci_definitions.py lints the template",
}


def fenced_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, first line number, body) of each fenced block."""
    blocks = []
    for match in re.finditer(r"^```([\w-]*)[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
        blocks.append((match.group(1), text.count("\n", 0, match.start()) + 2, match.group(2)))
    return blocks


def command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) for every command in the sh and console blocks."""
    found = []
    for language, first, body in fenced_blocks(text):
        if language not in ("sh", "console"):
            continue
        pending, start = "", 0
        for offset, line in enumerate(body.splitlines()):
            if language == "console":
                if not line.startswith("$ ") and not pending:
                    continue
                line = line.removeprefix("$ ")
            if not pending:
                start = first + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command = (pending + line).strip()
            pending = ""
            if command and not command.startswith("#"):
                found.append((start, command))
    return found


def simple_commands(command: str) -> list[list[str]]:
    """Split a shell line at &&, ||, ;, | into argument lists; drop comments, redirections and VAR=value prefixes."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current, skip_next = [], [], False
    for token in lexer:
        if skip_next:
            skip_next = False
            continue
        if token in SEPARATORS:
            commands.append(current)
            current = []
        elif token in REDIRECTIONS or token.startswith((">", "<")):
            skip_next = token in REDIRECTIONS
        elif not current and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", token):
            continue
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def parse_bake(args: list[str]) -> list[str]:
    """Parse bake.py's arguments with the real click CLI; return the command path (e.g. ['config', 'set']).

    Raises click.ClickException for an unknown command or option, a missing argument or a bad value.
    """
    path: list[str] = []
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            ctx = cli.make_context("bake.py", list(args))
            command = cli
            while isinstance(command, click.Group):
                # click >= 8.2 | older
                protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
                rest = [*protected, *ctx.args]
                if not rest:
                    break
                name, command, rest = command.resolve_command(ctx, rest)
                path.append(name)
                ctx = command.make_context(name, rest, parent=ctx)
        except click.exceptions.Exit:  # --help, --version
            pass
    return path


def is_bake(program: str) -> bool:
    return program in ("./bake.py", "bake.py") or program.endswith("/bake.py")


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), flags=re.M))


@cache
def other_test_sources() -> str:
    """Every test module but this one (a command is exercised where it is run, not where it is listed)."""
    this = Path(__file__).resolve()
    return "\n".join(p.read_text() for p in sorted((REPO / "tests").rglob("*.py")) if p.resolve() != this)


def exercised(command: str, sources: str) -> bool:
    """Some test runs `bake.py COMMAND`: bake(project, "COMMAND", ...) or a bake.py subprocess with it."""
    quoted = re.escape(f'"{command}"')
    return bool(re.search(rf"bake\(\s*[\w.]+\s*,\s*{quoted}", sources)
                or re.search(rf"str\(BAKE\)\s*,\s*(?:\"--project\"\s*,\s*[^,\]]+,\s*)?{quoted}", sources))


COMMANDS = {doc: command_lines(doc.read_text(encoding="utf-8")) for doc in DOCS}


def test_the_docs_show_commands_of_every_kind():
    assert {"walkthrough.md", "commands.md", "concepts.md", "aws.md"} <= {doc.name for doc in DOCS}
    readme = {c[0] for _, line in COMMANDS[REPO / "README.md"] for c in simple_commands(line)}
    assert {"./bake.py", "make", "cd", "molecule"} <= readme, readme
    assert sum(len(found) for found in COMMANDS.values()) >= 30


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_command_is_known_and_valid(doc: Path):
    targets = makefile_targets()
    roles_made: set[str] = set()
    problems = []
    for number, line in COMMANDS[doc]:
        cwd = Path(".")
        for args in simple_commands(line):
            program, rest = args[0], args[1:]
            where = f"{doc.relative_to(REPO)}:{number}: {line!r}"
            if is_bake(program):
                try:
                    path = parse_bake(rest)
                except click.ClickException as exc:
                    problems.append(f"{where}: {exc.format_message()}")
                    continue
                if path == ["new-role"]:
                    roles_made.add(rest[rest.index("new-role") + 1])
            elif program == "make":
                problems += [f"{where}: the Makefile has no target '{t}'"
                             for t in rest if not t.startswith("-") and t not in targets]
            elif program == "cd":
                cwd = cwd / rest[0]
                made = len(cwd.parts) == 2 and cwd.parts[0] == "roles" and cwd.parts[1] in roles_made
                if not (made or (REPO / cwd).is_dir()):
                    problems.append(f"{where}: no directory {cwd} in the repository")
            elif program in (".", "source"):
                if rest != [VENV_ACTIVATE]:
                    problems.append(f"{where}: only the project's virtual environment ({VENV_ACTIVATE}) may be sourced")
                elif f"VENV := {VENV_ACTIVATE.split('/')[0]}" not in (REPO / "Makefile").read_text():
                    problems.append(f"{where}: the Makefile no longer makes {VENV_ACTIVATE.split('/')[0]}")
            elif program == "molecule":
                in_role = len(cwd.parts) == 2 and cwd.parts[0] == "roles"
                scenario = ((REPO / cwd / "molecule" / "default" / "molecule.yml").is_file()
                            or cwd.parts[-1:] and cwd.parts[-1] in roles_made)
                if rest[:1] != ["test"] or not in_role or not scenario:
                    problems.append(f"{where}: molecule test runs inside roles/NAME with a Molecule scenario")
            elif program not in EXTERNAL_TOOLS:
                problems.append(f"{where}: '{program}' is neither bake.py, make, cd, molecule nor a listed external "
                                "tool (add it to EXTERNAL_TOOLS with how it is exercised, or show it in a plain block)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_bake_command_shown_is_run_by_a_test(doc: Path):
    sources = other_test_sources()
    shown = set()
    for _, line in COMMANDS[doc]:
        for args in simple_commands(line):
            if is_bake(args[0]):
                path = parse_bake(args[1:])
                if path:
                    shown.add(path[0])
    missing = sorted(c for c in shown if not exercised(c, sources))
    assert not missing, (f"bake.py commands shown in {doc.relative_to(REPO)} but run by no test under tests/: "
                         f"{', '.join(missing)}")


def test_some_test_runs_molecule():
    lines = [line for found in COMMANDS.values() for _, line in found]
    assert any(args[0] == "molecule" for line in lines for args in simple_commands(line))
    assert re.search(r'molecule"\)?\s*,\s*"test"', other_test_sources()), \
        "no test runs `molecule test` (tests/integration/test_new_role.py did)"


# ---------------------------------------------------------------- links between the pages

def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens, -N for repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", without_fences(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def without_fences(text: str) -> str:
    """The page without its fenced blocks, where a `# line` is a comment, not a heading."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def without_code(text: str) -> str:
    """The page without fenced blocks and inline code, where `[x](y)` is not a link."""
    return re.sub(r"`[^`\n]*`", "", without_fences(text))


def relative_links(text: str) -> list[str]:
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", without_code(text))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto:


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_relative_link_resolves(doc: Path):
    problems = []
    for target in relative_links(doc.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            shown = linked.relative_to(REPO) if linked.is_relative_to(REPO) else linked
            problems.append(f"{target}: no such file {shown}")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
            problems.append(f"{target}: {linked.relative_to(REPO)} has no heading with the anchor #{anchor}")
    assert not problems, f"{doc.relative_to(REPO)}: dead links:\n" + "\n".join(problems)


def test_the_checks_catch_a_misspelt_command_or_option():
    with pytest.raises(click.UsageError, match="No such command"):
        parse_bake(["pipline", "webapp", "--env", "qa"])
    with pytest.raises(click.UsageError, match="No such option"):
        parse_bake(["pipeline", "webapp", "--env", "qa", "--promote", "prod"])
    with pytest.raises(click.UsageError, match="Missing"):
        parse_bake(["deploy", "webapp"])
    assert parse_bake(["config", "set", "--env", "qa", "LOG_LEVEL=debug"]) == ["config", "set"]
    assert simple_commands('./bake.py new-role demo && cd roles/demo && molecule test  # it passes') == [
        ["./bake.py", "new-role", "demo"], ["cd", "roles/demo"], ["molecule", "test"]]
    assert not exercised("no-such-command", other_test_sources())


def test_the_link_checks_see_headings_and_links_as_github_does():
    page = "# Tests\n## `bake.py gc [--keep N]`\n## Tests\n```sh\n# not a heading\n```\n"
    assert heading_anchors(page) == {"tests", "bakepy-gc---keep-n", "tests-1"}
    text = "[a](docs/x.md#y) `[b](not/a/link.md)` [c](https://example.com) [d](#here)\n```\n[e](f.md)\n```\n"
    assert relative_links(text) == ["docs/x.md#y", "#here"]


# ---------------------------------------------------------------- cheap commands, for real

PROJECT_FILES = ("bakery.yml", "ansible.cfg", "roles", "playbooks", "inventories")


@pytest.fixture
def example_copy(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns(".bakery*", "__pycache__"))
        else:
            shutil.copy(source, root / name)
    return root


def shown_bake_commands(name: str) -> list[list[str]]:
    """Each distinct `bake.py NAME ...` the pages show (a command shown on two pages runs once)."""
    found = [args[1:] for lines in COMMANDS.values() for _, line in lines for args in simple_commands(line)
             if is_bake(args[0]) and (args[1:2] == [name] or (name == "--help" and args[1:] == ["--help"]))]
    return [list(args) for args in dict.fromkeys(tuple(args) for args in found)]


def test_help_images_and_new_role_run_for_real(example_copy):
    helps = shown_bake_commands("--help")
    assert helps
    for args in helps:
        out = bake(example_copy, *args)
        assert out.rc == 0 and "pipeline" in out.stdout and "new-role" in out.stdout, out.stderr
    images = [args for args in shown_bake_commands("images") if "aws" not in args]  # the aws ones need moto: tests/aws
    assert images
    for args in images:
        out = bake(example_copy, *args)
        assert out.rc == 0 and "no image versions yet" in out.stdout, out.stderr
    made = shown_bake_commands("new-role")
    assert made
    for args in made:
        out = bake(example_copy, *args)
        assert out.rc == 0, out.stderr
        role = example_copy / "roles" / args[-1]
        assert (role / "molecule" / "default" / "molecule.yml").is_file()
        assert (role / "meta" / "argument_specs.yml").is_file()
        assert f"cd roles/{args[-1]} && molecule test" in out.stdout
