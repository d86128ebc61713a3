"""Peak memory of bake.py during a deploy: a two-instance environment of the bench copy, deployed and taken down."""

from __future__ import annotations

import shutil

from common import IMAGE, BenchProject, Memory
from rollout import STRATEGIES, write_env


def deploy_memory(project: BenchProject, version: str) -> tuple[float, Memory]:
    name = "bench-memory"
    write_env(project.root, name, 2, STRATEGIES["surge"], IMAGE)
    try:
        result = project.bake("deploy", f"{IMAGE}:{version}", "--env", name, "--json")
        return result.seconds, result.memory
    finally:
        project.bake("down", "--env", name)
        shutil.rmtree(project.root / "inventories" / name, ignore_errors=True)
