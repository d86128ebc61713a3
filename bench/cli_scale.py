"""CLI latency and catalog scale: how fast the read commands answer, on a small and on a 10,000-version catalog.

The big catalog is written through bakery's own catalog API (reserve_version, complete_version)
into a throw-away project copy, so the rows look exactly like real bakes: provenance, three layers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import BAKE, PYTHON, REPO, SKIP, log, median

IMAGES = 50
VERSIONS_PER_IMAGE = 200  # 10,000 in all


def time_cli(project: Path, args: list[str], runs: int) -> list[float]:
    """Wall time of `bake.py ARGS`, as a user runs it (a fresh interpreter each time)."""
    times = []
    for _ in range(runs):
        started = time.monotonic()
        proc = subprocess.run([str(PYTHON), str(BAKE), "--project", str(project), *args],
                              capture_output=True, text=True, check=False)
        times.append(time.monotonic() - started)
        if proc.returncode != 0:
            raise SystemExit(f"bench: bake.py {' '.join(args)} failed: "
                             f"{(proc.stderr.strip() or 'no output').splitlines()[-1]}")
    return times


def big_catalog(parent: Path) -> tuple[Path, str, float]:
    """A project copy whose catalog holds IMAGES x VERSIONS_PER_IMAGE ready versions; returns (project, a version
    ref, seconds to fill)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bakery.catalog import open_catalog

    project = parent / "scale"
    shutil.copytree(REPO, project,
                    ignore=lambda _dir, names: [n for n in names if n in SKIP or n.startswith(".bakery-")])
    catalog = open_catalog(project / ".bakery")
    started = time.monotonic()
    ref = ""
    for n in range(IMAGES * VERSIONS_PER_IMAGE):
        image = f"image-{n % IMAGES:02d}"
        version = catalog.reserve_version(image, f"bench-run-{n}", 1)
        digest = f"sha256:{n:064x}"
        provenance = {"image": image, "version": version, "git_commit": f"{n:040x}", "git_message": "bench",
                      "git_branch": "main", "git_dirty": False, "build_time": "2026-11-29T00:00:00Z",
                      "base_image": "localhost/bakery/base:bookworm",
                      "base_digest": digest, "input_digest": digest, "bakery_version": "bench",
                      "roles": {role: digest for role in ("base", "hardening", "webapp")},
                      "artifacts": {"webapp": "1.0.0"}}
        catalog.complete_version(image, version, image_ref=f"localhost/bakery/{image}:{version}", image_id=f"{n:064x}",
                                 input_digest=digest, provenance=provenance,
                                 layers=[{"role": role, "role_digest": digest, "key": f"{digest}-{role}",
                                          "cached": False}
                                         for role in ("base", "hardening", "webapp")])
        ref = f"{image}:{version}"
    catalog.close()
    return project, ref, time.monotonic() - started


def gc_available(project: Path) -> bool:
    """The local gc planner is another engineer's work in progress: time it only once bakery/gc/local.py exists."""
    return (REPO / "bakery" / "gc" / "local.py").is_file() or (REPO / "bakery" / "gc" / "plan.py").is_file()


def measure(small_project: Path, parent: Path, runs: int) -> dict:
    found: dict = {}
    log("CLI latency")
    found["help"] = time_cli(small_project, ["--help"], runs)
    found["images"] = time_cli(small_project, ["images"], runs)
    log(f"filling a catalog with {IMAGES * VERSIONS_PER_IMAGE} versions of {IMAGES} images")
    project, ref, fill = big_catalog(parent)
    found["fill_seconds"] = fill
    found["big_images"] = time_cli(project, ["images"], runs)
    found["big_show"] = time_cli(project, ["show", ref], runs)
    if gc_available(project):
        try:
            found["big_gc"] = time_cli(project, ["gc", "--keep", "5", "--dry-run"], max(3, runs // 3))
        except SystemExit as exc:
            found["big_gc_error"] = str(exc)
    shutil.rmtree(project, ignore_errors=True)
    return found


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bakery-bench-") as tmp:
        result = measure(REPO, Path(tmp), 5)
        print(json.dumps({k: (median(v) if isinstance(v, list) else v) for k, v in result.items()}, indent=1))
