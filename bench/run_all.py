#!/usr/bin/env python3
"""Every benchmark of `make bench`, side by side in one run, as one Markdown report with times and ratios.

    .venv/bin/python bench/run_all.py [--rounds 2] [--min-rounds 3] [--runs 10] [--no-options] \\
        [--skip ROW ...] [--baseline d898b2d] [--report .bakery/bench/report.md]

The bakes run in a throw-away copy of the project (see bench/common.py): the main catalog
and its podman images are never touched, and everything the benchmark made is removed at the end.
The machine is shared (2 cores, other podman work): compared runs alternate, the report
gives each run's time, each round's ratio and the spread next to the medians, and says what the
machine was doing before and after (load, other containers and VMs, memory).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bakes
import bench_ebs_publish
import cli_scale
import content
import machine
import verify_compare
from common import BAKE, IMAGE, PYTHON, REPO, BenchProject, log, median, run, spread
from deploy_memory import deploy_memory

ROLLOUT = Path(__file__).resolve().parent / "rollout.py"


@dataclass(frozen=True)
class Baseline:
    """The commit both baseline rows compare with, and its files exported once per run (None: both rows skipped)."""

    commit: str
    tree: Path | None

    @property
    def bake_py(self) -> Path | None:
        return self.tree / "bake.py" if self.tree else None


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


class Report:
    def __init__(self):
        self.rows: list[tuple[str, ...]] = []
        self.notes: list[str] = []

    def row(self, name: str, measured: str, against: str, ratio: str, target: str, met: bool | None, runs: str) -> None:
        self.rows.append((name, measured, against, ratio, target, verdict(met), runs))

    def markdown(self, header: list[str]) -> str:
        cols = ("benchmark", "measured", "compared with", "ratio", "target", "met", "runs / spread")
        lines = [*header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join([*lines, "", *self.notes, ""])


def times(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values) + " s"


def per_round(values: list[float], fmt: str = "{:.2f}") -> str:
    return ", ".join(fmt.format(v) for v in values)


def baseline_row(report: Report, cold: dict, commit: str) -> None:
    """Issue 19: this checkout's cold bake against the baseline commit's (one ansible-playbook run per role)."""
    t, in_ansible = cold["times"], cold["in_ansible"]
    bake, base = median(t["bake"]), median(t["baseline"])
    report.row(f"cold bake: this checkout vs {commit} (one ansible-playbook run per role)", f"{bake:.1f} s",
               f"{commit} {base:.1f} s", f"{bake / base:.2f}x", "≤ 0.60x", bake / base <= 0.6,
               f"per round {per_round([a / b for a, b in zip(t['bake'], t['baseline'], strict=True)])}; "
               f"this checkout {times(t['bake'])}, spread {spread(t['bake'])}; {commit} {times(t['baseline'])}, "
               f"spread {spread(t['baseline'])}; layer playbooks {median(in_ansible['bake']):.1f} s vs "
               f"{median(in_ansible['baseline']):.1f} s; no package cache on either side (every bake downloads "
               "its packages; issue 19's goal assumed a warm one)")


def packer_row(report: Report, t: dict[str, list[float]]) -> None:
    """Issue 19: the cold bake against Packer, stable across rounds (every round's ratio within the goal)."""
    bake, packer = median(t["bake"]), median(t["packer"])
    each = [a / b for a, b in zip(t["bake"], t["packer"], strict=True)]
    report.row("cold bake: bake.py build --no-cache vs Packer, same playbook", f"{bake:.1f} s",
               f"Packer {packer:.1f} s", f"{bake / packer:.2f}x", "≤ 0.25x in every round",
               all(r <= 0.25 for r in each),
               f"per round {per_round(each)}; bake.py {times(t['bake'])}, spread {spread(t['bake'])}; "
               f"Packer {times(t['packer'])}, spread {spread(t['packer'])}")


def overhead_row(report: Report, cold: dict) -> None:
    """Issue 19: bakery's own time over the bare work; both download their packages, so only bakery's work differs."""
    t = cold["times"]
    work, bare = t["bake"], t["bare"]
    overhead = median(work) / median(bare) - 1
    report.row("bakery overhead: bake.py build --no-cache vs bare ansible-playbook + 1 commit, same Ansible settings",
               f"{median(work):.1f} s", f"bare {median(bare):.1f} s", f"overhead {overhead * 100:+.0f} %",
               "≤ +10 % (median)", overhead <= 0.10,
               f"per round {per_round([(a / b - 1) * 100 for a, b in zip(work, bare, strict=True)], '{:+.0f} %')}; "
               f"bake.py {times(work)}, spread {spread(work)}; bare {times(bare)}, spread {spread(bare)}; "
               f"bake.py's layer playbooks took {median(cold['in_ansible']['bake']):.1f} s of its "
               f"{median(work):.1f} s, the rest is boot, layer commits, the final layer and its own start")


def measure_bakes(report: Report, project: BenchProject, rounds: int, issue_rounds: int,
                  skip: frozenset[str], baseline: Baseline) -> list[str]:
    cold = bakes.cold_rounds(project, issue_rounds, skip, baseline.bake_py)
    t = cold["times"]
    bake = median(t["bake"])
    if "bare" in t:
        overhead_row(report, cold)
    if "baseline" in t:
        baseline_row(report, cold, baseline.commit)
    if "packer" in t:
        packer_row(report, t)

    # The options bake the same inputs as the cold rounds (before the app changes), so their images compare file for
    # file.
    found = bakes.options(project) if "options" not in skip else {}

    log("no-change rebakes")
    same = bakes.no_change(project, issue_rounds)
    report.row("no-change rebake", f"{median(same):.2f} s", f"cold {bake:.1f} s", f"{median(same) / bake:.3f}", "< 1 s",
               median(same) < 1, f"{times(same)}; spread {spread(same)}")
    app_versions: list[str] = []
    if "app-only" not in skip:
        log("app-only changes")
        app, app_versions = bakes.app_only(project, rounds)
        report.row("app-only change (only the webapp layer re-runs)", f"{median(app):.1f} s", f"cold {bake:.1f} s",
                   f"{median(app) / bake:.2f}", "≤ 0.35", median(app) / bake <= 0.35,
                   f"{times(app)}; spread {spread(app)}")

    bake_mem = max(cold["memory"], key=lambda m: m.own_mb)
    report.row("peak RSS of bake.py during a cold bake", f"{bake_mem.own_mb:.0f} MB", "", "", "< 150 MB",
               bake_mem.own_mb < 150,
               f"Ansible & podman children apart: up to {max(m.children_mb for m in cold['memory']):.0f} MB at once, "
               f"largest {bake_mem.largest_child_mb:.0f} MB ({bake_mem.largest_child})")
    option_rows(report, cold, found, bake, median(t["packer"]) if "packer" in t else None)
    content_notes(report, cold["refs"], baseline.commit)
    return [*cold["versions"], *app_versions]


def option_rows(report: Report, cold: dict, found: dict, bake: float, packer: float | None) -> None:
    if not found:
        return
    (plain, plain_ref), (facts, facts_ref) = found["no mitogen"], found["fact cache"]
    vs_packer = f"; without mitogen bake.py/Packer would be {plain / packer:.2f}" if packer else ""
    report.row("option: mitogen_linear (default when installed) vs BAKERY_MITOGEN=0", f"{bake:.1f} s",
               f"without mitogen {plain:.1f} s", f"{bake / plain:.2f}", "", None, f"1 run without{vs_packer}")
    report.row("option: fact cache (jsonfile, smart gathering) on top", f"{facts:.1f} s", f"cold {bake:.1f} s",
               f"{facts / bake:.2f}", "", None, "1 run")
    for label, ref in (("without mitogen", plain_ref), ("with a fact cache", facts_ref)):
        shared, only_default, only_option = content.compare(cold["refs"]["bake"][-1], ref)
        report.notes.append(f"Content: the default bake and the bake {label} share {shared} paths; "
                            f"only in the default: {only_default[:5] or 'none'}; "
                            f"only {label}: {only_option[:5] or 'none'}.")
    report.notes.append(
        "Not measured as options: Ansible pipelining (already on, but the containers.podman connection cannot "
        "pipeline); gather_facts off per layer (the fact cache is its safe general form: roles keep the facts they "
        "use).")


def content_notes(report: Report, refs: dict[str, list[str]], commit: str) -> None:
    """One ansible-playbook run must bake what one run per role baked, and neither may leave a package or a list."""
    if refs["baseline"]:
        shared, only_bake, only_baseline = content.compare(refs["bake"][-1], refs["baseline"][-1])
        report.notes.append(f"Content: the cold bakes of this checkout and of {commit} share {shared} paths; "
                            f"only in this checkout's: {only_bake[:5] or 'none'}; "
                            f"only in {commit}'s: {only_baseline[:5] or 'none'}.")
    for label, found in (("this checkout's", refs["bake"]), (f"{commit}'s", refs["baseline"])):
        if found:
            left = content.leftovers(found[-1])
            report.notes.append(f"Caches left in the image of {label} cold bake (~/.ansible, ~/.cache, apt "
                                f"archives and lists): {left or 'none'}.")


def measure_verify(report: Report, project: BenchProject, version: str, rounds: int, baseline: Baseline) -> None:
    """Issue 19: this checkout's container verify against the baseline commit's, same copy, same version."""
    commit = baseline.commit
    found = verify_compare.compare(project, version, rounds, commit, baseline.tree)
    cur, base = found["current"], found["baseline"]
    ratio = cur.median / base.median
    each = [a / b for a, b in zip(cur.seconds, base.seconds, strict=True)]
    report.row(f"container verify --env qa of the example image: this checkout vs {commit}", f"{cur.median:.1f} s",
               f"{commit} {base.median:.1f} s", f"{ratio:.2f}x", "≤ 0.50x, passing", ratio <= 0.5 and all(cur.passed),
               f"per round {per_round(each)}; this checkout {times(cur.seconds)}, spread {spread(cur.seconds)}, "
               f"passed {sum(cur.passed)}/{len(cur.passed)}; {commit} {times(base.seconds)}, "
               f"spread {spread(base.seconds)}, passed {sum(base.passed)}/{len(base.passed)}")
    report.notes.append(f"Verify of {IMAGE}:{version}, last round: this checkout: {cur.messages[-1]}; "
                        f"{commit}: {base.messages[-1]}. {commit}'s bakery was exported with git archive and run by "
                        "the venv's python on the same project copy and test files (bench/verify_compare.py).")


def measure_rollout(report: Report, project: BenchProject, old: str, new: str, strategies: str) -> None:
    log(f"rollout {old} -> {new} ({strategies})")
    proc = subprocess.run([str(PYTHON), str(ROLLOUT), "--project", str(project.root), "--image", IMAGE,
                           "--from", old, "--to", new, "--instances", "4", "--strategies", strategies, "--json"],
                          capture_output=True, text=True, check=False)
    if not proc.stdout.strip():
        report.row("rollout: 4-instance refresh under load", "failed", "", "", "0 failed requests", False,
                   (proc.stderr.strip() or "no output").splitlines()[-1])
        return
    data = json.loads(proc.stdout)
    first_name, first = next(iter(data["results"].items()))
    for strategy, r in data["results"].items():
        against, ratio = (("", "") if r is first
                          else (f"{first_name} {first['wall']:.1f} s", f"{r['wall'] / first['wall']:.2f}"))
        report.row(f"rollout: 4-instance refresh under load ({strategy})",
                   f"{r['wall']:.1f} s, {r['per_instance']:.1f} s/instance", against, ratio, "0 failed requests",
                   r["failed"] == 0, f"{r['requests']} requests, {r['failed']} failed")


def measure_deploy_memory(report: Report, project: BenchProject, version: str) -> None:
    log("deploy memory")
    seconds, mem = deploy_memory(project, version)
    report.row("peak RSS of bake.py during a deploy (2 instances)", f"{mem.own_mb:.0f} MB", "", "", "< 150 MB",
               mem.own_mb < 150,
               f"deploy {seconds:.1f} s; children apart: up to {mem.children_mb:.0f} MB at once, "
               f"largest {mem.largest_child_mb:.0f} MB ({mem.largest_child})")


def measure_cli(report: Report, project: BenchProject, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bakery-bench-scale-") as tmp:
        found = cli_scale.measure(project.root, Path(tmp), runs)
    for key, label in (("help", "CLI: bake.py --help"), ("images", "CLI: bake.py images")):
        report.row(label, f"{median(found[key]):.2f} s", "", "", "< 0.5 s", median(found[key]) < 0.5,
                   f"median of {runs}, {min(found[key]):.2f}-{max(found[key]):.2f} s")
    scale = f"{cli_scale.IMAGES * cli_scale.VERSIONS_PER_IMAGE:,} versions of {cli_scale.IMAGES} images"
    for key, label, limit in (("big_images", "images", 0.5), ("big_show", "show IMAGE:VERSION", 0.5),
                              ("big_gc", "gc --keep 5 --dry-run", 2.0)):
        if key in found:
            report.row(f"scale: {label} on {scale}", f"{median(found[key]):.2f} s", "", "", f"< {limit:g} s",
                       median(found[key]) < limit,
                       f"median of {len(found[key])}, {min(found[key]):.2f}-{max(found[key]):.2f} s")
        else:
            reason = found.get("big_gc_error",
                               "the local gc planner (bakery/gc/local.py) is not available in this checkout")
            report.row(f"scale: {label} on {scale}", "not available", "", "", f"< {limit:g} s", None, reason)
    report.notes.append(f"The {scale} catalog was written through bakery's catalog API in "
                        f"{found['fill_seconds']:.1f} s.")


SKIPPABLE = ("baseline", "packer", "bare", "verify", "options", "app-only", "rollout", "deploy", "ebs", "cli")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the app-only changes (and of the rows below "
                        "when larger than --min-rounds)")
    parser.add_argument("--min-rounds", type=int, default=3,
                        help="rounds at least of issue 19's rows: cold bake of this checkout, of the baseline commit, "
                        "Packer, bare, verify against the baseline, no-change rebakes")
    parser.add_argument("--runs", type=int, default=10, help="runs per CLI latency measurement")
    parser.add_argument("--strategies", default="surge",
                        help="rollout strategies to run (bench/rollout.py --strategies)")
    parser.add_argument("--no-options", dest="options", action="store_false",
                        help="skip measuring the speed-up options (same as --skip options)")
    parser.add_argument("--skip", action="append", default=[], choices=SKIPPABLE, metavar="ROW",
                        help=f"leave out a measurement (repeatable): {', '.join(SKIPPABLE)}")
    parser.add_argument("--baseline", "--verify-baseline", dest="baseline", default=verify_compare.BASELINE,
                        metavar="COMMIT", help="the commit whose cold bake and container verify are the baseline "
                        "(default: %(default)s)")
    parser.add_argument("--report", type=Path, default=REPO / ".bakery" / "bench" / "report.md")
    return parser.parse_args()


def measure_rest(report: Report, project: BenchProject, versions: list[str], args: argparse.Namespace,
                 skip: frozenset[str]) -> None:
    """Rollout, deploy memory, EBS publish (on the last two versions) and CLI latency."""
    if len(versions) < 2:
        report.notes.append("Rollout, deploy memory and EBS publish need two versions: not measured.")
    else:
        if "rollout" not in skip:
            measure_rollout(report, project, versions[-2], versions[-1], args.strategies)
        if "deploy" not in skip:
            measure_deploy_memory(report, project, versions[-1])
        if "ebs" not in skip:
            log("EBS direct publish of the last two versions' disks (an app-only change) against moto")
            bench_ebs_publish.add_rows(report, project.root, IMAGE, versions[-2], versions[-1])
    if "cli" not in skip:
        measure_cli(report, project, args.runs)


def main() -> int:
    args = arguments()
    skip = frozenset(args.skip) | (frozenset() if args.options else {"options"})
    issue_rounds = max(args.rounds, args.min_rounds)
    started = time.monotonic()
    before = machine.snapshot()
    report = Report()
    with BenchProject() as project:
        log(f"project copy at {project.root}")
        run([str(PYTHON), str(BAKE), "--project", str(project.root), "build-app"])
        baseline = Baseline(args.baseline, verify_compare.baseline_tree(args.baseline, project.root.parent)
                            if {"baseline", "verify"} - skip else None)
        versions = measure_bakes(report, project, args.rounds, issue_rounds, skip, baseline)
        if "verify" not in skip:
            measure_verify(report, project, versions[0], issue_rounds, baseline)
        measure_rest(report, project, versions, args, skip)
    after = machine.snapshot()
    header = [
        "# bakery benchmarks",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()}, "
        f"{issue_rounds} alternating rounds of the cold bake of this checkout / of {args.baseline} / Packer / bare "
        f"and of the verify against {args.baseline}, {args.rounds} of the app-only change"
        f"{'; left out: ' + ', '.join(sorted(skip)) if skip else ''}; "
        f"benchmark wall time {time.monotonic() - started:.0f} s.",
        f"Example image {IMAGE} = playbooks/webapp.yml in a throw-away project copy; "
        "base localhost/bakery/base:bookworm; "
        f"{subprocess.run(['packer', 'version'], capture_output=True, text=True, check=False).stdout.strip()}.",
        "",
        *machine.header_lines(before, after),
    ]
    text = report.markdown(header)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)
    print(f"report: {args.report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
