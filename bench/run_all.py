#!/usr/bin/env python3
"""Every benchmark of `make bench`, side by side in one run, as one Markdown report with times and ratios.

    .venv/bin/python bench/run_all.py [--rounds 2] [--runs 10] [--no-options] \\
        [--report .bakery/bench/report.md]

The bakes run in a throw-away copy of the project (see bench/common.py): the main catalog
and its podman images are never touched, and everything the benchmark made is removed at the end.
The machine is shared (2 cores, other podman work): compared runs alternate, and the report
gives each run's time and the spread next to the medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bakes
import bench_ebs_publish
import cli_scale
import content
from common import BAKE, IMAGE, PYTHON, REPO, BenchProject, log, median, run, spread
from deploy_memory import deploy_memory

ROLLOUT = Path(__file__).resolve().parent / "rollout.py"


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


def measure_bakes(report: Report, project: BenchProject, rounds: int, with_options: bool) -> list[str]:
    cold = bakes.cold_rounds(project, rounds)
    t = cold["times"]
    bake, packer, bare = median(t["bake"]), median(t["packer"]), median(t["bare"])
    report.row("cold bake: bake.py build --no-cache vs Packer", f"{bake:.1f} s", f"Packer {packer:.1f} s",
               f"{bake / packer:.2f}", "≤ 0.90", bake / packer <= 0.9,
               f"bake.py {times(t['bake'])}; Packer {times(t['packer'])}; "
               f"spread {spread(t['bake'])} / {spread(t['packer'])}")
    report.row("provisioning limit: bare ansible-playbook + 1 commit, same Ansible settings", f"{bare:.1f} s",
               f"bake.py {bake:.1f} s", f"overhead {(bake / bare - 1) * 100:+.0f} %", "≤ +10 %",
               bake / bare - 1 <= 0.10,
               f"{times(t['bare'])}; spread {spread(t['bare'])}; "
               f"bake.py's 3 layer playbooks took {median(cold['in_ansible']):.1f} s of its "
               f"{bake:.1f} s, the rest is boot, 3 layer commits, the final layer and its own start")

    # The options bake the same inputs as the cold rounds (before the app changes), so their images compare file for
    # file.
    found = bakes.options(project) if with_options else {}

    log("no-change rebakes")
    same = bakes.no_change(project, 3)
    report.row("no-change rebake", f"{median(same):.2f} s", f"cold {bake:.1f} s", f"{median(same) / bake:.3f}", "< 3 s",
               median(same) < 3, times(same))
    log("app-only changes")
    app, app_versions = bakes.app_only(project, rounds)
    report.row("app-only change (only the webapp layer re-runs)", f"{median(app):.1f} s", f"cold {bake:.1f} s",
               f"{median(app) / bake:.2f}", "≤ 0.35", median(app) / bake <= 0.35, f"{times(app)}; spread {spread(app)}")

    bake_mem = max(cold["memory"], key=lambda m: m.own_mb)
    report.row("peak RSS of bake.py during a cold bake", f"{bake_mem.own_mb:.0f} MB", "", "", "< 150 MB",
               bake_mem.own_mb < 150,
               f"Ansible & podman children apart: up to {max(m.children_mb for m in cold['memory']):.0f} MB at once, "
               f"largest {bake_mem.largest_child_mb:.0f} MB ({bake_mem.largest_child})")

    if found:
        (plain, plain_ref), (facts, facts_ref) = found["no mitogen"], found["fact cache"]
        report.row("option: mitogen_linear (default when installed) vs BAKERY_MITOGEN=0", f"{bake:.1f} s",
                   f"without mitogen {plain:.1f} s", f"{bake / plain:.2f}", "", None,
                   f"1 run without; without mitogen bake.py/Packer would be {plain / packer:.2f}")
        report.row("option: fact cache (jsonfile, smart gathering) on top", f"{facts:.1f} s", f"cold {bake:.1f} s",
                   f"{facts / bake:.2f}", "", None, "1 run")
        for label, ref in (("without mitogen", plain_ref), ("with a fact cache", facts_ref)):
            shared, only_default, only_option = content.compare(cold["refs"][-1], ref)
            report.notes.append(f"Content: the default bake and the bake {label} share {shared} paths; "
                                f"only in the default: {only_default[:5] or 'none'}; "
                                f"only {label}: {only_option[:5] or 'none'}.")
    report.notes += [
        "Not measured as options: Ansible pipelining (already on, but the containers.podman connection cannot "
        "pipeline); gather_facts off per layer (the fact cache is its safe general form: roles keep the facts they "
        "use); a shared apt package cache (each role's handler empties /var/cache/apt and the lists at its end, so a "
        "mounted cache would be emptied by the roles themselves; it needs a role-side switch first).",
    ]
    left = content.leftovers(cold["refs"][-1])
    report.notes.append("Caches left in the default bake's image (~/.ansible, ~/.cache, apt archives and lists): "
                        f"{left or 'none'}.")
    return [*cold["versions"], *app_versions]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternations of bake.py / Packer / bare (and app-only changes)")
    parser.add_argument("--runs", type=int, default=10, help="runs per CLI latency measurement")
    parser.add_argument("--strategies", default="surge",
                        help="rollout strategies to run (bench/rollout.py --strategies)")
    parser.add_argument("--no-options", dest="options", action="store_false",
                        help="skip measuring the speed-up options")
    parser.add_argument("--report", type=Path, default=REPO / ".bakery" / "bench" / "report.md")
    args = parser.parse_args()

    started = time.monotonic()
    report = Report()
    with BenchProject() as project:
        log(f"project copy at {project.root}")
        run([str(PYTHON), str(BAKE), "--project", str(project.root), "build-app"])
        versions = measure_bakes(report, project, args.rounds, args.options)
        measure_rollout(report, project, versions[-2], versions[-1], args.strategies)
        measure_deploy_memory(report, project, versions[-1])
        log("EBS direct publish of the last two versions' disks (an app-only change) against moto")
        bench_ebs_publish.add_rows(report, project.root, IMAGE, versions[-2], versions[-1])
        measure_cli(report, project, args.runs)
    cpus = len(__import__("os").sched_getaffinity(0))
    header = [
        "# bakery benchmarks",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
        f"({cpus} CPUs, shared with other work), "
        f"{args.rounds} alternating rounds of bake.py / Packer / bare; "
        f"benchmark wall time {time.monotonic() - started:.0f} s.",
        f"Example image {IMAGE} = playbooks/webapp.yml in a throw-away project copy; "
        "base localhost/bakery/base:bookworm; "
        f"{subprocess.run(['packer', 'version'], capture_output=True, text=True, check=False).stdout.strip()}.",
    ]
    text = report.markdown(header)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)
    print(f"report: {args.report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
