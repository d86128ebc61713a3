"""What every benchmark shares: a throw-away project copy, timed commands, peak memory, medians and spreads.

The bakes of a benchmark run against a copy of the project (no .bakery, no .venv, its own git
repo) whose image is renamed `bench-webapp`: the same playbook and roles as `webapp`, but its
versions, cached layers and catalog are its own, so the main checkout's catalog and podman tags
are never touched, and everything the copy made is removed by name afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BAKE = REPO / "bake.py"
PYTHON = REPO / ".venv" / "bin" / "python"
IMAGE = "bench-webapp"  # the example image under a name of its own
SOURCE_IMAGE = "webapp"
BASE = "localhost/bakery/base:bookworm"
BENCH_LABEL = "io.bakery.bench"
PACKER_REPO = "localhost/bakery-bench/packer-webapp"
BARE_REPO = "localhost/bakery-bench/bare-webapp"
SKIP = {".bakery", ".venv", ".git", ".pytest_cache", ".ruff_cache", "__pycache__"}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    """min-max of the runs, as a percentage of the median: how much contention moved the numbers."""
    if len(values) < 2:
        return "1 run"
    mid = median(values)
    return f"{min(values):.1f}-{max(values):.1f} s (±{(max(values) - min(values)) / 2 / mid * 100:.0f} %)"


def log(message: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run a command; a failure stops the benchmark with the command's last line of error output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise SystemExit(f"bench: {' '.join(map(str, cmd[:6]))} ... failed (exit {proc.returncode}): {tail}")
    return proc


def timed(cmd: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    proc = run(cmd, **kwargs)
    return time.monotonic() - started, proc


@dataclass
class Memory:
    """Peak resident memory of one process (VmHWM) and of everything it started (sampled)."""

    own_mb: float = 0.0
    children_mb: float = 0.0  # the largest sum over all descendants at one sample
    largest_child_mb: float = 0.0
    largest_child: str = ""


@dataclass
class Sampled:
    seconds: float
    proc: subprocess.CompletedProcess
    memory: Memory = field(default_factory=Memory)


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _name(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return " ".join(Path(w.decode(errors="replace")).name for w in words[:2] if w)
    except OSError:
        return "?"


def sampled(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 1800) -> Sampled:
    """Run a command while sampling its peak RSS (its own VmHWM) and its descendants' RSS every 0.2 s."""
    memory = Memory()
    started = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            memory.own_mb = max(memory.own_mb, _status_kb(child.pid, "VmHWM") / 1024)
            total = 0.0
            for pid in _descendants(child.pid):
                rss = _status_kb(pid, "VmRSS") / 1024
                total += rss
                if rss > memory.largest_child_mb:
                    memory.largest_child_mb, memory.largest_child = rss, _name(pid)
            memory.children_mb = max(memory.children_mb, total)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = child.communicate(timeout=timeout)
    finally:
        stop.set()
        sampler.join()
    proc = subprocess.CompletedProcess(cmd, child.returncode, out, err)
    if proc.returncode != 0:
        tail = (err.strip() or out.strip() or "no output").splitlines()[-1]
        raise SystemExit(f"bench: {' '.join(map(str, cmd[:6]))} ... failed (exit {proc.returncode}): {tail}")
    return Sampled(time.monotonic() - started, proc, memory)


class BenchProject:
    """A throw-away copy of the project whose example image is called bench-webapp."""

    def __init__(self, parent: Path | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="bakery-bench-", dir=parent)) / "project"

    def __enter__(self) -> BenchProject:
        shutil.copytree(REPO, self.root,
                        ignore=lambda _dir, names: [n for n in names if n in SKIP or n.startswith(".bakery-")])
        playbooks = self.root / "playbooks"
        (playbooks / f"{SOURCE_IMAGE}.yml").rename(playbooks / f"{IMAGE}.yml")
        for other in playbooks.glob("*.yml"):
            if other.stem != IMAGE:
                other.unlink()
        settings_file = self.root / "bakery.yml"
        settings = yaml.safe_load(settings_file.read_text())
        settings["images"] = {IMAGE: settings["images"][SOURCE_IMAGE]}
        settings_file.write_text(yaml.safe_dump(settings, sort_keys=False))
        self.git("init", "-q")
        self.commit("bench copy")
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def git(self, *args: str) -> None:
        run(["git", "-c", "user.email=bench@localhost", "-c", "user.name=bench", *args], cwd=self.root)

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def bake(self, *args: str, env: dict[str, str] | None = None) -> Sampled:
        return sampled([str(PYTHON), str(BAKE), "--project", str(self.root), *args], env=env)

    def artifact_vars(self) -> dict[str, str]:
        """The variables bake.py gives the webapp role (Builder.artifact_inputs), for Packer and the bare run."""
        sys.path.insert(0, str(REPO))
        from bakery.builders.base import Builder
        from bakery.config import Project

        class _Inputs(Builder):
            def build(self, definition, options, run):  # pragma: no cover - never called
                raise NotImplementedError

        project = Project(self.root)
        _inputs, role_vars = _Inputs(project, None, None).artifact_inputs(project.image(IMAGE))
        return {key: value for values in role_vars.values() for key, value in values.items()}

    def change_app(self, note: str) -> None:
        """An app-only change: one line in the app's package, then a new artifact."""
        init = self.root / "app" / "webapp" / "__init__.py"
        init.write_text(init.read_text() + f"# bench change: {note}\n")
        self.commit(f"app change {note}")
        run([str(PYTHON), str(BAKE), "--project", str(self.root), "build-app"])

    def cleanup(self) -> None:
        """Take down every environment, remove every image the copy or the benchmark made, then the copy."""
        envs = self.root / ".bakery" / "envs"
        for env in envs.iterdir() if envs.is_dir() else []:
            subprocess.run([str(PYTHON), str(BAKE), "--project", str(self.root), "down", "--env", env.name],
                           capture_output=True, check=False)
        remove_bench_containers()
        remove_images([f"localhost/bakery/{IMAGE}", f"localhost/bakery-cache/{IMAGE}", PACKER_REPO, BARE_REPO])
        shutil.rmtree(self.root.parent, ignore_errors=True)


def remove_bench_containers() -> None:
    out = subprocess.run(["podman", "ps", "-aq", "--filter", f"label={BENCH_LABEL}"],
                         capture_output=True, text=True, check=False)
    for cid in out.stdout.split():
        subprocess.run(["podman", "rm", "-f", "-t", "0", cid], capture_output=True, check=False)


def remove_images(repositories: list[str]) -> None:
    """Remove every image of these repositories (only the benchmark writes them); never the shared base."""
    base = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", BASE],
                          capture_output=True, text=True, check=False).stdout.strip()
    for repository in repositories:
        out = subprocess.run(["podman", "images", "--format", "{{.ID}}", "--filter", f"reference={repository}"],
                             capture_output=True, text=True, check=False)
        for image_id in dict.fromkeys(out.stdout.split()):
            if base.startswith(image_id):
                continue
            subprocess.run(["podman", "rmi", "-f", image_id], capture_output=True, check=False)


def bake_json(result: Sampled) -> dict:
    return json.loads(result.proc.stdout)
