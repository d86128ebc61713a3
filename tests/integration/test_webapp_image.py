"""The example image as a user gets it: build-app, build webapp, boot it offline, read runtime config."""

from __future__ import annotations

import json
import os
import time

import pytest

from bakery import podman
from tests.conftest import bake

pytestmark = pytest.mark.integration


def boot(ref: str, name: str, *args: str) -> str:
    podman.run("run", "-d", "--name", name, "--systemd=always", *args, ref, "/sbin/init")
    return podman.systemd_state(name, 120)


def inside(name: str, path: str) -> tuple[int, dict]:
    code = ("import json,urllib.request,urllib.error\n"
            f"try:\n r=urllib.request.urlopen('http://127.0.0.1:8080{path}',timeout=3); "
            "print(r.status, r.read().decode())\n"
            "except urllib.error.HTTPError as e: print(e.code, e.read().decode())")
    out = podman.run("exec", name, "python3", "-c", code, check=False).stdout.strip()
    status, _, body = out.partition(" ")
    return int(status or 0), (json.loads(body) if body.startswith("{") else {})


def test_offline_instance_boots_and_serves_health_within_10_seconds(webapp_image):
    name = f"bakery-test-offline-{os.getpid()}"
    try:
        started = time.monotonic()
        podman.run("run", "-d", "--name", name, "--systemd=always", "--network", "none", webapp_image["ref"],
                   "/sbin/init")
        status = 0
        while time.monotonic() - started < 10 and status != 200:
            status, _ = inside(name, "/health")
            time.sleep(0.2)
        assert status == 200, "no /health 200 within 10 s with no network"
        state = podman.systemd_state(name, 120)
        failed = podman.run("exec", name, "systemctl", "--failed", "--no-legend", check=False).stdout
        assert state == "running", failed
    finally:
        podman.remove_container(name)


def test_runtime_config_for_qa_shows_in_version(webapp_image, tmp_path):
    env_file = tmp_path / "runtime.env"
    env_file.write_text("ENVIRONMENT=qa\nLOG_LEVEL=info\n")
    name = f"bakery-test-qa-{os.getpid()}"
    try:
        assert boot(webapp_image["ref"], name, "--network", "none",
                    "-v", f"{env_file}:/etc/bakery/launch/runtime.env:ro,Z") == "running"
        status, version = inside(name, "/version")
        assert status == 200
        assert version["environment"] == "qa"
        assert version["git_commit"] == webapp_image["provenance"]["git_commit"]
        assert version["image_version"] == webapp_image["version"]
    finally:
        podman.remove_container(name)


def test_nothing_secret_or_superfluous_is_baked(webapp_image):
    ref = webapp_image["ref"]

    def sh(command: str) -> str:
        return podman.run("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", ref, "-c", command).stdout

    assert sh("ls /etc/ssh/ssh_host_* 2>/dev/null || true").strip() == ""
    assert sh("find /var/lib/apt/lists /var/cache/apt -type f ! -name lock").strip() == ""
    assert sh("command -v gcc cc g++ || true").strip() == ""
    hashes = [line.split(":")[0] for line in sh("cat /etc/shadow").splitlines() if line.split(":")[1].startswith("$")]
    assert hashes == []
    # No user key pair at all, and no private key in any key or certificate file. CA bundles (certifi's and
    # botocore's cacert.pem) are public certificates and belong in the image.
    assert sh("find / -xdev \\( -name 'id_rsa*' -o -name 'id_ed25519*' -o -name 'id_ecdsa*' \\) -type f 2>/dev/null "
              "|| true").strip() == ""
    assert sh("find / -xdev -type f \\( -name '*.pem' -o -name '*.key' -o -name '*.p8' \\) 2>/dev/null "
              "| xargs -r grep -l -e 'PRIVATE KEY-----' 2>/dev/null || true").strip() == ""


def test_app_only_change_rebakes_only_the_webapp_layer(webapp_image, example_project):
    from tests.integration.conftest import record_bake_run

    init = example_project / "app" / "webapp" / "__init__.py"
    original = init.read_text()
    try:
        init.write_text(original + "\n# a change to the application only\n")
        assert bake(example_project, "build-app").rc == 0
        out = bake(example_project, "build", "webapp", "--json", timeout=1200)
        assert out.rc == 0, out.stderr
        record_bake_run(out.json["run_id"])
        assert [layer["role"] for layer in out.json["layers"] if not layer["cached"]] == ["webapp"]
    finally:
        init.write_text(original)
        assert bake(example_project, "build-app").rc == 0
