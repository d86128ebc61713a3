"""The local builder: bake in a podman container booted with systemd, one committed layer per role.

Flow: resolve the base, compute every layer key, return the existing version if
the whole input is unchanged, otherwise start a build container from the
newest cached layer, run the remaining roles in one ansible-playbook run, one
play each (a layer is committed as each play ends, and the next play gets a
container booted from it: bakery.builders.layer_commits, build_container),
then write /etc/image-release and the provenance labels in a final tiny layer
tagged `localhost/bakery/<image>:<version>`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bakery import __version__, podman
from bakery.ansible import PlaybookResult, ansible_env, mitogen_env, mitogen_wanted, podman_inventory, run_playbook
from bakery.base_image import resolve_base
from bakery.builders import build_container, layer_commits
from bakery.builders.apt_mounts import AptMounts
from bakery.builders.base import Builder, BuildOptions, BuildResult, LayerResult, image_packages
from bakery.builders.layer_commits import PLAN_ENV, callback_plugins, plays, run_segments, write_inventory, write_plan
from bakery.builders.layer_lock import layers_in_use
from bakery.builders.layer_run import LayerRun
from bakery.builders.tag_lock import image_tags_locked
from bakery.catalog import Catalog
from bakery.config import ImageDefinition, Project
from bakery.deps.gate import check_lock, shared_lock
from bakery.errors import ConfigError, Interrupted, OperationError
from bakery.gc import leftovers
from bakery.gc.orphans import CHECKOUT_LABEL
from bakery.layers import PlannedLayer, input_digest, plan_layers
from bakery.progress import Progress
from bakery.provenance import Provenance, git_facts, utc_now
from bakery.runs import Run
from bakery.signals import Cancellation, cancellable

log = logging.getLogger("bakery.build")

MIN_FREE_BYTES = 1 << 30


class PodmanBuilder(Builder):
    target = "local"

    def __init__(self, project: Project, catalog: Catalog, progress: Progress,
                 taken_elsewhere: Callable[[str, str], bool] | None = None):
        """`taken_elsewhere(image, version)`: a version that is not this host's to hand out although no local image
        has it (the disk builder's versions are AWS's too: bakery.builders.disk)."""
        super().__init__(project, catalog, progress)
        self.taken_elsewhere = taken_elsewhere

    def version_taken(self, image: str, version: str) -> bool:
        """Another checkout on this host has an image of that version, or (for the disk builder) AWS has it."""
        return podman.image_exists(podman.image_ref(image, version)) or bool(
            self.taken_elsewhere and self.taken_elsewhere(image, version))

    def build(self, definition: ImageDefinition, options: BuildOptions, run: Run) -> BuildResult:
        # Held for the whole bake: `bake.py deps` cannot swap an install while ansible reads .bakery/galaxy.
        with shared_lock(self.project.root, on_wait=lambda: self.progress.note("waiting for bake.py deps to finish")):
            requirements = check_lock(self.project.root)  # a requirement not installed as locked stops the bake here
            return self._build(definition, options, run, requirements)

    def _build(self, definition: ImageDefinition, options: BuildOptions, run: Run,
               requirements: dict[str, str]) -> BuildResult:
        started = time.monotonic()
        self._check_disk_space()
        with podman.setup_hint_if_broken():
            leftovers.clean(self.project, self.catalog)
            base = resolve_base(definition.base, self.base_settings())
        self.catalog.record_base(base.ref, base.release or "", base.digest)
        extra_vars = {"bakery_image": definition.name, "bakery_target": self.target, **options.extra_vars}
        role_inputs, role_vars = self.artifact_inputs(definition)
        planned = plan_layers(definition, base.digest, extra_vars, role_inputs)
        digest = input_digest(planned, base.digest)
        log.info("image %s: base %s (%s), input digest %s", definition.name, base.ref, base.digest, digest)

        if not options.no_cache:
            existing = self._existing_version(definition.name, digest)
            if existing:
                self.progress.note(f"{definition.name}: inputs unchanged, reusing version {existing['version']}")
                return self._reused_result(existing, planned, run, started)
        podman.check_working()  # before anything is started: a podman that cannot run containers gets the hint

        with cancellable() as cancel, layers_in_use(self.project.state_dir, definition.name):  # no gc under it
            bake = _Bake(self, definition, options, run, cancel, base.ref, base.digest, planned, digest, extra_vars,
                         started)
            bake.role_vars = role_vars
            bake.requirements = requirements
            bake.artifacts = {v["artifact"]: v["version"] for v in role_inputs.values()}
            return bake.go()

    def _existing_version(self, image: str, digest: str) -> dict[str, Any] | None:
        """The newest ready version baked from these inputs whose image is still the one recorded. Its tag alone
        is not enough: once this checkout's image is gone (a `podman rmi` by hand), another checkout may tag its
        own image under the same version, and reusing it would release an image this catalog never verified."""
        for row in self.catalog.find_by_input(image, digest):
            tagged = podman.image_id(row["image_ref"])
            if tagged and (not row["image_id"] or podman.bare_id(tagged) == podman.bare_id(row["image_id"])):
                return row
            log.info("catalog version %s:%s has no image any more%s; forgetting it", image, row["version"],
                     " (its tag names another image)" if tagged else "")
            self.catalog.discard_version(image, row["version"])
        return None

    def _reused_result(self, row: dict[str, Any], planned: list[PlannedLayer], run: Run, started: float) -> BuildResult:
        full = self.catalog.version(row["image"], row["version"]) or {}
        return BuildResult(
            image=row["image"], version=row["version"], ref=row["image_ref"], image_id=row["image_id"],
            input_digest=full.get("input_digest", ""), reused=True, run_id=run.id,
            seconds=round(time.monotonic() - started, 3),
            layers=[LayerResult(p.role, p.key, p.role_digest, cached=True) for p in planned],
            provenance=full.get("provenance", {}),
        )

    def _check_disk_space(self) -> None:
        storage = Path("/var/lib/containers")
        probe = storage if storage.exists() else Path("/")
        free = shutil.disk_usage(probe).free
        if free < MIN_FREE_BYTES:
            raise ConfigError(f"only {free >> 20} MiB free under {probe}; a bake needs at least 1 GiB: "
                              "free space or run: ./bake.py gc")


class _Bake:
    """One bake in progress; owns the build container and the version reservation until done."""

    def __init__(self, builder: PodmanBuilder, definition: ImageDefinition, options: BuildOptions, run: Run,
                 cancel: Cancellation, base_ref: str, base_digest: str, planned: list[PlannedLayer],
                 digest: str, extra_vars: dict[str, Any], started: float):
        self.b = builder
        self.definition = definition
        self.options = options
        self.run = run
        self.cancel = cancel
        self.base_ref = base_ref
        self.base_digest = base_digest
        self.planned = planned
        self.digest = digest
        self.extra_vars = extra_vars
        self.started = started
        self.container = f"bakery-build-{definition.name}-{run.id.rsplit('-', 1)[-1]}"
        self.version: str | None = None
        self.generated: list[Path] = []
        self.layer_results: list[LayerResult] = []
        self.role_vars: dict[str, dict[str, Any]] = {}
        self.artifacts: dict[str, str] = {}
        self.requirements: dict[str, str] = {}
        self.apt = AptMounts(run.path / "apt")
        self.container_args: list[str] = []  # how the build container starts, for each role (once it bakes)
        self.container_id = ""  # the build container running now; Ansible reaches it by id (build_container.replace)

    def go(self) -> BuildResult:
        succeeded = False
        keep = False
        try:
            result = self._bake()
            succeeded = True
            return result
        except OperationError:
            keep = self.options.keep_on_failure
            raise
        finally:
            self._cleanup(succeeded, keep)

    def _bake(self) -> BuildResult:
        start_index, parent_ref = self._first_uncached()
        for p in self.planned[:start_index]:
            self.layer_results.append(LayerResult(p.role, p.key, p.role_digest, cached=True))
            self.b.progress.note(f"[{p.layer.position + 1}/{len(self.planned)}] {p.role}: cached")
        if start_index < len(self.planned):
            self._start_container(parent_ref)
            for n, segment in enumerate(run_segments(self.planned[start_index:])):
                if n:  # as after each commit within a run: a fresh container from the layer before
                    self.container_id = layer_commits.next_container(self.container_args, parent_ref, self.apt)
                parent_ref = self._bake_layers(segment)
            podman.remove_container(self.container)
        self.cancel.check()
        waiting = f"{self.definition.name}: waiting for another bake on this host to tag its image"
        with image_tags_locked(on_wait=lambda: self.b.progress.note(waiting)):  # no version taken twice
            self.version = self.b.catalog.reserve_version(
                self.definition.name, self.run.id, os.getpid(),
                taken=lambda v: self.b.version_taken(self.definition.name, v))
            provenance = self._provenance()
            ref, image_id = self._finalize(parent_ref, provenance)
        self.cancel.check()
        self.b.catalog.complete_version(
            self.definition.name, self.version, image_ref=ref, image_id=image_id, input_digest=self.digest,
            provenance=provenance.to_dict(),
            layers=[{"role": r.role, "role_digest": r.role_digest, "key": r.key, "cached": r.cached}
                    for r in self.layer_results],
        )
        self.b.catalog.record_packages(self.definition.name, self.version, image_packages(ref))  # for `show`
        return BuildResult(
            image=self.definition.name, version=self.version, ref=ref, image_id=image_id, input_digest=self.digest,
            reused=False, run_id=self.run.id, seconds=round(time.monotonic() - self.started, 3),
            layers=self.layer_results, provenance=provenance.to_dict(),
        )

    def _first_uncached(self) -> tuple[int, str]:
        """Index of the first role that must run, and the image to start it from."""
        parent = self.base_ref
        if self.options.no_cache:
            return 0, parent
        for index, p in enumerate(self.planned):
            cached = self.b.catalog.layer(p.key)
            # By image id, not tag: another checkout baking the same key moves the tag to its own image
            # (and may delete that one later); the id keeps pointing at this catalog's layer.
            ref = cached and (cached["image_id"] or cached["ref"])
            if not ref or not podman.image_exists(ref):
                return index, parent
            parent = ref
        return len(self.planned), parent

    def _start_container(self, from_ref: str) -> None:
        self.b.progress.note(f"{self.definition.name}: starting build container {self.container} from {from_ref}")
        self.container_args = build_container.run_args(
            self.container, f"{self.definition.name}-bake",
            {leftovers.BUILD_LABEL: "1", leftovers.PID_LABEL: str(os.getpid()), "io.bakery.run": self.run.id,
             "io.bakery.image": self.definition.name, CHECKOUT_LABEL: self._checkout()},
            self.apt.volumes())
        self.container_id = build_container.start(self.container_args, from_ref, self.cancel.check)
        seconds, problem = self.apt.refresh(self.container)
        self.b.progress.note(problem or f"{self.definition.name}: apt package lists fetched in {seconds:.1f} s "
                                        "(mounted while baking, never committed)")

    def _checkout(self) -> str:
        """The checkout every image of this bake names (bakery.gc.orphans: one its catalog does not list goes)."""
        return str(self.b.project.root.resolve())

    def _bake_layers(self, todo: list[PlannedLayer]) -> str:
        """Every uncached role in one ansible-playbook run, one play each; bakery_layers commits each layer
        when its play is done, and each commit is recorded as soon as it is read (bakery.builders.layer_run)."""
        ident = f"layers-{todo[0].layer.position + 1:02d}-{todo[-1].layer.position + 1:02d}"
        plan, records = self.run.path / f"{ident}.plan.json", self.run.path / f"{ident}.commits.jsonl"
        # under the run's private data dir, as ansible-runner's own: inventory_dir, and stop_leftovers finding a
        # process by that directory in its command line, stay as they were
        inventory = self.run.path / "ansible" / "inventory" / f"{ident}.json"
        inventory.parent.mkdir(parents=True, exist_ok=True)
        mitogen = mitogen_wanted()
        write_inventory(inventory, podman_inventory(self.container, ["bakery_build",
                                                                     self.definition.name.replace("-", "_")],
                                                    mitogen=mitogen, address=self.container_id))
        write_plan(plan, container=self.container_args, apt_root=self.apt.root, records=records, inventory=inventory,
                   layers=[(p.role, podman.cache_ref(self.definition.name, p.role, p.key)) for p in todo])
        tracker = LayerRun(todo, len(self.planned), self.b.progress, records,
                           on_commit=lambda record: self._record_layer(todo, tracker, record))
        self.apt.restore_if_emptied()
        self.cancel.deferred = True
        try:
            outcome = run_playbook(
                playbook=self._write_run_playbook(todo),
                inventory=inventory,
                private_data_dir=self.run.path / "ansible",
                ident=ident,
                envvars={**ansible_env(self.b.project.root), **(mitogen_env() if mitogen else {}),
                         PLAN_ENV: str(plan), "ANSIBLE_CALLBACK_PLUGINS": callback_plugins(self.b.project.root)},
                # every artifact role's variables (named after their role), whichever roles this run bakes, so
                # a role sees the same whether the layers before it ran here or came from the cache
                extravars={**self.extra_vars, **{k: v for each in self.role_vars.values() for k, v in each.items()}},
                progress=self.b.progress,
                step=tracker.step,
                cancelled=lambda: self.cancel() or tracker.broken,
                observe=tracker.observe,
            )
        finally:
            self.cancel.deferred = False
            tracker.collect()  # whatever was committed stays cached, whatever happens next
        tracker.finish(outcome.ok)
        _link_artifacts(outcome.artifact_dir, todo)
        self.cancel.check()
        return self._check_outcome(todo, tracker, outcome)

    def _record_layer(self, todo: list[PlannedLayer], tracker: LayerRun, record: dict[str, Any]) -> None:
        """One committed layer into the catalog and the results, exactly as when each role had its own run."""
        if "error" in record:
            return
        index = record["index"]
        p = todo[index]
        parent = self.planned[p.layer.position - 1].key if p.layer.position else self.base_digest
        self.b.catalog.put_layer(p.key, image=self.definition.name, role=p.role, ref=record["ref"],
                                 image_id=record["image_id"], parent=parent)
        self.layer_results.append(LayerResult(p.role, p.key, p.role_digest, cached=False,
                                              seconds=tracker.seconds(index), tasks=tracker.tasks[index],
                                              changed=tracker.changed[index]))

    def _check_outcome(self, todo: list[PlannedLayer], tracker: LayerRun, outcome: PlaybookResult) -> str:
        """The last committed layer, or the error naming the role (and task) that stopped the bake."""
        log_path = outcome.artifact_dir / "stdout"
        broken = [r for r in tracker.committed if "error" in r]
        if broken:
            raise OperationError(f"bake of {self.definition.name} stopped at role '{broken[0]['role']}': "
                                 f"{broken[0]['error']} (log: {log_path})")
        if not outcome.ok:
            where = f"task '{outcome.failed_task}'" if outcome.failed_task else "playbook"
            role = todo[max(tracker.current, 0)].role
            raise OperationError(f"bake of {self.definition.name} failed in role '{role}', {where}: "
                                 f"{outcome.failure} (log: {log_path})")
        if len(tracker.committed) != len(todo):
            missing = todo[len(tracker.committed)].role
            if tracker.recap_failed:  # e.g. a failed include_tasks inside a block with rescue: Ansible exits 0
                raise OperationError(f"bake of {self.definition.name} failed in role '{missing}': ansible-playbook "
                                     f"exited 0 but its recap counts a failed task (log: {log_path})")
            raise OperationError(f"bake of {self.definition.name}: the layer of role '{missing}' was not committed "
                                 f"although ansible-playbook succeeded (log: {log_path})")
        last = tracker.committed[-1]
        return str(last["image_id"] or last["ref"])  # by id: another checkout may move the tag meanwhile

    def _write_run_playbook(self, todo: list[PlannedLayer]) -> Path:
        """The plays around the roles, beside the original so relative paths and group_vars resolve the same."""
        path = self.definition.playbook.parent / f".bakery-{os.getpid()}-{self.run.id}.yml"
        self.generated.append(path)
        path.write_text(yaml.safe_dump(plays(todo), sort_keys=False), encoding="utf-8")
        return path

    def _provenance(self) -> Provenance:
        git = git_facts(self.b.project.root)
        return Provenance(
            image=self.definition.name, version=self.version or "", git_commit=git.commit, git_message=git.message,
            git_branch=git.branch, git_dirty=git.dirty, build_time=utc_now(), base_image=self.base_ref,
            base_digest=self.base_digest, input_digest=self.digest, bakery_version=__version__,
            roles={p.role: p.role_digest for p in self.planned},
            artifacts=self.artifacts, requirements=self.requirements,
        )

    def _finalize(self, last_ref: str, provenance: Provenance) -> tuple[str, str]:
        """Add /etc/image-release and the labels on top of the last layer, without booting anything."""
        ref = podman.image_ref(self.definition.name, provenance.version)
        final = f"{self.container}-final"
        podman.run("create", "--name", final, "--label", f"{leftovers.BUILD_LABEL}=1",
                   "--label", f"{leftovers.PID_LABEL}={os.getpid()}", last_ref, "/sbin/init")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                release = Path(tmp) / "image-release"
                release.write_text(provenance.release_file(), encoding="utf-8")
                release.chmod(0o644)
                podman.run("cp", str(release), f"{final}:/etc/image-release")
            changes = []
            for key, value in provenance.labels().items():
                changes += ["--change", f"LABEL {key}={podman.dockerfile_quote(value)}"]
            # Container labels are inherited by committed images: clear the build markers so
            # instances of this image are never mistaken for a dead bake's leftovers.
            changes += ["--change", f"LABEL {leftovers.BUILD_LABEL}=", "--change", f"LABEL {leftovers.PID_LABEL}=",
                        "--change", f"LABEL io.bakery.run={self.run.id}",
                        "--change", f"LABEL {CHECKOUT_LABEL}={podman.dockerfile_quote(self._checkout())}"]
            image_id = podman.run("commit", "-q", *changes, final, timeout=900).stdout.strip()
            # Tag only now, and never over another checkout's image of the same name.
            if podman.image_exists(ref):
                podman.remove_image(image_id)
                raise OperationError(f"{ref} was taken by another bake on this host while this one ran; bake again")
            podman.run("tag", image_id, ref)
        finally:
            podman.remove_container(final)
        image_id = podman.image_id(ref)
        if image_id is None:
            raise OperationError(f"podman commit did not produce {ref}")
        return ref, image_id

    def _cleanup(self, succeeded: bool, keep: bool) -> None:
        for path in self.generated:
            path.unlink(missing_ok=True)
        if keep and podman.container_exists(self.container):
            kept = self.container + leftovers.KEPT_SUFFIX  # so no bake's leftover clean-up removes it
            if podman.run("rename", self.container, kept, check=False).returncode:
                kept = self.container
            self.b.progress.note(
                f"kept build container for inspection; enter it with: podman exec -it {kept} bash "
                f"(remove it with: podman rm -f -t 0 {kept})")
        else:
            podman.remove_container(self.container)
            self.apt.remove()  # a kept container keeps its mounted lists, for `apt-get install` while debugging
        if not succeeded and self.version:
            podman.remove_image_of_run(podman.image_ref(self.definition.name, self.version), self.run.id)
            self.b.catalog.discard_version(self.definition.name, self.version)


def _link_artifacts(artifact_dir: Path, todo: list[PlannedLayer]) -> None:
    """Each layer's log where it was when each role had its own run (ansible/artifacts/NN-role)."""
    for p in todo:
        link = artifact_dir.parent / f"{p.layer.position + 1:02d}-{p.role}"
        if artifact_dir.is_dir() and not link.exists():
            try:
                link.symlink_to(artifact_dir.name)
            except OSError as exc:
                log.info("could not link %s: %s", link, exc)


__all__ = ["PodmanBuilder", "Interrupted"]
