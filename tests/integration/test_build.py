"""The bake engine end to end: real podman, real ansible-runner, the fixture project."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from bakery import podman
from bakery.builders.tag_lock import image_tags_locked
from bakery.catalog import open_catalog
from tests.conftest import BAKE, bake, git, machine_lock
from tests.integration.conftest import containers, image_ids, image_labels, remove_images, run_instance, wait_for

pytestmark = pytest.mark.integration


def ran_roles(result) -> list[str]:
    return [layer["role"] for layer in result["layers"] if not layer["cached"]]


def read_file(ref: str, path: str) -> str:
    return podman.run("run", "--rm", ref, "cat", path).stdout


def creates_since(since: str) -> list[str]:
    out = podman.run("events", "--since", since, "--until", "0s", "--filter", "event=create",
                     "--format", "{{.Name}}").stdout
    return out.split()


@pytest.fixture
def cleanup_images():
    refs = []
    yield refs
    for ref in refs:
        podman.remove_image(ref)


def test_cold_bake_boots_and_carries_provenance(project, cleanup_images):
    out = bake(project, "build", "sample", "--json")
    assert out.rc == 0, out.stderr
    result = out.json
    cleanup_images.append(result["ref"])
    assert result["status"] == "built" and ran_roles(result) == ["first", "second"]
    commit = git(project, "rev-parse", "HEAD")
    assert result["provenance"]["git_commit"] == commit

    name = f"bakery-test-boot-{os.getpid()}"
    try:
        assert run_instance(result["ref"], name) == "running"
        release = podman.run("exec", name, "cat", "/etc/image-release").stdout
        assert f'GIT_COMMIT="{commit}"' in release
        assert f'IMAGE_VERSION="{result["version"]}"' in release
        assert podman.run("exec", name, "cat", "/etc/first-greeting").stdout == "hello from the first role\n"
        assert podman.run("exec", name, "cat", "/etc/second-handler").stdout == "handler ran\n"
        # build-time identity is not baked: every instance gets its own machine-id
        assert podman.run("exec", name, "cat", "/etc/machine-id").stdout.strip()
    finally:
        podman.remove_container(name)
    assert read_file(result["ref"], "/etc/machine-id") == ""

    labels = image_labels(result["ref"])
    assert labels["org.opencontainers.image.revision"] == commit
    assert labels["io.bakery.version"] == result["version"]
    assert labels["io.bakery.build"] == ""
    # the version and each of its cached layers name this checkout, whose catalog lists them: not orphans
    layers = open_catalog(project / ".bakery").layers()
    assert len(layers) == 2 and labels["io.bakery.checkout"] == str(project.resolve())
    assert {image_labels(layer["image_id"])["io.bakery.checkout"] for layer in layers} == {str(project.resolve())}
    orphaned = {e["id"] for e in bake(project, "gc", "--orphans", "--dry-run", "--json").json["orphans"]["images"]}
    assert orphaned.isdisjoint({result["image_id"].removeprefix("sha256:"),
                                *(layer["image_id"].removeprefix("sha256:") for layer in layers)})

    # run artifacts are kept
    run_dir = project / ".bakery" / "runs" / result["run_id"]
    assert (run_dir / "result.json").is_file() and (run_dir / "build.log").is_file()
    assert (run_dir / "ansible" / "artifacts" / "02-second" / "stdout").is_file()

    # show and images read it back
    shown = bake(project, "show", f"sample:{result['version']}", "--json").json
    assert [layer["role"] for layer in shown["layers"]] == ["first", "second"]
    assert shown["provenance"]["git_message"] == "Initial commit of the test project"
    listed = bake(project, "images", "--json").json
    assert [row["version"] for row in listed] == [result["version"]]

    # no change: no container, same version (its time is measured in bench/: a timed assertion fails on a busy
    # machine, e.g. beside make test's other integration worker)
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    again = bake(project, "build", "sample", "--json")
    assert again.rc == 0, again.stderr
    assert again.json["status"] == "reused" and again.json["version"] == result["version"]
    assert not [n for n in creates_since(since) if n.startswith("bakery-build-sample")]


@pytest.mark.parametrize("path, content, check_file, expected", [
    ("roles/second/templates/color.j2", "colour={{ second_color }}\n", "/etc/second-color", "colour=blue\n"),
    ("roles/second/defaults/main.yml", "---\nsecond_color: red\n", "/etc/second-color", "color=red\n"),
    ("roles/second/files/payload.txt", "payload version 2\n", "/etc/second-payload", "payload version 2\n"),
], ids=["template", "variable", "file"])
def test_a_change_in_the_last_role_reruns_only_that_role(project, cleanup_images, path, content, check_file, expected):
    first = bake(project, "build", "sample", "--json")
    assert first.rc == 0, first.stderr
    cleanup_images.append(first.json["ref"])
    (project / path).write_text(content)
    second = bake(project, "build", "sample", "--json")
    assert second.rc == 0, second.stderr
    cleanup_images.append(second.json["ref"])
    assert ran_roles(second.json) == ["second"]
    assert second.json["version"] > first.json["version"]
    assert second.json["provenance"]["git_dirty"] is True
    assert read_file(second.json["ref"], check_file) == expected


def test_extra_vars_invalidate_and_no_cache_reruns_everything(project, cleanup_images):
    first = bake(project, "build", "sample", "--json", "-e", "second_color=green")
    assert first.rc == 0, first.stderr
    cleanup_images.append(first.json["ref"])
    assert read_file(first.json["ref"], "/etc/second-color") == "color=green\n"
    full = bake(project, "build", "sample", "--json", "--no-cache", "-e", "second_color=green")
    assert full.rc == 0, full.stderr
    cleanup_images.append(full.json["ref"])
    assert ran_roles(full.json) == ["first", "second"] and full.json["version"] != first.json["version"]


def test_failing_role_registers_nothing_and_leaves_nothing(project):
    out = bake(project, "build", "failing")
    assert out.rc == 1
    assert "role 'boom'" in out.stderr and "task 'Fail on purpose'" in out.stderr
    assert "this role fails on purpose" in out.stderr
    assert "Traceback" not in out.stderr
    assert bake(project, "images", "--json").json == []
    assert not containers("io.bakery.image=failing")
    assert not list((project / "playbooks").glob(".bakery-*"))


def test_a_task_that_never_returns_fails_the_bake_at_the_task_timeout(project):
    # The project's ansible.cfg decides (bakery's default of an hour applies only when neither it nor the
    # environment sets one: tests/unit/test_task_timeout.py); mitogen's strategy must honour it too.
    (project / "ansible.cfg").write_text("[defaults]\ntask_timeout = 20\n")
    (project / "roles" / "hang" / "tasks").mkdir(parents=True)
    (project / "roles" / "hang" / "tasks" / "main.yml").write_text(
        "- name: Wait for ever\n  ansible.builtin.command: sleep 900\n  changed_when: false\n")
    (project / "playbooks" / "hanging.yml").write_text(
        "- name: Bake an image whose second role never ends\n  hosts: all\n  gather_facts: false\n"
        "  roles:\n    - first\n    - hang\n")
    started = time.monotonic()
    out = bake(project, "build", "hanging", timeout=300)
    assert out.rc == 1 and time.monotonic() - started < 200, out.stderr
    assert "role 'hang'" in out.stderr and "task 'Wait for ever'" in out.stderr, out.stderr
    assert "Timed out after 20 second(s). (the task's time limit is 20 s: " in out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert bake(project, "images", "--json").json == []
    assert not containers("io.bakery.image=hanging")
    assert not list((project / "playbooks").glob(".bakery-*"))


def test_keep_on_failure_keeps_the_container_and_says_how_to_enter(project):
    out = bake(project, "build", "failing", "--keep-on-failure")
    kept = containers("io.bakery.image=failing")
    try:
        assert out.rc == 1
        assert len(kept) == 1 and f"podman exec -it {kept[0]} bash" in out.stderr
        # its bake is gone, but it is no leftover: no bake (in any checkout) or gc removes it from under its user
        assert kept[0].endswith("-kept")
        assert bake(project, "gc", "--json").json["containers"] == []
        assert containers("io.bakery.image=failing") == kept
    finally:
        for name in kept:
            podman.remove_container(name)


def test_two_concurrent_bakes_get_distinct_versions(project, cleanup_images):
    procs = [subprocess.Popen([sys.executable, str(BAKE), "--project", str(project), "build", "sample", "--no-cache",
                               "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    results = []
    for proc, (stdout, stderr) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout))
    cleanup_images.extend(r["ref"] for r in results)
    assert results[0]["version"] != results[1]["version"]
    for result in results:
        assert podman.image_exists(result["ref"])
        assert image_labels(result["ref"])["io.bakery.version"] == result["version"]
    listed = {row["version"] for row in bake(project, "images", "--json").json}
    assert listed == {r["version"] for r in results}


def test_a_bake_waits_for_the_host_image_tag_lock_and_says_so(project, cleanup_images):
    """Another checkout holding the lock (between its version's reservation and its tag): this bake does its
    work, then waits before it picks a version, and tags once the lock is free."""
    first = bake(project, "build", "sample", "--json")  # the layers, cached: the next bake only finalizes
    assert first.rc == 0, first.stderr
    cleanup_images.append(first.json["ref"])
    (project / "roles" / "second" / "files" / "payload.txt").write_text("payload version 5\n")
    with image_tags_locked():
        proc = subprocess.Popen([sys.executable, str(BAKE), "--project", str(project), "build", "sample", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waited = []
        for line in proc.stderr:
            waited.append(line)
            if "waiting for another bake on this host to tag its image" in line:
                break
        assert proc.poll() is None, "".join(waited)
        time.sleep(1)
        assert proc.poll() is None
        # nothing reserved or tagged while the lock is held
        assert [row["version"] for row in bake(project, "images", "--json").json] == [first.json["version"]]
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    second = json.loads(stdout)
    cleanup_images.append(second["ref"])
    assert second["version"] != first.json["version"] and podman.image_exists(second["ref"])


def start_bake(project):
    return subprocess.Popen([sys.executable, str(BAKE), "--project", str(project), "build", "sample", "--no-cache"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_mid_bake_removes_the_container_and_registers_nothing(project):
    proc = start_bake(project)
    wait_for(lambda: containers("io.bakery.image=sample") and containers(f"io.bakery.build.pid={proc.pid}"))
    time.sleep(1.5)  # let ansible start on the first role
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted by SIGTERM" in stderr
    assert not containers(f"io.bakery.build.pid={proc.pid}")
    assert bake(project, "images", "--json").json == []
    assert not list((project / "playbooks").glob(".bakery-*"))


def test_sigkill_leftovers_are_removed_by_gc(project):
    with machine_lock("leftovers"):  # no other worker's bake removes the dead bake's container before gc does
        proc = start_bake(project)
        wait_for(lambda: containers(f"io.bakery.build.pid={proc.pid}"))
        proc.kill()
        proc.wait()
        assert containers(f"io.bakery.build.pid={proc.pid}")
        dry = bake(project, "gc", "--dry-run", "--json")
        assert dry.rc == 0 and dry.json["containers"]
        assert containers(f"io.bakery.build.pid={proc.pid}")
        out = bake(project, "gc")
    assert out.rc == 0 and "removed container" in out.stdout
    assert not containers(f"io.bakery.build.pid={proc.pid}")
    after = bake(project, "gc", "--json").json
    assert after["containers"] == [] and after["processes"] == []


def test_another_checkout_baking_the_same_layers_does_not_break_this_cache(project, tmp_path, cleanup_images):
    first = bake(project, "build", "sample", "--json")
    assert first.rc == 0, first.stderr
    cleanup_images.append(first.json["ref"])
    other = tmp_path / "other-checkout"
    shutil.copytree(project, other, ignore=shutil.ignore_patterns(".bakery"))
    theirs = bake(other, "build", "sample", "--json")  # same keys: takes over the cache tags
    assert theirs.rc == 0, theirs.stderr
    assert theirs.json["version"] != first.json["version"]  # never the same tag as this checkout's version
    # a failed or killed bake of theirs removes its own image only, never this checkout's under a reused name
    assert not podman.remove_image_of_run(first.json["ref"], theirs.json["run_id"])
    assert podman.image_exists(first.json["ref"])
    assert podman.remove_image_of_run(theirs.json["ref"], theirs.json["run_id"])
    assert not podman.image_exists(theirs.json["ref"])
    theirs_ids = image_ids(f"io.bakery.run={theirs.json['run_id']}")
    assert theirs_ids and not remove_images(theirs_ids)  # the other checkout cleans up after itself
    assert podman.image_exists(first.json["ref"])
    (project / "roles/second/files/payload.txt").write_text("payload version 3\n")
    again = bake(project, "build", "sample", "--json")
    assert again.rc == 0, again.stderr
    cleanup_images.append(again.json["ref"])
    assert ran_roles(again.json) == ["second"]
