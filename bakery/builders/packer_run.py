"""Running `packer build` and reading what it leaves: its machine-readable output, the manifest, the testinfra report.

Kept apart from the bake itself (bakery.builders.packer_bake) because this is
all about Packer's own formats: which output line is a step, an ansible task or
the error that ended the build, where the AMI ids are, and how a pending signal
reaches Packer so that it cleans up after itself.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from bakery.errors import OperationError
from bakery.progress import Progress
from bakery.signals import Cancellation

# What Packer announces while it cleans up after a failure: never the step that failed.
CLEANUP_STEPS = ("Deleting temporary", "No volumes to clean up", "Terminating the source", "Cleaning up",
                 "Deregistering the AMI")
# Packer's summaries and waits: not a step of the build either.
_NOT_A_STEP = ("Provisioning step had errors", "Some builds didn't", "Wait completed", "Builds finished",
               *CLEANUP_STEPS)


@dataclass
class PackerFailure:
    """What Packer's output said went wrong: the last step it announced and its error lines."""

    step: str = "starting packer"
    error: str = ""
    # the first fatal line of a provisioner (ansible's FAILED! task), more telling than Packer's summary
    detail: str = ""
    task: str = ""  # the ansible task running when it failed

    def describe(self, rc: int) -> str:
        return "; ".join(part for part in (self.detail, self.error) if part) or f"exit code {rc}"


def parse_manifest(path: Path) -> dict[str, str]:
    """AMI ids per region from the manifest post-processor's file: the last build of the last Packer run.

    A manifest accumulates builds across runs; `last_run_uuid` names the run
    that wrote it last, and its `artifact_id` reads "us-east-1:ami-1,eu-west-1:ami-2".
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OperationError(f"packer finished but wrote no manifest at {path}; "
                             "check the template's manifest post-processor") from exc
    except json.JSONDecodeError as exc:
        raise OperationError(f"{path}: packer manifest is not JSON ({exc})") from exc
    builds = data.get("builds") or []
    run = data.get("last_run_uuid")
    mine = [b for b in builds if b.get("packer_run_uuid") == run] if run else builds
    if not mine:
        raise OperationError(f"{path}: no build of packer run {run} in the manifest")
    found: dict[str, str] = {}
    for part in str(mine[-1].get("artifact_id", "")).split(","):
        region, sep, ami = part.strip().partition(":")
        if not sep or not ami.startswith("ami-"):
            raise OperationError(f"{path}: artifact_id entry '{part}' is not REGION:AMI-ID")
        found[region] = ami
    return found


def packer_env() -> dict[str, str]:
    """Packer's environment: ansible-playbook and pytest of bakery's own virtual environment first on PATH
    (the provisioners and packer/testinfra.sh find them there), no colour, no update check."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "PACKER_NO_COLOR": "1", "CHECKPOINT_DISABLE": "1"}


def read_junit(path: Path) -> tuple[bool, str]:
    """Whether a pytest JUnit report passed (at least one test, none failed), and its counts in words."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        return False, f"unreadable report ({exc})"
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('name')}" for s in suites for case in s.findall("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    ran = total["tests"] - total["skipped"]
    bad = total["failures"] + total["errors"]
    words = f"{ran - bad} passed, {bad} failed, {total['skipped']} skipped"
    if failed:
        words += ": " + ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
    return ran > 0 and not failed and not total["failures"] and not total["errors"], words


def unescape_machine_readable(data: str) -> str:
    """Packer's -machine-readable escapes commas and newlines inside a field."""
    return data.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").replace("\\r", "")


def read_output_line(line: str, failure: PackerFailure) -> str | None:
    """One line of `packer build -machine-readable`: the message to show (None for non-ui lines).

    Remembers on `failure` the last step Packer announced before it failed, the
    ansible task and fatal line if a provisioner failed, and Packer's error.
    """
    fields = line.split(",", 4)
    if len(fields) < 4 or fields[2] != "ui":
        return None
    kind, message = fields[3], unescape_machine_readable(fields[4] if len(fields) > 4 else "").strip()
    if not message:
        return None
    text = re.sub(r"^(==>|-->)? ?[\w.-]+\.[\w.-]+: ", "", message)  # without the "amazon-ebs.image: " prefix
    if kind == "error":
        cause = re.match(r"^Build '[^']+' errored after [^:]+: (.*)", message, re.S)
        if cause:  # Packer's own summary of why the build failed
            failure.error = " ".join(cause.group(1).split())[:500]
        elif not failure.error:  # else the first error: cleanup steps and summaries follow it
            failure.error = " ".join(text.splitlines()[0].split())[:500]
    elif (task := re.search(r"TASK \[(.+?)\]", text)) and not failure.detail:
        failure.task = task.group(1)
    elif not failure.detail and ("fatal:" in text or "FAILED!" in text):  # ansible's failed task
        failure.detail = (f"task '{failure.task}': " if failure.task else "") + " ".join(text.split())[:500]
    elif not failure.detail and text.startswith("FAILED "):  # pytest's summary of a failed testinfra test
        failure.detail = "testinfra " + " ".join(text.split())[:500]
    elif message.startswith("==> ") and not failure.error:
        announced = message.removeprefix("==> ").split(": ", 1)[-1].strip()
        if not announced.startswith(_NOT_A_STEP):
            failure.step = announced
    return message


def output_lines(proc: subprocess.Popen) -> Iterator[str | None]:
    """Packer's output line by line, and None every second of silence so a pending signal is seen in time."""
    assert proc.stdout is not None
    fd, pending = proc.stdout.fileno(), b""
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            yield None
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        yield from (line.decode("utf-8", "replace") for line in complete)
    if pending:
        yield pending.decode("utf-8", "replace")


def show_line(progress: Progress, line: str, step: str, failure: PackerFailure) -> None:
    """One output line as progress: Packer's steps count on the live status line, every message is a note."""
    message = read_output_line(line, failure)
    if message is None:
        return
    if message.startswith("==> "):  # one of Packer's steps: what the live status line counts
        progress.task_done(step, message.removeprefix("==> ")[:120], changed=False)
    progress.note(message)


def stream_packer(cmd: list[str], *, cwd: Path, log_path: Path, cancel: Cancellation, progress: Progress,
                  step: str) -> tuple[int, PackerFailure]:
    """Run Packer to its end, its output logged and shown; a signal asks it to stop once. Its exit code, what failed."""
    failure = PackerFailure()
    cancel.deferred = True  # a signal now asks Packer to stop: it terminates its instance and deregisters what it made
    try:
        with open(log_path, "w", encoding="utf-8") as logfile, subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=packer_env(), cwd=cwd,
                start_new_session=True) as proc:  # its own session: one Ctrl-C reaches bake.py, which forwards it once
            stopping = False
            for line in output_lines(proc):
                if line is not None:
                    logfile.write(line + "\n")
                    show_line(progress, line, step, failure)
                if cancel.requested and not stopping:
                    stopping = True
                    progress.note(f"{cancel.signal_name}: asking packer to stop; "
                                  "it terminates its instance and cleans up")
                    proc.send_signal(signal.SIGINT)
            return proc.wait(), failure
    finally:
        cancel.deferred = False
