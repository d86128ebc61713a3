"""The disk builder's EBS direct publish: bytes moved cold and after an app-only change, time on a modelled uplink.

    .venv/bin/python bench/bench_ebs_publish.py --disk-a OLD.raw --disk-b NEW.raw [--rounds 1] [--no-throttle]
    .venv/bin/python bench/bench_ebs_publish.py --project /tmp/e2e --image webapp [--versions OLD NEW]

Two raw disks of one image that differ only in the app (B is the app-only change of A), side by side in one run,
against moto server started here on 127.0.0.1 (bakery/aws/ebs_direct.py and disk_blocks.py, as the disk builder
calls them):
- cold: A published with no parent; app-only: B published with A's snapshot as its parent and A's block map,
  so only the blocks whose content differs move. Blocks and bytes of each, and their ratio (goal <= 5 %);
- the publish time on a modelled uplink (MODEL below), once as a formula and once measured through an emulated
  link in botocore's send hooks (--no-throttle skips that run), next to the quoted times of an Image Builder
  and a Packer amazon-ebs bake;
- the wall time of the publishes and of the read-back that `verify --target aws` does, on loopback;
- the read-back of A's snapshot: bytes downloaded, its modelled time, and whether it gives A's bytes again.
With --project the disks are made by `bake.py disk` in that project (run_all.py does this in its project copy).
Without disks nothing is measured: the table says which inputs are missing (a skip is no pass: exit 1,
and `n/a` in run_all.py's report).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common import BAKE, PYTHON, REPO, log, median, run, spread

sys.path.insert(0, str(REPO))

from bakery.aws import clients, ebs_direct  # noqa: E402
from bakery.aws import tags as tag_names  # noqa: E402
from bakery.aws.disk_blocks import BLOCK_SIZE, BlockMap, block_map  # noqa: E402

MIB = 2 ** 20
GOAL = 0.05  # the issue's: an app-only publish moves at most 5 % of the cold publish's bytes
QUOTED = "Image Builder 25-30 min (seed), Packer amazon-ebs ≥ 5 min (quoted, not measured here)"
IMAGE_BUILDER_S, PACKER_S = 25 * 60, 5 * 60
WORKERS = 8  # ebs_direct.publish's default pool


@dataclass(frozen=True)
class Model:
    """A shared uplink of `rate` bit/s, `latency` s per request, `parallel` requests in flight.

    Seen as a closed queue (every request: `latency` away, then its bytes through the one link), n equal requests
    of b bytes in all take at least max(b*8/rate, (n*latency + b*8/rate)/parallel): the link's time, or the
    requests' own time spread over the parallel slots, whichever is larger (the asymptotic bounds of a closed
    network, which a pool of 8 meets closely when the requests are equal). The calls made one at a time
    (StartSnapshot, CompleteSnapshot and the DescribeSnapshots that finds it completed; ListSnapshotBlocks
    for a read-back) add `latency` each. AWS's own time to settle a snapshot is not in it."""

    rate: float = 100e6
    latency: float = 0.020
    parallel: int = WORKERS

    def seconds(self, requests: int, nbytes: int, serial: int) -> float:
        wire = nbytes * 8 / self.rate
        return serial * self.latency + max(wire, (requests * self.latency + wire) / self.parallel)

    def describe(self) -> str:
        return (f"{self.rate / 1e6:g} Mbit/s shared by all requests, {self.latency * 1000:g} ms per request, "
                f"{self.parallel} requests in parallel: time = serial calls × {self.latency * 1000:g} ms + "
                f"max(bytes×8/{self.rate / 1e6:g}e6, (requests × {self.latency:g} + bytes×8/{self.rate / 1e6:g}e6)"
                f" / {self.parallel})")


class Link:
    """The model as a transport: each request waits `latency`, then holds the one link for its bytes (FIFO)."""

    def __init__(self, model: Model):
        self.model, self.lock, self.free_at = model, threading.Lock(), 0.0

    def carry(self, nbytes: int) -> None:
        with self.lock:
            start = max(time.monotonic(), self.free_at)
            self.free_at = start + nbytes * 8 / self.model.rate
            until = self.free_at
        time.sleep(max(0.0, until - time.monotonic()))

    def attach(self, client) -> None:
        """Delay every request of `client`: the latency and its body before it is sent, the answer's body after."""

        def before_send(request, **_) -> None:
            time.sleep(self.model.latency)
            body = request.body
            self.carry(len(body) if isinstance(body, bytes | bytearray) else
                       int(request.headers.get("Content-Length") or 0))

        def after_call(http_response, **_) -> None:
            self.carry(int(http_response.headers.get("Content-Length") or 0))

        client.meta.events.register("before-send", before_send)
        client.meta.events.register("after-call", after_call)


@dataclass
class Runs:
    """Seconds of each run of one measurement."""

    seconds: list[float] = field(default_factory=list)

    def text(self) -> str:
        return ", ".join(f"{s:.1f}" for s in self.seconds) + f" s; spread {spread(self.seconds)}"


@dataclass
class Found:
    a: Path
    b: Path
    map_a: BlockMap
    map_b: BlockMap
    cold: ebs_direct.Published | None = None
    app: ebs_direct.Published | None = None
    readback: ebs_direct.Readback | None = None
    readbacks_same: list[bool] = field(default_factory=list)  # per read-back: A's bytes in every block
    timed: dict[str, Runs] = field(default_factory=dict)

    def run_of(self, name: str) -> Runs:
        return self.timed.setdefault(name, Runs())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    """moto server on loopback, and an environment where bakery's clients reach it (as tests/aws/conftest.py)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    scratch = Path(tempfile.mkdtemp(prefix="bench-ebs-"))
    wanted = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
              "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
              "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
              "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials")}
    dropped = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION")
    saved = {name: os.environ.get(name) for name in [*wanted, *dropped]}
    os.environ.update(wanted)
    for name in dropped:
        os.environ.pop(name, None)
    clients._session.cache_clear()
    try:
        yield endpoint
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        clients._session.cache_clear()
        scratch.rmdir()


def reset(endpoint: str) -> None:
    """An empty moto state: the snapshots of a round (hundreds of MiB in moto's memory) are dropped."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()


def publish(ebs, ec2, disk: Path, blocks: BlockMap, parent: ebs_direct.Published | None = None,
            parent_blocks: BlockMap | None = None) -> ebs_direct.Published:
    run_id = f"bench-ebs-{uuid.uuid4().hex[:8]}"
    return ebs_direct.publish(ebs, ec2, disk, blocks, tags={tag_names.MANAGED: "true", tag_names.RUN: run_id},
                              kms_key="", description=f"bench {disk.name}", client_token=run_id,
                              parent_snapshot=parent.snapshot_id if parent else "", parent_blocks=parent_blocks,
                              workers=WORKERS)


def one_round(found: Found, endpoint: str, link: Link | None, scratch: Path) -> None:
    """Cold publish of A, app-only publish of B on top of it, read-back of A's snapshot: each timed."""
    reset(endpoint)
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    if link is not None:
        link.attach(ebs)
        link.attach(ec2)
    kind = "throttled" if link else "loopback"
    log(f"{kind}: cold publish of {found.a.name} ({len(found.map_a.digests)} blocks)")
    found.cold = publish(ebs, ec2, found.a, found.map_a)
    found.run_of(f"{kind} cold").seconds.append(found.cold.seconds)
    log(f"{kind}: app-only publish of {found.b.name} on {found.cold.snapshot_id}")
    found.app = publish(ebs, ec2, found.b, found.map_b, found.cold, found.map_a)
    found.run_of(f"{kind} app").seconds.append(found.app.seconds)
    log(f"{kind}: read-back of {found.cold.snapshot_id}")
    out = scratch / f"readback-{kind}.raw"
    found.readback = ebs_direct.read_snapshot(ebs, found.cold.snapshot_id, out, workers=WORKERS,
                                              size=found.map_a.size)
    found.run_of(f"{kind} read").seconds.append(found.readback.seconds)
    back = block_map(out)
    found.readbacks_same.append(back.size == found.map_a.size and back.digests == found.map_a.digests)
    out.unlink()


def measure(a: Path, b: Path, rounds: int, throttle: bool, model: Model) -> Found:
    log(f"block maps of {a} and {b}")
    found = Found(a, b, block_map(a), block_map(b))
    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="bench-ebs-readback-") as scratch:
        for n in range(rounds):  # alternating: both see the same drift of the machine
            log(f"round {n + 1} of {rounds}")
            one_round(found, endpoint, None, Path(scratch))
            if throttle:
                one_round(found, endpoint, Link(model), Path(scratch))
        reset(endpoint)
    return found


def mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f} MiB"


def rows(found: Found, model: Model) -> tuple[list[tuple], list[str]]:
    """The report's rows (Report.row's arguments) and notes."""
    cold, app, back = found.cold, found.app, found.readback
    assert cold is not None and app is not None and back is not None
    share = app.bytes_sent / cold.bytes_sent
    zeros = sorted(set(found.map_a.digests) - set(found.map_b.digests))
    modelled = {"cold": model.seconds(cold.blocks_sent, cold.bytes_sent, 3),
                "app": model.seconds(app.blocks_sent, app.bytes_sent, 3),
                "read": model.seconds(back.blocks, back.bytes, 1 + back.blocks // ebs_direct.LIST_PAGE),
                "read B": model.seconds(len(found.map_b.digests), len(found.map_b.digests) * BLOCK_SIZE, 1)}
    timed = found.timed

    def thr(key: str) -> str:
        runs = timed.get(f"throttled {key}")
        return f"through the emulated link: {runs.text()}" if runs else "emulated link not run (--no-throttle)"

    def quoted(seconds: float) -> str:
        return f"{seconds / IMAGE_BUILDER_S:.2g} of 25 min, {seconds / PACKER_S:.2g} of 5 min"

    out = [
        ("EBS publish: bytes uploaded, app-only change vs cold", f"{app.blocks_sent} blocks, {mib(app.bytes_sent)}",
         f"cold {cold.blocks_sent} blocks, {mib(cold.bytes_sent)}", f"{share * 100:.2f} %", "≤ 5 %",
         share <= GOAL, f"{len(zeros)} of the app-only blocks sent as zeros; disks {found.a.name} -> {found.b.name}, "
         f"{mib(found.map_a.size)} virtual"),
        ("EBS publish, modelled uplink: cold", f"{modelled['cold']:.1f} s", QUOTED, quoted(modelled["cold"]), "",
         None, thr("cold")),
        ("EBS publish, modelled uplink: app-only change", f"{modelled['app']:.1f} s", QUOTED,
         quoted(modelled["app"]) + f"; app-only/cold {modelled['app'] / modelled['cold']:.3f}", "", None,
         thr("app")),
        ("EBS publish against moto on loopback (measured): cold", f"{median(timed['loopback cold'].seconds):.1f} s",
         "", "", "", None, timed["loopback cold"].text()),
        ("EBS publish against moto on loopback (measured): app-only", f"{median(timed['loopback app'].seconds):.2f} s",
         f"cold {median(timed['loopback cold'].seconds):.1f} s",
         f"{median(timed['loopback app'].seconds) / median(timed['loopback cold'].seconds):.3f}", "", None,
         timed["loopback app"].text()),
        ("verify --target aws read-back of the cold snapshot", f"{back.blocks} blocks, {mib(back.bytes)}; "
         f"modelled {modelled['read']:.1f} s", f"cold publish modelled {modelled['cold']:.1f} s",
         f"{modelled['read'] / modelled['cold']:.2f}", "the disk's own bytes back",
         bool(found.readbacks_same) and all(found.readbacks_same),
         f"loopback {timed['loopback read'].text()}; {thr('read')}"),
    ]
    notes = [
        f"EBS publish model: {model.describe()}. It is a formula over the counted requests and bytes; the "
        "'emulated link' runs send the same requests to moto through botocore hooks that hold each request for "
        "its latency and its bytes on one shared link, so they add bakery's and moto's own time. Image Builder's "
        "25-30 min per image is the seed's figure and Packer amazon-ebs's 5 min or more the usual one: both quoted, "
        "not measured here.",
        f"Read-back: moto does not give a child snapshot its parent's blocks, so the cold snapshot is read back; on "
        f"AWS the app-only version's snapshot lists all its {len(found.map_b.digests)} blocks "
        f"({mib(len(found.map_b.digests) * BLOCK_SIZE)}, modelled {modelled['read B']:.1f} s). The loopback times "
        "share two cores and one Python process (the GIL) between bakery and moto server.",
    ]
    return out, notes


def skipped(reason: str) -> tuple[list[tuple], list[str]]:
    log(f"EBS publish bench skipped: {reason}")
    return [("EBS publish (cold vs app-only, modelled uplink, read-back)", "skipped", "", "", "≤ 5 %", None,
             reason)], []


def disk_of(project: Path, image: str, version: str) -> Path:
    """The raw disk of IMAGE:VERSION, made by `bake.py disk` in `project` when it has none yet."""
    log(f"disk of {image}:{version}")
    cmd = [str(PYTHON), str(BAKE), "--project", str(project), "disk", f"{image}:{version}", "--json"]
    return Path(json.loads(run(cmd, timeout=1800).stdout)["path"])


def from_project(project: Path, image: str, versions: list[str] | None,
                 rounds: int = 1, throttle: bool = True, model: Model = Model()) -> tuple[list[tuple], list[str]]:
    """Rows for two versions of an already baked project (default: its two newest ready ones)."""
    try:
        if not versions:
            listed = json.loads(run([str(PYTHON), str(BAKE), "--project", str(project), "images", image,
                                     "--json"]).stdout)
            versions = [v["version"] for v in listed if v.get("status") == "ready"][1::-1]
            if len(versions) < 2:
                return skipped(f"missing input: {image} in {project} has {len(versions)} ready version(s); two "
                               "(before and after an app-only change) are needed")
        a, b = (disk_of(project, image, v) for v in versions)
    except SystemExit as exc:
        return skipped(f"missing input: the disks of {image} {' and '.join(versions or ['(newest two)'])} in "
                       f"{project} could not be made: {exc}")
    return rows(measure(a, b, rounds, throttle, model), model)


def add_rows(report, project: Path, image: str, old: str, new: str) -> None:
    """For run_all.py: the disks of two versions of its project copy (old -> new an app-only change), one round."""
    found, notes = from_project(project, image, [old, new])
    for row in found:
        report.row(*row)
    report.notes += notes


def markdown(found: list[tuple], notes: list[str]) -> str:
    cols = ("benchmark", "measured", "compared with", "ratio", "target", "met", "runs / spread")
    verdicts = {None: "n/a", True: "yes", False: "**no**"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join([*r[:5], verdicts[r[5]], r[6]]) + " |" for r in found]
    return "\n".join([*lines, "", *notes])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-a", type=Path, help="raw disk before the app-only change")
    parser.add_argument("--disk-b", type=Path, help="raw disk after it")
    parser.add_argument("--project", type=Path, help="an already baked project: its disks are made by bake.py disk")
    parser.add_argument("--image", default="webapp")
    parser.add_argument("--versions", nargs=2, metavar=("OLD", "NEW"), help="default: the two newest ready")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each measurement (default 1)")
    parser.add_argument("--no-throttle", dest="throttle", action="store_false",
                        help="skip the publishes through the emulated link (about 1.5 min a round)")
    args = parser.parse_args()
    model = Model()
    if args.disk_a or args.disk_b:
        missing = [f"--disk-{n} {p or '(not given)'}" for n, p in (("a", args.disk_a), ("b", args.disk_b))
                   if p is None or not p.is_file()]
        found = (skipped(f"missing input: {', '.join(missing)}") if missing
                 else rows(measure(args.disk_a, args.disk_b, args.rounds, args.throttle, model), model))
    elif args.project:
        found = from_project(args.project.resolve(), args.image, args.versions, args.rounds, args.throttle, model)
    else:
        found = skipped("no inputs: give --disk-a and --disk-b, or --project of a baked project")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, {args.rounds} round(s)\n")
    print(markdown(*found))
    return 1 if found[0][0][1] == "skipped" else 0  # nothing measured is no pass


if __name__ == "__main__":
    sys.exit(main())
