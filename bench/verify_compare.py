"""Container verify of the example image: this checkout's bakery against a baseline commit's, alternating.

The baseline (default d898b2d, the commit before issue 19's faster gate) is exported with `git archive`
into the bench's temporary directory (no worktree is registered in the main repository, nothing to clean
up there) and its bake.py is run by the main checkout's venv python: bake.py puts its own folder first on
sys.path, so it imports the baseline's bakery package, and the verify's pytest child runs with that same
python. Both verifies run against the same throw-away project copy, the same image version and the same
test files (the copy's tests/images and role tests): only the verify machinery differs. They alternate
(baseline, current, current, baseline, ...) so drift in the machine's load hits both alike. The same
exported tree serves the cold bake against the baseline's (bench/bakes.py).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import BAKE, IMAGE, PYTHON, REPO, BenchProject, log, median

BASELINE = "d898b2d"


@dataclass
class Verifies:
    seconds: list[float] = field(default_factory=list)
    passed: list[bool] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.seconds)


def baseline_tree(commit: str, parent: Path) -> Path:
    """The baseline commit's files (bake.py, bakery/) under `parent`, without touching the main repository."""
    where = Path(tempfile.mkdtemp(prefix=f"baseline-{commit}-", dir=parent))
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", "--format=tar", commit], stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(where)], stdin=archive.stdout, capture_output=True, check=False)
    if archive.stdout is not None:
        archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise SystemExit(f"bench: git archive {commit} | tar -x failed: {untar.stderr.decode(errors='replace')}")
    return where


def verify_once(bake_py: Path, project: BenchProject, ref: str) -> tuple[float, bool, str]:
    """One `bake.py verify REF --env qa`: (seconds, passed, summary with the testinfra check's own seconds).

    Exit 1 (a failed check) is a result; anything else (a crash, bad input) stops the bench.
    """
    started = time.monotonic()
    proc = subprocess.run([str(PYTHON), str(bake_py), "--project", str(project.root), "verify", ref, "--env", "qa",
                           "--json"], capture_output=True, text=True, check=False, timeout=1800)
    seconds = time.monotonic() - started
    if proc.returncode not in (0, 1):
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise SystemExit(f"bench: {bake_py} verify {ref} failed (exit {proc.returncode}): {tail}")
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return seconds, False, (proc.stderr.strip() or "no JSON output").splitlines()[-1][:200]
    testinfra = [c for c in result.get("checks", []) if c.get("name") == "testinfra"]
    inner = f"testinfra {testinfra[0].get('seconds', 0):.1f} s; " if testinfra else ""
    return seconds, proc.returncode == 0, inner + str(result.get("summary", ""))[:200]


def set_runtime_params(project: BenchProject) -> None:
    """qa's runtime config references DATABASE_PASSWORD (ssm:/webapp/qa/database-password): without it the
    instance's bakery-runtime-config unit fails, boot is 'degraded' and testinfra never runs. A dummy value,
    on stdin as an operator would give it, in the copy's own local parameter store."""
    proc = subprocess.run([str(PYTHON), str(BAKE), "--project", str(project.root), "param", "set", "--env", "qa",
                           "DATABASE_PASSWORD"], input="bench-db-secret", capture_output=True, text=True,
                          check=False, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"bench: param set --env qa DATABASE_PASSWORD failed: {proc.stderr.strip()[-300:]}")


def compare(project: BenchProject, version: str, rounds: int, commit: str = BASELINE,
            tree: Path | None = None) -> dict[str, Verifies]:
    """Alternate the baseline's and this checkout's verify of IMAGE:version, `rounds` each (ABBA order).

    `tree`: the commit's files already exported by baseline_tree (the bench exports them once for the bakes too).
    """
    baseline = (tree or baseline_tree(commit, project.root.parent)) / "bake.py"
    set_runtime_params(project)
    found = {"baseline": Verifies(), "current": Verifies()}
    ref = f"{IMAGE}:{version}"
    for n in range(1, rounds + 1):
        order = ("baseline", "current") if n % 2 else ("current", "baseline")
        for which in order:
            log(f"verify round {n}/{rounds}: {which} ({commit if which == 'baseline' else 'this checkout'})")
            seconds, passed, message = verify_once(baseline if which == "baseline" else BAKE, project, ref)
            found[which].seconds.append(seconds)
            found[which].passed.append(passed)
            found[which].messages.append(message)
            log(f"verify round {n}/{rounds}: {which} {seconds:.1f} s, {'passed' if passed else 'FAILED'}")
    return found
