"""`bake.py verify`: the exact image version proves itself on throwaway instances before it may be deployed.

Two instances boot the image the way production does (systemd as PID 1, the
runtime config mounted read-only where the launch puts it): one with a network,
which runs the image's testinfra suite and the testinfra tests of every role in
it, and one with no network at all, which must still reach `running` and pass
the health check (nothing may be installed or fetched at boot). Every layer
the bake committed above the base is scanned for secrets, and the image's
packages are listed against the base. The testinfra run goes on in the background (over one exec
session per instance) while the offline checks, the scan and the package list are made; the report lists
the checks in the same order either way. Reports go to .bakery/runs/<run-id>/; the outcome goes to
the catalog, where deploy and promote look for it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery import podman
from bakery.catalog import Catalog
from bakery.config import Project
from bakery.errors import ConfigError, OperationError
from bakery.params.local_store import LocalStore
from bakery.params.service import local_root
from bakery.progress import Progress
from bakery.provenance import utc_now
from bakery.runs import Run
from bakery.signals import TimeLimitExceeded, cancellable, time_limit
from bakery.verify import apt_leftovers, image_layers, junit, packages, secrets, testinfra_run
from bakery.verify.role_tests import project_role_tests, third_party_role_tests

log = logging.getLogger("bakery.verify")

BOOT_TIMEOUT = 120
HEALTH_TIMEOUT = 30
VERIFY_LABEL = "io.bakery.verify"
ALLOWLIST_FILE = "verify-allowlist.yml"
# The example image's layers scan in about 4 s; content made to slow the detectors down must not hold the gate open.
SCAN_TIMEOUT = 900.0


def scan_timeout() -> float:
    """BAKERY_SCAN_TIMEOUT (seconds) when it is a positive number, else the default."""
    try:
        seconds = float(os.environ.get("BAKERY_SCAN_TIMEOUT", SCAN_TIMEOUT))
    except ValueError:
        return SCAN_TIMEOUT
    return seconds if seconds > 0 else SCAN_TIMEOUT


@dataclass
class VerifyResult:
    image: str
    version: str
    passed: bool
    seconds: float
    run_id: str
    summary: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def resolve_version(catalog: Catalog, image: str, version: str | None) -> dict[str, Any]:
    """The catalog's version, which must also still be in podman's storage to be verified."""
    record = catalog.resolve(image, version)
    if not podman.image_exists(record["image_ref"]):
        raise ConfigError(f"{record['image_ref']} is in the catalog but not in podman's storage; bake it again")
    return record


class Verifier:
    """One verification run of one image version."""

    def __init__(self, project: Project, catalog: Catalog, progress: Progress, run: Run):
        self.project = project
        self.catalog = catalog
        self.progress = progress
        self.run = run
        self.checks: list[junit.Check] = []
        self.instances: list[str] = []
        self.params: Path | None = None  # the parameter store mounted into the instances (verify --env)
        self._held: list[junit.Check] | None = None  # checks kept back while testinfra runs in the background

    def verify(self, record: dict[str, Any], allowlist: list[secrets.AllowEntry], runtime_text: str,
               env_name: str | None = None) -> VerifyResult:
        started_at, started = utc_now(), time.monotonic()
        image, version = record["image"], record["version"]
        definition = self.project.image(image) if (self.project.playbooks_dir / f"{image}.yml").is_file() else None
        health = (definition.health_check if definition else {}) or {}
        runtime_file = self.run.path / "runtime.env"
        self.params = local_root(self.project.state_dir, env_name) if env_name else None
        runtime_file.write_text(runtime_text, encoding="utf-8")
        self.progress.note(f"verify {image}:{version}: {record['image_ref']} (run {self.run.id})")

        with cancellable(), ExitStack() as cleanup:
            cleanup.callback(self._remove_instances)
            online = self._launch("online", record["image_ref"], runtime_file, network=True)
            offline = self._launch("offline", record["image_ref"], runtime_file, network=False)
            booted = self._check_boot("boot", online)
            tests = self._start_testinfra(image, version, record, online, env_name) if booted else None
            if tests is not None:
                cleanup.callback(tests.stop)
            # Checks made while the tests run join the report after the testinfra check: the order never changes.
            self._held = [] if tests is not None else None
            offline_booted = self._check_boot("offline-boot", offline)
            if offline_booted and health:
                self._check_health("offline-health", offline, health)
            self._scan_secrets(record, allowlist)
            self._report_packages(record)
            held, self._held = self._held or [], None
            if tests is not None:
                self._add(tests.finish())
            for check in held:
                self._add(check)

        return self._record(record, started_at, started, env_name, "container",
                            {"packages": str(self.run.path / "packages.json"),
                             "secrets": str(self.run.path / "secrets.json")})

    def _record(self, record: dict[str, Any], started_at: str, started: float, env_name: str | None, kind: str,
                more_reports: dict[str, str]) -> VerifyResult:
        """The outcome of the checks: JUnit report, result.json and the catalog row of this kind."""
        image, version = record["image"], record["version"]
        seconds = round(time.monotonic() - started, 1)
        failed = [c for c in self.checks if not c.passed and not c.skipped]
        passed = not failed
        summary = "all checks passed" if passed else "; ".join(f"{c.name}: {c.message}" for c in failed)[:1000]
        suite = f"verify {image}:{version}" if kind == "container" else f"verify --{kind} {image}:{version}"
        junit_path = junit.write(self.run.path / "junit.xml", suite, self.checks,
                                 sorted(self.run.path.glob("testinfra-*.xml")))
        reports = {"junit": str(junit_path), "result": str(self.run.path / "result.json"), **more_reports}
        result = VerifyResult(image, version, passed, seconds, self.run.id, summary,
                              [c.__dict__ for c in self.checks], reports)
        self.run.write_result(result.to_dict())
        self.catalog.record_verification(image, version, env=env_name, started=started_at, seconds=seconds,
                                         passed=passed, run_id=self.run.id, summary=summary, reports=reports,
                                         kind=kind)
        return result

    # -- instances -------------------------------------------------------------------------------

    def _launch(self, role: str, ref: str, runtime_file: Path, network: bool) -> str:
        name = f"bakery-verify-{self.run.id.rsplit('-', 1)[-1]}-{role}"
        args = ["run", "-d", "--name", name, "--hostname", f"verify-{role}", "--systemd=always",
                # marked like a build container so that gc removes it if this process dies without cleaning up
                "--label", f"{VERIFY_LABEL}={self.run.id}", "--label", "io.bakery.build=1",
                "--label", f"io.bakery.build.pid={os.getpid()}",
                "-v", f"{runtime_file}:/etc/bakery/launch/runtime.env:ro"]
        if self.params is not None:  # verify --env: the environment's store, as its instances get it
            args += ["-v", f"{LocalStore(self.params).ensure()}:/etc/bakery/params:ro"]
        if not network:
            args += ["--network", "none"]
        self.instances.append(name)
        podman.run(*args, ref, "/sbin/init")
        return name

    def _remove_instances(self) -> None:
        for name in self.instances:
            podman.remove_container(name)

    def _check_boot(self, check: str, name: str) -> bool:
        t = time.monotonic()
        state = podman.systemd_state(name, BOOT_TIMEOUT) or "unknown"
        seconds = time.monotonic() - t
        if state == "running":
            self._add(junit.Check(check, True, seconds, output=f"systemd is running after {seconds:.1f} s"))
            return True
        failed = podman.run("exec", name, "systemctl", "--failed", "--no-legend", "--plain", check=False).stdout
        units = [line.split()[0] for line in failed.split("\n") if line.strip()]
        journal = ""
        if units:
            journal = podman.run("exec", name, "journalctl", "--no-pager", "-n", "30", *[f"-u{u}" for u in units],
                                 check=False).stdout
        message = f"systemd is '{state}'" + (f"; failed units: {', '.join(units)}" if units else "")
        self._add(junit.Check(check, False, seconds, message, journal))
        return False

    def _check_health(self, check: str, name: str, health: dict[str, Any]) -> None:
        """Probe the health check from inside the instance (it has no network to probe it from outside)."""
        url = f"http://127.0.0.1:{health.get('port', 8080)}{health.get('path', '/health')}"
        probe = ("import sys,urllib.request\ntry:\n r=urllib.request.urlopen(sys.argv[1],timeout=3); print(r.status)\n"
                 "except Exception as e: print(getattr(e,'code',0) or repr(e))")
        t = time.monotonic()
        last = ""
        while time.monotonic() - t < HEALTH_TIMEOUT:
            last = podman.run("exec", name, "python3", "-c", probe, url, check=False).stdout.strip()
            if last == "200":
                self._add(junit.Check(check, True, time.monotonic() - t, output=f"{url} answered 200"))
                return
            time.sleep(0.5)
        self._add(junit.Check(check, False, time.monotonic() - t,
                              f"{url} did not answer 200 within {HEALTH_TIMEOUT} s (last: {last})"))

    # -- testinfra ------------------------------------------------------------------------------

    def test_files(self, image: str, record: dict[str, Any]) -> tuple[list[Path], list[str]]:
        """The image's suite, every baked project role's Molecule tests (written once, run in both places), and
        the tests of the third-party roles the image names in verify.role_tests."""
        files, notes = [], []
        suite = self.project.root / "tests" / "images" / f"test_{image}.py"
        if suite.is_file():
            files.append(suite)
        else:
            notes.append(f"no image suite {suite.relative_to(self.project.root)}")
        files += project_role_tests(self.project.roles_dir, (layer["role"] for layer in record["layers"]))
        definition = self.project.image(image) if (self.project.playbooks_dir / f"{image}.yml").is_file() else None
        files += third_party_role_tests(definition)
        return list(dict.fromkeys(files)), notes

    def _run_testinfra(self, image: str, version: str, record: dict[str, Any], instance: str,
                       env_name: str | None, hosts: tuple[str, ...] = ()) -> None:
        """Run the tests against `instance` (podman), or the testinfra host arguments in `hosts`."""
        tests = self._start_testinfra(image, version, record, instance, env_name, hosts)
        if tests is not None:
            try:
                self._add(tests.finish())
            finally:
                tests.stop()

    def _start_testinfra(self, image: str, version: str, record: dict[str, Any], instance: str,
                         env_name: str | None, hosts: tuple[str, ...] = ()) -> testinfra_run.TestinfraRun | None:
        """Start the tests in the background; None (and a skipped check) when the image has none."""
        files, notes = self.test_files(image, record)
        if not files:
            self._add(junit.Check("testinfra", True, 0, skipped=True, message="; ".join(notes) or "no testinfra tests"))
            return None
        ini = self.run.path / "pytest.ini"
        ini.write_text("[pytest]\naddopts = -p no:cacheprovider\n", encoding="utf-8")
        env = testinfra_run.environment({
            "BAKERY_VERIFY_IMAGE": image, "BAKERY_VERIFY_VERSION": version,
            "BAKERY_VERIFY_COMMIT": (record.get("provenance") or {}).get("git_commit", ""),
            "BAKERY_VERIFY_ENV": env_name or "verify"})
        cmd = testinfra_run.command(ini, self.project.root, hosts or (f"--hosts=podman://{instance}",),
                                    self.run.path / "testinfra-online.xml", f"testinfra {image}:{version}", files)
        return testinfra_run.start(cmd, env, self.project.root, files, self.run.path / "testinfra.log")

    # -- files ----------------------------------------------------------------------------------

    def _mounted(self, ref: str, stack: ExitStack) -> Path:
        path = Path(podman.run("image", "mount", ref).stdout.strip())
        stack.callback(podman.run, "image", "unmount", ref, check=False)
        return path

    def _base_ref(self, record: dict[str, Any]) -> str | None:
        provenance = record.get("provenance") or {}
        for candidate in (provenance.get("base_digest", "").removeprefix("sha256:"), provenance.get("base_image")):
            if candidate and podman.image_exists(candidate):
                return candidate
        return None

    def _scan_secrets(self, record: dict[str, Any], allowlist: list[secrets.AllowEntry]) -> None:
        """Every layer the bake committed, read whole from its tar: a file a later role deleted is still there."""
        t = time.monotonic()
        base = self._base_ref(record)
        if base is None:
            gone = "the image's base is gone from podman; cannot tell what the bake added"
            self._add(junit.Check("secret-scan", False, 0, gone))
            self._add(junit.Check(apt_leftovers.CHECK, False, 0, gone))
            return
        findings: list[secrets.Finding] = []
        apt_found: dict[str, list[str]] = {}
        try:
            with time_limit(scan_timeout()):
                layers = image_layers.layers_above(self.catalog, record, base)
                for layer, stream in image_layers.each_layer(record["image_ref"], layers):
                    def note(name: str, is_dir: bool, label: str = layer.label) -> None:
                        if apt_leftovers.leftover(name, is_dir):
                            apt_found.setdefault(label, []).append(name)
                    findings += secrets.scan_layer(stream, layer.label, allowlist, names=note)
        except (OperationError, TimeLimitExceeded) as error:
            self._add(junit.Check("secret-scan", False, time.monotonic() - t, f"could not scan the layers: {error}"))
            self._add(junit.Check(apt_leftovers.CHECK, False, 0, f"could not read the layers: {error}"))
            return
        self._report_secrets(findings, layers, t)
        # read on the same pass: no apt list or downloaded package may be committed in any layer
        self._add(apt_leftovers.outcome(apt_found, len(layers), 0))

    def _report_secrets(self, findings: list[secrets.Finding], layers: list[image_layers.Layer], t: float) -> None:
        (self.run.path / "secrets.json").write_text(json.dumps([f.to_dict() for f in findings], indent=2),
                                                    encoding="utf-8")
        if findings:
            named = [f"{secrets.printable(f.path)}{f':{f.line}' if f.line else ''} ({f.rule})" for f in findings]
            message = "; ".join(named[:10]) + (f" and {len(findings) - 10} more" if len(findings) > 10 else "")
            self._add(junit.Check("secret-scan", False, time.monotonic() - t, message,
                                  "\n".join(f.text() for f in findings)))
        else:
            self._add(junit.Check("secret-scan", True, time.monotonic() - t,
                                  output=f"{len(layers)} layers above the base scanned: "
                                         f"{', '.join(layer.label for layer in layers)}"))

    def _report_packages(self, record: dict[str, Any]) -> None:
        t = time.monotonic()
        base = self._base_ref(record)
        with ExitStack() as stack:
            image_pkgs = packages.installed(self._mounted(record["image_ref"], stack))
            base_pkgs = packages.installed(self._mounted(base, stack)) if base else {}
        report = {"image": record["image_ref"], "base": base, "packages": image_pkgs,
                  "diff": packages.diff(base_pkgs, image_pkgs)}
        (self.run.path / "packages.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        d = report["diff"]
        self._add(junit.Check("package-report", True, time.monotonic() - t,
                              output=f"{len(image_pkgs)} packages; {len(d['added'])} added, "
                                     f"{len(d['removed'])} removed, {len(d['changed'])} changed against the base"))

    def _add(self, check: junit.Check) -> None:
        if self._held is not None:
            self._held.append(check)
            return
        self.checks.append(check)
        state = "skipped" if check.skipped else ("ok" if check.passed else "FAILED")
        detail = check.message or check.output
        self.progress.note(f"  {check.name}: {state}" + (f" - {detail}" if detail else ""))


def runtime_text(project: Project, env_name: str | None, params: str = "local") -> str:
    """The runtime config delivered at launch: the environment's, or a neutral one (no references: params off).
    params: where the instance resolves references (local: the environment's store, mounted by _launch; off: a
    VM verification, whose throwaway VM never gets an environment's secrets)."""
    if env_name:
        from bakery.environments import load_environment

        return load_environment(project, env_name).runtime_env_text(params=params)
    return 'ENVIRONMENT="verify"\nBAKERY_PARAMS="off"\n'


def verify_image(project: Project, catalog: Catalog, progress: Progress, image: str, version: str | None,
                 env_name: str | None = None) -> VerifyResult:
    """Everything that can refuse the request is checked before the run directory exists."""
    allowlist = secrets.load_allowlist(project.root / ALLOWLIST_FILE)
    text = runtime_text(project, env_name)
    podman.check_working()
    record = resolve_version(catalog, image, version)
    run = Run.start(project.state_dir, "verify")
    return Verifier(project, catalog, progress, run).verify(record, allowlist, text, env_name)
