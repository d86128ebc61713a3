#!/usr/bin/env python3
"""Side-by-side rollout benchmark: the same version change under load, with different refresh preferences.

For each strategy it makes a throw-away environment (inventories/bench-<pid>-<strategy>, a free
loopback port in 19000-19999), deploys FROM, then deploys TO while threads send GET /version
through HAProxy without keep-alive, and reports wall time, time per instance, requests sent and
failed (any non-200 or connection error). Ratios are against the first strategy. Every
environment is taken down and its inventory removed afterwards.

    .venv/bin/python bench/rollout.py --from 20261128.001 --to 20261128.002 \\
        [--instances 4] [--project DIR] [--image NAME]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BAKE = REPO / "bake.py"

# name -> refresh preferences (everything else as in a fast test environment)
STRATEGIES = {
    # launch before terminating, half at a time
    "surge": {"min_healthy_percentage": 100, "max_healthy_percentage": 150},
    # one surge + one terminate-first per batch
    "rolling": {"min_healthy_percentage": 75, "max_healthy_percentage": 125},
    # no extra capacity
    "terminate-first": {"min_healthy_percentage": 50, "max_healthy_percentage": 100},
    # the most careful
    "one-by-one": {"min_healthy_percentage": 100, "max_healthy_percentage": 110},
}


def free_port() -> int:
    for port in random.sample(range(19000, 20000), 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port in 19000-19999")


def bake(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BAKE), "--project", str(project), *args],
                          capture_output=True, text=True, check=False)


class Load:
    def __init__(self, port: int, threads: int = 4, rate: float = 80.0):
        self.port, self.interval = port, threads / rate
        self.ok, self.failed = 0, 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/version", headers={"Connection": "close"})
                good = conn.getresponse().status == 200
            except (OSError, http.client.HTTPException):
                good = False
            finally:
                conn.close()
            with self.lock:
                self.ok += good
                self.failed += not good
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def write_env(project: Path, name: str, instances: int, prefs: dict, image: str = "webapp") -> int:
    port = free_port()
    folder = project / "inventories" / name / "group_vars" / "all"
    folder.mkdir(parents=True)
    settings = {"target": "local", "image": image, "instances": instances, "lb_port": port, "require_verified": False,
                "health_check": {"path": "/health", "port": 8080, "interval_ms": 200, "rise": 1, "fall": 2,
                                 "timeout_ms": 1000},
                "refresh": {"instance_warmup": 1, "health_check_grace": 60, **prefs}}
    (folder / "deploy.yml").write_text(yaml.safe_dump({"bakery_deploy": settings}, sort_keys=False))
    (folder / "runtime.yml").write_text(yaml.safe_dump({"bakery_runtime": {"ENVIRONMENT": name}}))
    return port


def measure(project: Path, name: str, instances: int, prefs: dict, old: str, new: str, image: str = "webapp") -> dict:
    port = write_env(project, name, instances, prefs, image)
    try:
        first = bake(project, "deploy", f"{image}:{old}", "--env", name, "--json")
        if first.returncode != 0:
            raise SystemExit(f"{name}: deploying {old} failed: {first.stderr.strip().splitlines()[-1]}")
        with Load(port) as load:
            time.sleep(1)
            started = time.monotonic()
            out = bake(project, "deploy", f"{image}:{new}", "--env", name, "--json")
            wall = time.monotonic() - started
            time.sleep(1)
        if out.returncode != 0:
            raise SystemExit(f"{name}: deploying {new} failed: {out.stderr.strip().splitlines()[-1]}")
        replaced = json.loads(out.stdout)["replaced"] or 1
        return {"wall": wall, "per_instance": wall / replaced, "requests": load.ok + load.failed, "failed": load.failed}
    finally:
        bake(project, "down", "--env", name)
        shutil.rmtree(project / "inventories" / name, ignore_errors=True)
        shutil.rmtree(project / ".bakery" / "envs" / name, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=REPO)
    parser.add_argument("--from", dest="old", required=True, help="version deployed first")
    parser.add_argument("--to", dest="new", required=True, help="version rolled out under load")
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--image", default="webapp", help="image whose versions are rolled out")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (for bench/run_all.py)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="comma-separated subset of: " + ", ".join(STRATEGIES))
    args = parser.parse_args()
    results = {}
    for strategy in args.strategies.split(","):
        name = f"bench-{strategy}"[:40]
        results[strategy] = measure(args.project.resolve(), name, args.instances, STRATEGIES[strategy],
                                    args.old, args.new, args.image)
        print(f"{strategy}: done", file=sys.stderr)
    if args.json:
        print(json.dumps({"instances": args.instances, "results": results}))
        return 1 if any(r["failed"] for r in results.values()) else 0
    base = next(iter(results.values()))
    print(f"rollout of {args.instances} instances, {args.image}:{args.old} -> {args.image}:{args.new}, "
          "under ~80 requests/s")
    print(f"{'strategy':<16} {'wall s':>7} {'s/instance':>10} {'ratio':>6} {'requests':>9} {'failed':>7}  preferences")
    for strategy, r in results.items():
        prefs = STRATEGIES[strategy]
        print(f"{strategy:<16} {r['wall']:>7.1f} {r['per_instance']:>10.1f} {r['wall'] / base['wall']:>6.2f} "
              f"{r['requests']:>9} {r['failed']:>7}"
              f"  min {prefs['min_healthy_percentage']}% max {prefs['max_healthy_percentage']}%")
    return 1 if any(r["failed"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
