"""Bake benchmarks: cold bake vs the baseline commit's vs Packer vs the bare provisioning work, then rebakes.

The cold contenders run in turn, round after round (A B C D, B A C D, ...), so the other
work on this machine slows each of them alike; every run's time is kept for the spread.

  cold bake     bake.py build bench-webapp --no-cache: this checkout's bakery, every role in one
                ansible-playbook run with a layer committed as each play ends (issue 19)
  baseline      the same command run by the baseline commit's bake.py (d898b2d by default: one
                ansible-playbook run per role, before issue 19), exported with git archive
                (verify_compare.baseline_tree) and run by this checkout's venv python on the same project copy
  Packer        packer build packer/local.pkr.hcl (docker builder on podman via the podman-docker shim,
                ansible provisioner, same playbook, base and variables, one commit at the end)
  bare          ansible-playbook of the same playbook against an already booted systemd container
                (containers.podman connection, the same settings bake.py gives Ansible) + one podman commit:
                the time the work itself needs

No package cache outlives a bake: every contender downloads its packages again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from common import (
    BAKE,
    BARE_REPO,
    BASE,
    BENCH_LABEL,
    IMAGE,
    PACKER_REPO,
    PYTHON,
    REPO,
    BenchProject,
    Memory,
    bake_json,
    log,
    median,
    run,
    sampled,
    timed,
)

ANSIBLE_PLAYBOOK = REPO / ".venv" / "bin" / "ansible-playbook"
SHIM_PATH = "/usr/bin"  # podman-docker's `docker` must win over /usr/local/bin/docker


def fact_cache_env(folder: Path) -> dict[str, str]:
    """Gather facts once per bake and reuse them for the later layers' plays (jsonfile cache, smart gathering)."""
    return {"ANSIBLE_GATHERING": "smart", "ANSIBLE_CACHE_PLUGIN": "jsonfile",
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(folder), "ANSIBLE_CACHE_PLUGIN_TIMEOUT": "3600"}


def cold_bake(project: BenchProject, env: dict[str, str] | None = None,
              bake_py: Path = BAKE) -> tuple[float, Memory, dict]:
    """One `bake.py build IMAGE --no-cache --json` on the copy, by this checkout's bake.py or another tree's."""
    result = sampled([str(PYTHON), str(bake_py), "--project", str(project.root), "build", IMAGE, "--no-cache",
                      "--json"], env=env)
    return result.seconds, result.memory, bake_json(result)


def packer_bake(project: BenchProject, tag: str, role_vars: dict[str, str]) -> float:
    env = {**os.environ, "PATH": f"{SHIM_PATH}:{os.environ.get('PATH', '')}", "PACKER_NO_COLOR": "1",
           "CHECKPOINT_DISABLE": "1"}
    cmd = ["packer", "build", "-color=false",
           "-var", f"image_name={IMAGE}", "-var", f"playbook=playbooks/{IMAGE}.yml",
           "-var", f"roles_path={project.root / 'roles'}", "-var", f"ansible_playbook={ANSIBLE_PLAYBOOK}",
           "-var", f"artifact_path={role_vars['webapp_artifact_path']}",
           "-var", f"artifact_sha256={role_vars['webapp_artifact_sha256']}",
           "-var", f"artifact_version={role_vars['webapp_artifact_version']}",
           "-var", f"image_repository={PACKER_REPO}", "-var", f"image_tag={tag}", "packer/local.pkr.hcl"]
    try:
        seconds, _ = timed(cmd, env=env, cwd=project.root)
    finally:
        run(["podman", "rmi", "-f", f"{PACKER_REPO}:{tag}"]) if _exists(f"{PACKER_REPO}:{tag}") else None
    return seconds


def bare_bake(project: BenchProject, tag: str, role_vars: dict[str, str], mitogen: bool | None = None) -> float:
    """ansible-playbook + podman commit against a container booted beforehand (the boot is not timed).

    With the Ansible settings bake.py uses (mitogen too when bake.py would use it), so only bake.py's own work differs.
    """
    sys_path_project()
    from bakery.ansible import ansible_env, mitogen_env, mitogen_wanted, podman_inventory

    if mitogen is None:
        mitogen = mitogen_wanted()

    container = f"bakery-bench-bare-{os.getpid()}-{tag}"
    run(["podman", "run", "-d", "--name", container, "--systemd=always", "--hostname", f"{IMAGE}-bake",
         "--label", f"{BENCH_LABEL}=bare", BASE, "/sbin/init"])
    folder = project.root.parent / f"bare-{tag}"
    folder.mkdir()
    try:
        _wait_booted(container)
        inventory = podman_inventory(container, ["bakery_build", IMAGE.replace("-", "_")], mitogen=mitogen)
        (folder / "inventory.json").write_text(json.dumps(inventory))
        (folder / "vars.json").write_text(json.dumps({"bakery_image": IMAGE, "bakery_target": "local", **role_vars}))
        env = {**os.environ, **ansible_env(project.root), **(mitogen_env() if mitogen else {})}
        started = time.monotonic()
        run([str(ANSIBLE_PLAYBOOK), "-i", str(folder / "inventory.json"), "-e", f"@{folder / 'vars.json'}",
             str(project.root / "playbooks" / f"{IMAGE}.yml")], env=env, cwd=project.root)
        run(["podman", "commit", "-q", container, f"{BARE_REPO}:{tag}"], timeout=900)
        return time.monotonic() - started
    finally:
        run(["podman", "rm", "-f", "-t", "0", container])
        if _exists(f"{BARE_REPO}:{tag}"):
            run(["podman", "rmi", "-f", f"{BARE_REPO}:{tag}"])


def sys_path_project() -> None:
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def _exists(ref: str) -> bool:
    import subprocess

    return subprocess.run(["podman", "image", "exists", ref], check=False).returncode == 0


def _wait_booted(container: str, timeout: float = 90) -> None:
    import subprocess

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["podman", "exec", container, "systemctl", "is-system-running"],
                               capture_output=True, text=True, check=False).stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.3)
    raise SystemExit(f"bench: {container} did not boot")


def _contenders(skip: set[str]) -> list[str]:
    return [name for name in ("bake", "baseline", "packer", "bare") if name not in skip]


def cold_rounds(project: BenchProject, rounds: int, skip: frozenset[str] = frozenset(),
                baseline: Path | None = None) -> dict:
    """Alternate this checkout's cold bake, the baseline tree's (`baseline`: its bake.py), Packer and the bare run.

    The two bake.py runs swap places every round (ABBA), so drift hits both alike. Every time is kept, with
    this checkout's peak memory and, per bake of either, the part spent in its layers' playbooks.
    """
    if baseline is None:
        skip = skip | {"baseline"}
    role_vars = project.artifact_vars() if {"packer", "bare"} - skip else {}
    times: dict[str, list[float]] = {name: [] for name in _contenders(set(skip))}
    memory: list[Memory] = []
    versions: list[str] = []
    refs: dict[str, list[str]] = {"bake": [], "baseline": []}
    # the part of each cold bake spent in its layers' playbooks
    in_ansible: dict[str, list[float]] = {"bake": [], "baseline": []}
    for n in range(1, rounds + 1):
        order = _contenders(set(skip))
        if n % 2 == 0 and "baseline" in order:
            order[0], order[1] = order[1], order[0]
        for name in order:
            log(f"round {n}/{rounds}: {name}")
            if name in ("bake", "baseline"):
                seconds, mem, result = cold_bake(project, bake_py=baseline if name == "baseline" and baseline else BAKE)
                refs[name].append(result["ref"])
                in_ansible[name].append(sum(layer["seconds"] for layer in result["layers"]))
                if name == "bake":
                    memory.append(mem)
                    versions.append(result["version"])
            elif name == "packer":
                seconds = packer_bake(project, f"r{n}", role_vars)
            else:
                seconds = bare_bake(project, f"r{n}", role_vars)
            times[name].append(seconds)
            log(f"round {n}/{rounds}: {name} {seconds:.1f} s")
    return {"times": times, "memory": memory, "versions": versions, "refs": refs, "in_ansible": in_ansible}


def no_change(project: BenchProject, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        result = project.bake("build", IMAGE, "--json")
        if not bake_json(result)["reused"]:
            raise SystemExit("bench: a bake with nothing changed did not reuse the version")
        times.append(result.seconds)
    return times


def app_only(project: BenchProject, runs: int) -> tuple[list[float], list[str]]:
    """A changed app file, a new artifact, a bake: only the webapp layer may run."""
    times, versions = [], []
    for n in range(runs):
        project.change_app(f"{os.getpid()}-{n}")
        result = project.bake("build", IMAGE, "--json")
        data = bake_json(result)
        baked = [layer["role"] for layer in data["layers"] if not layer["cached"]]
        if baked != ["webapp"]:
            raise SystemExit(f"bench: an app-only change re-baked {baked}, expected only ['webapp']")
        times.append(result.seconds)
        versions.append(data["version"])
    return times, versions


def options(project: BenchProject) -> dict[str, tuple[float, str]]:
    """Each speed-up option measured once (not alternated, so indicative only): (seconds, image ref)."""
    found: dict[str, tuple[float, str]] = {}
    for name, env in (("no mitogen", {"BAKERY_MITOGEN": "0"}),
                      ("fact cache", fact_cache_env(project.root.parent / "facts"))):
        log(f"option: bake.py, {name}")
        seconds, _memory, result = cold_bake(project, env={**os.environ, **env})
        found[name] = (seconds, result["ref"])
        log(f"option: bake.py, {name}: {seconds:.1f} s")
    return found


if __name__ == "__main__":
    # Quick use: .venv/bin/python bench/bakes.py [rounds [skip...]] -> JSON on stdout (skip: baseline packer bare)
    import sys

    import verify_compare

    with BenchProject() as proj:
        run([str(PYTHON), str(REPO / "bake.py"), "--project", str(proj.root), "build-app"])
        leave_out = frozenset(sys.argv[2:])
        tree = (None if "baseline" in leave_out
                else verify_compare.baseline_tree(verify_compare.BASELINE, proj.root.parent))
        out = cold_rounds(proj, int(sys.argv[1]) if len(sys.argv) > 1 else 1, leave_out,
                          tree / "bake.py" if tree else None)
        out["no_change"] = no_change(proj, 3)
        out["app_only"] = app_only(proj, 1)
        print(json.dumps({**out, "memory": [vars(m) for m in out["memory"]],
                          "cold_median": median(out["times"]["bake"])}, indent=1))
