"""The podman command line, with its failures turned into bakery errors.

bakery talks to podman through its CLI (the same commands an operator would
type), so every call can be replayed by hand from the run log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from bakery.errors import ConfigError, OperationError

log = logging.getLogger("bakery.podman")

NO_SPACE_HINT = "no space left on device under podman's storage; free disk space or run: bake.py gc"


def run(*args: str, check: bool = True, timeout: float | None = 600,
        input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run `podman ARGS`; raise OperationError naming the command and podman's message on failure."""
    cmd = ["podman", *args]
    log.debug("$ %s", shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text, check=False)
    except FileNotFoundError as exc:
        raise ConfigError("podman is not installed; run: make setup") from exc
    except subprocess.TimeoutExpired as exc:
        raise OperationError(f"'{shlex.join(cmd[:3])}' did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        last = message[-1] if message else f"exit code {proc.returncode}"
        log.debug("podman failed (%s): %s", proc.returncode, proc.stderr.strip())
        if check:
            if "no space left on device" in (proc.stderr or "").lower():
                raise OperationError(NO_SPACE_HINT)
            raise OperationError(f"'{shlex.join(cmd[:3])}' failed: {last}")
    return proc


def systemd_state(name: str, timeout: float) -> str:
    """`systemctl is-system-running --wait` in container `name`: 'running', 'degraded', ... or '' when it never
    answered within `timeout` s.

    Right after `podman run -d`, PID 1 may not have opened its bus yet ("Failed to connect to bus": no answer),
    or not even marked the system as booted with systemd ("offline"); on a loaded machine that is seconds (a
    test container answered "offline" once in a full CI run). Such an answer is asked again until `timeout`,
    not taken as the boot's result.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        proc = run("exec", name, "systemctl", "is-system-running", "--wait", check=False, timeout=max(left, 1))
        state = proc.stdout.strip()
        not_up_yet = state == "offline" or (not state and "connect to bus" in proc.stderr)
        if not not_up_yet or time.monotonic() >= deadline:
            return state
        time.sleep(0.2)


def check_working() -> None:
    """Fail early, with a setup hint, when podman is missing or cannot run containers."""
    try:
        proc = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True,
                              text=True, timeout=60, check=False)
    except FileNotFoundError as exc:
        raise ConfigError("podman is not installed; run: make setup") from exc
    except subprocess.TimeoutExpired as exc:
        raise ConfigError("podman does not answer (podman info timed out); check the podman installation") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise ConfigError(f"podman is not working ({last}); run: make setup")


@contextlib.contextmanager
def setup_hint_if_broken() -> Iterator[None]:
    """For podman commands run before check_working (which costs 0.3 s, too much for a no-change rebake): a
    failure from a podman that does not work at all is said as check_working says it, with the setup hint."""
    try:
        yield
    except OperationError:
        check_working()
        raise


def image_exists(ref: str) -> bool:
    return run("image", "exists", ref, check=False).returncode == 0


def container_exists(name: str) -> bool:
    return run("container", "exists", name, check=False).returncode == 0


def image_inspect(ref: str) -> dict[str, Any] | None:
    proc = run("image", "inspect", ref, check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return data[0] if data else None


def bare_id(image_id: str | None) -> str:
    """An image id as `podman images` prints it (no `sha256:`): ids bakery recorded carry the prefix."""
    return (image_id or "").removeprefix("sha256:")


def image_id(ref: str) -> str | None:
    info = image_inspect(ref)
    return None if info is None else "sha256:" + bare_id(info["Id"])


def images_with_label(label: str) -> list[dict[str, Any]]:
    proc = run("images", "--filter", f"label={label}", "--format", "json")
    return json.loads(proc.stdout or "[]")


def containers_with_label(label: str) -> list[dict[str, Any]]:
    proc = run("ps", "-a", "--filter", f"label={label}", "--format", "json")
    return json.loads(proc.stdout or "[]")


def remove_container(name: str) -> None:
    """Remove at once: the default stop timeout would wait 10 s for SIGTERM."""
    run("rm", "-f", "-t", "0", name, check=False)


def remove_image(ref: str) -> bool:
    return run("rmi", ref, check=False).returncode == 0


RMI_BATCH = 100  # images per `podman rmi` call


def remove_images(refs: list[str]) -> None:
    """`podman rmi` of names or ids, in batches, in the order given (never --force: podman keeps an image a
    container uses; the caller lists what is still there)."""
    for start in range(0, len(refs), RMI_BATCH):
        proc = run("rmi", "--ignore", *refs[start:start + RMI_BATCH], check=False)
        if proc.returncode != 0:
            log.info("podman kept some images: %s", " ".join(proc.stderr.split())[:500])


def remove_images_by_id(ids: list[str]) -> set[str]:
    """remove_images by id; the ids still present afterwards (bare)."""
    remove_images(ids)
    if not ids:
        return set()
    return {bare_id(image["Id"]) for image in json.loads(run("images", "-a", "--format", "json").stdout or "[]")}


def remove_image_of_run(ref: str, run_id: str) -> bool:
    """Remove the image at `ref` only if bake `run_id` made it (its io.bakery.run label): a version a failed or
    killed bake reserved but never tagged may since be another checkout's image under the same name."""
    info = image_inspect(ref)
    labels = ((info or {}).get("Config") or {}).get("Labels") or (info or {}).get("Labels") or {}
    if info is None or labels.get("io.bakery.run") != run_id:
        return False
    return run("rmi", info["Id"], check=False).returncode == 0  # by id: the name may move meanwhile


def dockerfile_quote(value: str) -> str:
    """Quote a value for a `--change LABEL k=v` instruction (Dockerfile syntax)."""
    return json.dumps(value, ensure_ascii=False)


IMAGE_REPO = "localhost/bakery"


def image_ref(image: str, version: str) -> str:
    """Where a baked version lives in podman's storage."""
    return f"{IMAGE_REPO}/{image}:{version}"


def cache_ref(image: str, role: str, key: str) -> str:
    """Where a cached role layer lives; the tag carries the key so it is found by it."""
    return f"{IMAGE_REPO}-cache/{image}:{role[:40]}-{key.removeprefix('sha256:')[:24]}"
