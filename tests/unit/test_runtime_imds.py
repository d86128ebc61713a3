"""Review 14b finding 7: the applier reads EC2 UserData through IMDSv2, and only a 404 on user-data (or no IMDS
at all: nothing listens) means "no runtime config". Anything else is retried, then the unit fails without
writing /run/bakery/runtime.env. A real HTTP server on 127.0.0.1 stands in for IMDS; the applier runs as the
unit runs it (a subprocess).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

APPLIER = REPO / "roles" / "base" / "files" / "bakery-runtime-config"


class FakeImds:
    """IMDSv2 as far as the applier uses it: PUT /latest/api/token, then GET /latest/user-data with the token.
    `answers` is a list of (token status, user-data status, body), one per attempt; the last one repeats."""

    def __init__(self, answers: list[tuple[int, int, bytes]]):
        self.answers, self.attempts, self.gets = answers, 0, 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                token_status = fake.answers[min(fake.attempts, len(fake.answers) - 1)][0]
                fake.attempts += 1
                ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                self._answer(token_status if ok else 400, b"tok" if token_status == 200 else b"")

            def do_GET(self):
                _, status, body = fake.answers[min(fake.attempts - 1, len(fake.answers) - 1)]
                fake.gets += 1
                if self.path != "/latest/user-data" or self.headers.get("X-aws-ec2-metadata-token") != "tok":
                    status, body = 401, b""
                self._answer(status, body if status == 200 else b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/latest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def imds():
    servers: list[FakeImds] = []

    def start(*answers: tuple[int, int, bytes]) -> FakeImds:
        servers.append(FakeImds(list(answers)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def run(tmp_path: Path, url: str, budget: str = "4") -> tuple[subprocess.CompletedProcess, Path, float]:
    target = tmp_path / "run" / "runtime.env"
    env = {"PATH": os.environ["PATH"], "BAKERY_LAUNCH_FILE": str(tmp_path / "absent.env"),
           "BAKERY_RUNTIME_FILE": str(target), "BAKERY_IMDS_URL": url, "BAKERY_IMDS_RETRY_SECONDS": budget}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(APPLIER)], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert "Traceback" not in proc.stdout + proc.stderr and len((proc.stdout + proc.stderr).splitlines()) == 1
    return proc, target, time.monotonic() - started


def test_user_data_is_applied(tmp_path, imds):
    fake = imds((200, 200, b'ENVIRONMENT="qa"\n'))
    proc, target, _ = run(tmp_path, fake.url)
    assert proc.returncode == 0 and target.read_text() == 'ENVIRONMENT="qa"\n'
    assert "applied 1 keys from EC2 UserData" in proc.stdout


def test_a_404_on_user_data_means_none(tmp_path, imds):
    fake = imds((200, 404, b""))
    proc, target, _ = run(tmp_path, fake.url)
    assert proc.returncode == 0 and target.read_text() == "" and "no runtime config delivered" in proc.stdout
    assert fake.attempts == 1


def test_no_imds_listening_means_none(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: connection refused, as off EC2
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc, target, _ = run(tmp_path, f"http://127.0.0.1:{port}/latest")
    assert proc.returncode == 0 and target.read_text() == ""


@pytest.mark.parametrize("answer", [(200, 500, b""), (403, 200, b""), (200, 403, b"")],
                         ids=["user-data-500", "token-403", "user-data-403"])
def test_any_other_failure_is_retried_then_fails_without_writing(tmp_path, imds, answer):
    fake = imds(answer)
    proc, target, took = run(tmp_path, fake.url, budget="3")
    assert proc.returncode == 1 and not target.exists() and not Path(f"{target}.tmp").exists()
    assert proc.stdout.startswith("bakery-runtime-config: cannot read EC2 UserData from IMDS after ")
    assert fake.attempts >= 2 and 2.5 <= took < 20


def test_a_transient_failure_is_retried_until_it_answers(tmp_path, imds):
    fake = imds((200, 500, b""), (503, 200, b""), (200, 200, b"A=1\n"))
    proc, target, _ = run(tmp_path, fake.url, budget="20")
    assert proc.returncode == 0 and target.read_text() == 'A="1"\n' and fake.attempts == 3


def test_a_timeout_is_retried_then_fails(tmp_path):
    with socket.socket() as sock:  # accepts connections (backlog) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        proc, target, took = run(tmp_path, f"http://127.0.0.1:{sock.getsockname()[1]}/latest", budget="3")
    assert proc.returncode == 1 and not target.exists() and took >= 2.5
