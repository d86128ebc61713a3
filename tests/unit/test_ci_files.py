"""The CI definitions run where they say: CodeBuild on privileged Debian 12, GitHub jobs with separate state.

CodeBuild (ci/aws): every program the buildspecs run, directly, through the `make` targets and
scripts/setup.sh they call, and what the aws pipeline then starts (Packer, the ssh client Ansible reaches
the build instance with), comes from a Debian 12 package that the build image has or that an `apt-get
install` line (the buildspec's or setup.sh's PACKAGES) installs before it is used. The program -> package
table is Debian 12's; on a Debian host that has the programs, it is checked against dpkg itself.

GitHub (ci/github): qa and prod never share a workspace, a state directory or a runner, checkouts are
clean, and nothing under .bakery/ (run logs can hold runtime config) is uploaded.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.unit.test_ci_definitions import (
    BASE_REFRESH_BUILDSPEC,
    BUILDSPEC,
    CLEAN_UP,
    CODEPIPELINE,
    WORKFLOW,
    CloudFormationLoader,
    tool,
)
from tests.unit.test_readme import simple_commands

pytestmark = pytest.mark.unit

SETUP_SH = REPO / "scripts" / "setup.sh"
# Docker's official Debian 12 image (Docker Hub or its Amazon ECR Public mirror), optionally a point tag or digest
DEBIAN_12_IMAGE = re.compile(r"^(public\.ecr\.aws/docker/library/|docker\.io/library/)?debian:(12|bookworm)"
                             r"([.-][\w.-]*)?(@sha256:[0-9a-f]{64})?$")
# What debian:bookworm has before any apt-get: its Essential packages and apt (the ones the checks need)
BASE_IMAGE_PACKAGES = {"apt", "base-files", "bash", "coreutils", "dash", "debianutils", "diffutils", "dpkg",
                       "findutils", "grep", "gzip", "sed", "tar", "util-linux"}
# program -> the Debian 12 package that ships it (dpkg -S on bookworm)
PROGRAM_PACKAGES = {
    "apt-get": "apt", "dpkg-query": "dpkg", "bash": "bash", "sh": "dash", "make": "make", "grep": "grep",
    **{p: "coreutils" for p in ("cat", "cp", "cut", "dirname", "env", "id", "mkdir", "printf", "rm", "sha256sum",
                                "tee")},
    "python3": "python3-minimal", "podman": "podman", "packer": "packer", "ssh": "openssh-client", "git": "git",
}
# the dependencies that matter here: python3-venv brings the interpreter
DEPENDS = {"python3-venv": {"python3"}, "python3": {"python3-minimal"}}
SHELL_WORDS = {"if", "then", "else", "elif", "fi", "do", "done", "for", "while", "until", "!", "{", "}", "[[",
               "case", "esac", "cd", "echo", "printf", "read", "exit", "true", "false", "local", "set", "export",
               "return", "shift", "test", "[", ":"}
# what `bake.py pipeline --target aws` starts besides Python: Packer, and the ssh client of Ansible's connection
AWS_PIPELINE_PROGRAMS = {"packer": "the Packer builder", "ssh": "Ansible's connection through Packer's adapter"}


def load_template() -> dict:
    return yaml.load(CODEPIPELINE.read_text(), Loader=CloudFormationLoader)  # a SafeLoader subclass


def codebuild_projects(template: dict) -> dict[str, dict]:
    return {name: resource["Properties"] for name, resource in template["Resources"].items()
            if resource["Type"] == "AWS::CodeBuild::Project"}


def buildspecs() -> dict[str, dict]:
    specs = {path.name: yaml.safe_load(path.read_text()) for path in (BUILDSPEC, BASE_REFRESH_BUILDSPEC)}
    for name, project in codebuild_projects(load_template()).items():
        inline = project["Source"]["BuildSpec"]
        if "\n" in inline:
            specs[name] = yaml.safe_load(inline)
    return specs


# ---------------------------------------------------------------- which programs run


def makefile_recipes() -> dict[str, tuple[list[str], list[str]]]:
    """target -> (prerequisites, recipe lines with the Makefile's variables expanded)."""
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^([A-Z]+)\s*:?=\s*(.*)$", text, flags=re.M))
    variables |= {"CURDIR": "/src", "MAKE": "make"}
    recipes: dict[str, tuple[list[str], list[str]]] = {}
    current = None
    for line in text.splitlines():
        target = re.match(r"^([A-Za-z0-9_.-]+)\s*:(?!=)(.*)$", line)
        if target:
            current = target.group(1)
            recipes[current] = (target.group(2).split(), [])
        elif line.startswith("\t") and current:
            expanded = line.strip()
            for _ in range(3):  # PYTEST := $(VENV)/bin/pytest: variables name variables
                expanded = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), expanded)
            recipes[current][1].append(expanded.replace("$$", "$").lstrip("@-"))
        elif line.strip() and not line.startswith("#"):
            current = None
    return recipes


def script_commands(path: Path) -> list[list[str]]:
    """The simple commands of a bash script, here-documents skipped, $(...) substitutions included."""
    lines, heredoc = [], None
    for line in path.read_text().splitlines():
        if heredoc:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        marker = re.search(r"<<-?'?(\w+)'?", line)
        heredoc = marker.group(1) if marker else None
        lines.extend(re.findall(r"\$\(([^()]*)\)", line))
        lines.append(re.sub(r"<<-?'?\w+'?", "", line))
    commands = []
    for line in lines:
        try:
            found = simple_commands(line)
        except ValueError:  # an unbalanced quote inside a substitution's fragment
            continue
        commands.extend(found)
    return commands


def program_of(args: list[str], functions: set[str]) -> str | None:
    """The external program a simple command runs (None for shell syntax, builtins and the script's functions)."""
    words = [a for a in args if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\+?=.*", a)]
    while words and words[0] in ("if", "then", "else", "elif", "do", "while", "until", "!"):
        words = words[1:]
    if not words or words[0] in SHELL_WORDS or words[0] in functions or not re.match(r"^[\w./$\"{}-]+$", words[0]):
        return None
    return words[0].strip('"')


def programs_of(lines: list[str], where: str, seen: set[str] | None = None) -> dict[str, str]:
    """program -> where it is run, following make targets, local scripts (by their #! line) and the venv."""
    seen = set() if seen is None else seen
    recipes, found = makefile_recipes(), {}
    for line in lines:
        for args in simple_commands(line):
            program = program_of(args, set())
            if program is None:
                continue
            if program == "make":
                found["make"] = where
                for target in [a for a in args[1:] if not a.startswith("-")]:
                    found |= make_target_programs(target, recipes, seen)
            else:
                found |= resolve_program(program, args, where, seen)
    return found


def make_target_programs(target: str, recipes: dict, seen: set[str]) -> dict[str, str]:
    if target in seen:
        return {}
    seen.add(target)
    prerequisites, recipe = recipes[target]
    found: dict[str, str] = {}
    for prerequisite in prerequisites:
        found |= make_target_programs(prerequisite, recipes, seen)
    return found | programs_of(recipe, f"make {target}", seen)


def resolve_program(program: str, args: list[str], where: str, seen: set[str]) -> dict[str, str]:
    if program.startswith((".venv/", "$VENV/")):
        return {"python3": f"{where} (the virtual environment make setup creates)"}
    if program in ("$PYTHON", "${PYTHON}"):
        return {"python3": where}
    local = REPO / program.removeprefix("./")
    if "/" in program and local.is_file():
        interpreter = local.read_text().splitlines()[0].split()[-1]  # #!/usr/bin/env bash -> bash
        found = {interpreter: f"{where} ({program})", "env": f"{where} ({program}'s #! line)"}
        if program.endswith(".sh") and local.resolve() not in seen:
            seen.add(str(local.resolve()))
            functions = set(re.findall(r"^(\w+)\(\)", local.read_text(), flags=re.M))
            for command in script_commands(local):
                name = program_of(command, functions)
                if name:
                    found |= resolve_program(name, command, program, seen)
        if program.endswith("bake.py") and "--target" in args and "aws" in args:
            found |= {name: f"{where}: {why}" for name, why in AWS_PIPELINE_PROGRAMS.items()}
        return found
    return {program: where}


def apt_installs(commands: list[list[str]]) -> list[str]:
    packages = []
    for args in commands:
        if args[:1] == ["apt-get"] and "install" in args:
            packages += [a for a in args[args.index("install") + 1:] if not a.startswith(("-", "$", '"'))]
    return packages


def setup_packages() -> set[str]:
    match = re.search(r"^PACKAGES=\(([^)]*)\)", SETUP_SH.read_text(), flags=re.M)
    assert match, f"{SETUP_SH}: no PACKAGES=(...) line to read the Debian packages from"
    return set(match.group(1).split())


def with_dependencies(packages: set[str]) -> set[str]:
    result, todo = set(), list(packages)
    while todo:
        package = todo.pop()
        if package not in result:
            result.add(package)
            todo.extend(DEPENDS.get(package, ()))
    return result


# ---------------------------------------------------------------- CodeBuild


def test_codebuild_projects_run_privileged_on_debian_12():
    template = load_template()
    projects = codebuild_projects(template)
    assert set(projects) == {"PipelineBuild", "PromoteBuild", "BaseRefreshBuild"}
    for name, project in projects.items():
        environment = project["Environment"]
        image = environment["Image"]
        image = template["Parameters"][image]["Default"] if image in template["Parameters"] else image
        assert DEBIAN_12_IMAGE.match(image), f"{name}: build image {image!r} is not Debian 12: make setup uses apt"
        assert environment["Type"] == "LINUX_CONTAINER"
        assert environment.get("PrivilegedMode") is True, f"{name}: podman in CodeBuild needs PrivilegedMode: true"


def test_every_program_the_buildspecs_run_is_installed_on_debian_12_before_use():
    for name, spec in buildspecs().items():
        lines = [c for phase in spec["phases"].values() for c in phase["commands"]]
        programs = programs_of(lines, name)
        assert {"make", "apt-get", "python3", "podman", "bash"} <= set(programs), (name, programs)
        installed = with_dependencies(BASE_IMAGE_PACKAGES | set(apt_installs(
            [a for line in lines for a in simple_commands(line)])) | setup_packages())
        for program, where in sorted(programs.items()):
            package = PROGRAM_PACKAGES.get(program)
            assert package, f"{name}: {where} runs {program!r}: add its Debian 12 package to PROGRAM_PACKAGES"
            assert package in installed, f"{name}: {where} runs {program} from {package}, which nothing installs"
        install = spec["phases"]["install"]["commands"]
        first_make = next(i for i, line in enumerate(install) if line.split()[0] == "make")
        assert "make" in apt_installs([a for line in install[:first_make] for a in simple_commands(line)]), (
            f"{name}: `make` runs before an apt-get install line installs it (debian:bookworm has no make)")
        assert spec["env"]["shell"] == "bash", f"{name}: setup.sh and the Makefile are bash"


def test_the_program_table_agrees_with_dpkg_on_this_host():
    if not shutil.which("dpkg-query") or "bookworm" not in Path("/etc/os-release").read_text():
        pytest.skip("not a Debian 12 host: dpkg cannot confirm the table")
    checked = 0
    for program, package in PROGRAM_PACKAGES.items():
        for directory in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
            out = subprocess.run(["dpkg", "-S", f"{directory}/{program}"], capture_output=True, text=True,
                                 check=False)
            if out.returncode == 0:
                owner = out.stdout.strip().splitlines()[-1].split(":")[0]
                assert owner == package, f"{program}: dpkg says {owner}, the table {package}"
                checked += 1
                break
    assert checked >= len(PROGRAM_PACKAGES) - 3  # a host may lack packer, podman or ssh
    out = subprocess.run(["apt-cache", "depends", "python3-venv"], capture_output=True, text=True, check=False)
    assert out.returncode != 0 or "Depends: python3\n" in out.stdout


def test_the_program_walk_sees_through_make_and_setup():
    found = programs_of(["make setup"], "test")
    assert {"bash", "dpkg-query", "apt-get", "grep", "podman", "python3", "sha256sum", "cut"} <= set(found)
    assert found["podman"] == "scripts/setup.sh"
    assert "say" not in found and "WANT_CONF" not in found and "[containers]" not in found
    assert apt_installs([["apt-get", "install", "-y", "--no-install-recommends", "make", "git"]]) == ["make", "git"]


def test_the_qa_build_and_the_promote_build_have_roles_of_their_own():
    """One role for both would let the qa build deploy to prod: each project has its own role, and each role its
    own list of managed policies (`bake.py iam-policy --env <env>`, split by --part over 6,144 characters)."""
    template = load_template()
    projects = codebuild_projects(template)
    roles = {name: str(project["ServiceRole"]).removesuffix(".Arn") for name, project in projects.items()}
    assert len(set(roles.values())) == len(projects), f"CodeBuild projects share a service role: {roles}"
    policies = {}
    for name, role in roles.items():
        arns = template["Resources"][role]["Properties"]["ManagedPolicyArns"]
        assert isinstance(arns, str) and template["Parameters"][arns]["Type"] == "CommaDelimitedList", (
            f"{role}: take the managed policy ARNs as a list parameter (the qa policy has two parts)")
        policies[name] = arns
    assert len(set(policies.values())) == len(projects), f"the roles share their policies: {policies}"
    comments = CODEPIPELINE.read_text()
    assert "iam-policy --env qa" in comments and "iam-policy --env prod --no-build" in comments


def test_codepipeline_template_still_passes_cfn_lint():
    out = tool("cfn-lint", str(CODEPIPELINE))
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- GitHub Actions


def workflow_jobs() -> dict[str, dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]


def checkout_steps(job: dict) -> list[dict]:
    return [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout@")]


def test_no_job_uploads_bakery_state_or_run_logs():
    for name, job in workflow_jobs().items():
        for step in job["steps"]:
            if str(step.get("uses", "")).startswith("actions/upload-artifact@"):
                paths = str((step.get("with") or {}).get("path", ""))
                assert ".bakery" not in paths and "runs/" not in paths, f"job {name} uploads {paths!r}"
                assert all(p.strip().endswith(".json") for p in paths.splitlines() if p.strip()), (
                    f"job {name}: upload only redacted JSON reports, not {paths!r}")


def test_checkouts_are_clean_and_qa_and_prod_keep_separate_state():
    jobs = workflow_jobs()
    projects, runners = {}, {}
    for name in ("qa", "prod"):
        job = jobs[name]
        [checkout] = checkout_steps(job)
        options = checkout.get("with") or {}
        assert options.get("clean", True) is True, f"job {name}: the checkout must be clean"
        path = options.get("path", ".")
        assert job.get("defaults", {}).get("run", {}).get("working-directory", ".") == path
        assert job.get("env", {}).get("BAKERY_PROJECT", "").endswith(f"/{path}"), (
            f"job {name}: BAKERY_PROJECT must name its own checkout ({path})")
        projects[name], runners[name] = path, set(job["runs-on"])
        last = job["steps"][-1]
        assert last.get("if") == "always()" and last.get("run") == CLEAN_UP, (
            f"job {name}: must remove its .bakery/ (a cache of AWS) and the images no catalog lists when it ends")
    assert projects["qa"] != projects["prod"], "qa and prod share a project directory, so a .bakery/"
    assert runners["qa"] - runners["prod"] and runners["prod"] - runners["qa"], (
        "qa and prod must run on different runners (a distinct label each)")


def test_the_workflow_says_what_the_runner_must_not_be_shared_with():
    comments = " ".join(line.lstrip("# ") for line in WORKFLOW.read_text().splitlines() if line.startswith("#"))
    for phrase in ("must not be shared with the qa job", "pull requests", "other repositories",
                   "runtime config"):
        assert phrase in comments, f"{WORKFLOW.name}'s comments do not say: {phrase}"


def test_the_workflow_says_how_to_render_each_environment_s_role():
    """The qa role cannot touch prod only if its policy is rendered for qa alone."""
    comments = " ".join(line.lstrip("# ") for line in WORKFLOW.read_text().splitlines() if line.startswith("#"))
    assert "iam-policy --env qa" in comments and "iam-policy --env prod --no-build" in comments


def test_only_mains_code_can_reach_prod():
    """A dispatch runs the chosen branch's workflow and bake.py: the prod job must refuse every ref but main's."""
    condition = workflow_jobs()["prod"]["if"]
    assert "github.ref == 'refs/heads/main'" in condition and "&&" in condition, condition
