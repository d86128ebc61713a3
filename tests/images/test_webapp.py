"""The webapp image's own checks, run by `bake.py verify` on a throwaway instance of exactly that version.

The roles' Molecule tests run there too; this suite checks what only the whole
image can show: its provenance, its runtime config, and what listens.
"""

import json
import os

# Not collected by `make test` (pyproject's testpaths): bake.py verify runs this file through testinfra
# against an instance and sets BAKERY_VERIFY_IMAGE, _VERSION, _COMMIT and _ENV.

PROBE = ("import sys,urllib.request\nr=urllib.request.urlopen(sys.argv[1],timeout=5)\n"
         "print(r.status)\nprint(r.read().decode())")


def get(host, path):
    out = host.run(f"python3 -c '{PROBE}' http://127.0.0.1:8080{path}")
    assert out.rc == 0, out.stderr
    status, _, body = out.stdout.partition("\n")
    return int(status), body


def test_image_release_matches_the_version_under_verification(host):
    release = host.file("/etc/image-release").content_string
    assert f'IMAGE_VERSION="{os.environ["BAKERY_VERIFY_VERSION"]}"' in release
    assert f'GIT_COMMIT="{os.environ["BAKERY_VERIFY_COMMIT"]}"' in release


def test_no_unit_failed_at_boot(host):
    assert host.run("systemctl --failed --no-legend --plain").stdout.strip() == ""


def test_health_and_version_report_this_image_and_environment(host):
    status, _ = get(host, "/health")
    assert status == 200
    status, body = get(host, "/version")
    version = json.loads(body)
    assert version["image_version"] == os.environ["BAKERY_VERIFY_VERSION"]
    assert version["git_commit"] == os.environ["BAKERY_VERIFY_COMMIT"]
    assert version["environment"] == os.environ["BAKERY_VERIFY_ENV"]


def break_glass_opened(host) -> bool:
    """This boot's runtime config opened break-glass SSH (verify --vm does, to reach the VM)."""
    runtime = host.file("/run/bakery/runtime.env")
    return runtime.exists and 'BREAK_GLASS_SSH="true"' in runtime.content_string.splitlines()


def test_only_the_app_listens(host):
    """Beyond loopback (a VM's systemd-resolved stub answers on 127.0.0.53/54 only)."""
    addresses = [s.removeprefix("tcp://") for s in host.socket.get_listening_sockets() if s.startswith("tcp://")]
    exposed = {a.rsplit(":", 1)[1] for a in addresses if not a.startswith(("127.", "::1", "[::1]"))}
    assert exposed == {"8080"} | ({"22"} if break_glass_opened(host) else set()), addresses


def test_terminal_access_is_off(host):
    """Unless this boot's runtime config opened break-glass SSH."""
    opened = break_glass_opened(host)
    assert host.service("ssh").is_running == opened
    assert host.socket("tcp://0.0.0.0:22").is_listening == opened
