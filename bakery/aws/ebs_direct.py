"""A local raw disk becomes an EBS snapshot, and a snapshot becomes a local raw disk, through the EBS direct APIs.

No build instance: StartSnapshot, one PutSnapshotBlock per non-zero 512 KiB block
(in a bounded thread pool, each block with its SHA-256), CompleteSnapshot with the
aggregated checksum, then a wait until EC2 shows the snapshot `completed`. On top
of a parent snapshot only the blocks whose content differs are sent, and zeros
where the parent had data that is gone. A publish that fails or is cancelled
deletes its snapshot, so nothing can register an AMI over a partial one; what
cannot be deleted carries the run's bakery:run tag for gc (leftover_snapshots).
Reading back (for `verify --target aws`) lists the snapshot's blocks and checks
each block's checksum before it is written into a sparse file.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bakery.aws import tags as tag_names
from bakery.aws.amis import backoff, snapshot_ids
from bakery.aws.disk_blocks import BLOCK_SIZE, ZERO_BLOCK, BlockMap, changed_blocks, read_block
from bakery.errors import Interrupted, OperationError
from bakery.progress import Progress

log = logging.getLogger("bakery.aws.ebs_direct")

GIB = 1024 ** 3
THROTTLED = {"ThrottlingException", "RequestThrottledException", "TooManyRequestsException"}
THROTTLED_ATTEMPTS = 6  # on top of botocore's adaptive retries: each attempt is already up to 10 HTTP requests
# A fresh snapshot may refuse its first blocks for a moment ("does not exist"): AWS's own uploader retries every
# block for that reason (awslabs/coldsnap src/upload.rs, SNAPSHOT_BLOCK_ATTEMPTS); a 500 is retried with them.
NOT_YET = {"ResourceNotFoundException", "InternalServerException"}
THROTTLE_FIRST, THROTTLE_MAX = 0.5, 8.0
READ_ATTEMPTS = 3  # a block whose data does not match its checksum is asked for again (AWS: "retry your request")
LIST_PAGE = 10000  # ListSnapshotBlocks' largest page
TIMEOUT_MINUTES = (10, 4320)  # StartSnapshot's Timeout range
Cancel = Callable[[], bool]  # bakery.signals.Cancellation, or anything that says whether to stop


@dataclass
class Published:
    snapshot_id: str
    blocks_sent: int  # data blocks and zero blocks written
    bytes_sent: int
    blocks_total: int  # the disk's non-zero blocks
    seconds: float
    parent: str


@dataclass
class Readback:
    blocks: int
    bytes: int  # downloaded
    seconds: float
    size: int  # of the local disk written


def checksum(digest: bytes) -> str:
    """The EBS direct APIs' block checksum: base64 of the raw SHA-256 digest."""
    return base64.b64encode(digest).decode()


def linear_checksum(digests: dict[int, bytes]) -> str:
    """CompleteSnapshot's aggregated checksum, ChecksumAggregationMethod LINEAR: "arrange the checksums for each
    written block in ascending order of their block index, concatenate them to form a single string, and then
    generate the checksum on the entire string using the SHA256 algorithm" (EBS API reference, CompleteSnapshot,
    https://docs.aws.amazon.com/ebs/latest/APIReference/API_CompleteSnapshot.html). The checksums concatenated are
    the raw 32-byte digests, as AWS's own uploader does (awslabs/coldsnap src/upload.rs), and the result is base64."""
    joined = b"".join(digests[index] for index in sorted(digests))
    return checksum(hashlib.sha256(joined).digest())


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _refused(exc: ClientError, what: str) -> OperationError:
    """One line for an EBS answer that is no success: the operation, the code and AWS's message."""
    message = exc.response.get("Error", {}).get("Message", "")
    return OperationError(f"EBS refused {what}: {_code(exc)}{f': {message}' if message else ''}")


def _check(cancel: Cancel | None) -> None:
    if cancel is not None and cancel():
        raise Interrupted(f"interrupted by {getattr(cancel, 'signal_name', '') or 'a cancel request'}")


def _retry_throttled(call: Callable[[], Any], what: str, sleep: Callable[[float], None],
                     also: frozenset[str] = frozenset()) -> Any:
    """`call`, again after a growing pause while EBS still throttles it once botocore's own retries gave up (or
    answers one of the codes in `also`)."""
    delays = backoff(THROTTLE_FIRST, THROTTLE_MAX)
    for attempt in range(1, THROTTLED_ATTEMPTS + 1):
        try:
            return call()
        except ClientError as exc:
            if _code(exc) not in THROTTLED | also:
                raise
            if attempt == THROTTLED_ATTEMPTS:
                how = "throttled" if _code(exc) in THROTTLED else "refused"
                raise OperationError(f"EBS: {what} is still {how} after {attempt} attempts ({_code(exc)}); "
                                     "try again later or with fewer workers") from exc
            sleep(next(delays))
    raise AssertionError("unreachable")


def _bounded(client, workers: int) -> int:
    """At most as many workers as the client keeps connections (botocore's default 10), at least one."""
    return max(1, min(workers, getattr(client.meta.config, "max_pool_connections", None) or 10))


def _in_pool(indexes: list[int], work: Callable[[int], Any], *, workers: int, cancel: Cancel | None,
             progress: Progress | None, label: str) -> dict[int, Any]:
    """Run `work` for every index in a bounded pool; the first failure (or a cancel) stops the blocks not yet
    started and waits for those in flight before it is raised."""
    stop = threading.Event()

    def guarded(index: int) -> Any:
        if stop.is_set():
            return None
        _check(cancel)
        return work(index)

    results: dict[int, Any] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bakery-ebs") as pool:
        futures = {pool.submit(guarded, index): index for index in indexes}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                _check(cancel)
                done, total = len(results), len(indexes)
                if progress is not None and (done == total or done * 10 // total != (done - 1) * 10 // total):
                    progress.note(f"{label}: {done}/{total} blocks ({done * BLOCK_SIZE // 2 ** 20} MiB)")
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


class _Uploader:
    """PutSnapshotBlock for one block: read, check against the block map, send with its checksum."""

    def __init__(self, ebs, fd: int, disk: Path, snapshot_id: str, blocks: BlockMap, total: int,
                 sleep: Callable[[float], None]):
        self.ebs, self.fd, self.disk, self.snapshot_id = ebs, fd, disk, snapshot_id
        self.blocks, self.total, self.sleep = blocks, total, sleep
        self.started = 0
        self.lock = threading.Lock()

    def put(self, index: int) -> bytes:
        expected = self.blocks.digests.get(index)
        data = ZERO_BLOCK if expected is None else read_block(self.fd, index)
        digest = hashlib.sha256(data).digest()
        if expected is not None and digest.hex() != expected:
            raise OperationError(f"disk {self.disk} changed since its block map was made (block {index}); "
                                 "make the disk again")
        with self.lock:
            self.started += 1
            percent = self.started * 100 // self.total
        params = {"SnapshotId": self.snapshot_id, "BlockIndex": index, "BlockData": data,
                  "DataLength": BLOCK_SIZE, "Checksum": checksum(digest), "ChecksumAlgorithm": "SHA256",
                  "Progress": percent}
        what = f"block {index} of snapshot {self.snapshot_id}"
        try:
            _retry_throttled(lambda: self.ebs.put_snapshot_block(**params), what, self.sleep, frozenset(NOT_YET))
        except ClientError as exc:
            raise _refused(exc, f"{what} from {self.disk}") from exc
        return digest


def _start(ebs, blocks: BlockMap, *, tags_wanted: dict[str, str], kms_key: str, description: str,
           client_token: str, parent_snapshot: str, parent_blocks: BlockMap | None, timeout: float) -> str:
    size = max(blocks.size, parent_blocks.size if parent_blocks is not None else 0)
    params: dict[str, Any] = {"VolumeSize": max(1, math.ceil(size / GIB)),
                              "Timeout": min(max(math.ceil(timeout / 60), TIMEOUT_MINUTES[0]), TIMEOUT_MINUTES[1])}
    if parent_snapshot:
        # Encrypted must not be given with ParentSnapshotId (ValidationException): an encrypted parent's
        # snapshot is encrypted, with KmsKeyArn when given, else with the parent's key
        params["ParentSnapshotId"] = parent_snapshot
    else:
        params["Encrypted"] = True
    optional = {"KmsKeyArn": kms_key, "Tags": tag_names.as_tag_list(tags_wanted), "Description": description,
                "ClientToken": client_token}
    params |= {key: value for key, value in optional.items() if value}
    try:
        return ebs.start_snapshot(**params)["SnapshotId"]
    except ClientError as exc:
        raise _refused(exc, f"StartSnapshot ({params['VolumeSize']} GiB, parent {parent_snapshot or 'none'})") from exc


def publish(ebs, ec2, disk: Path, blocks: BlockMap, *, tags: dict[str, str], kms_key: str, description: str,
            client_token: str, parent_snapshot: str = "", parent_blocks: BlockMap | None = None, workers: int = 8,
            progress: Progress | None = None, cancel: Cancel | None = None, timeout: float = 3600,
            sleep: Callable[[float], None] = time.sleep) -> Published:
    """Upload `disk` (whose map is `blocks`) as a new snapshot and wait until it is completed.

    On top of `parent_snapshot` (whose disk's map is `parent_blocks`) only changed blocks are sent."""
    if parent_snapshot and parent_blocks is None:
        raise OperationError(f"cannot publish on parent snapshot {parent_snapshot} without its disk's block map; "
                             "publish without a parent")
    started = time.monotonic()
    data, zeros = changed_blocks(blocks, parent_blocks if parent_snapshot else None)
    order = sorted([*data, *zeros])
    snapshot_id = _start(ebs, blocks, tags_wanted=tags, kms_key=kms_key, description=description,
                         client_token=client_token, parent_snapshot=parent_snapshot, parent_blocks=parent_blocks,
                         timeout=timeout)
    log.info("snapshot %s started for %s: %d blocks to send (%d as zeros)", snapshot_id, disk, len(order), len(zeros))
    try:
        fd = os.open(disk, os.O_RDONLY)
        try:
            uploader = _Uploader(ebs, fd, disk, snapshot_id, blocks, len(order), sleep)
            digests = _in_pool(order, uploader.put, workers=_bounded(ebs, workers), cancel=cancel, progress=progress,
                               label=f"publish {snapshot_id}")
        finally:
            os.close(fd)
        _check(cancel)
        completion: dict[str, Any] = {"SnapshotId": snapshot_id, "ChangedBlocksCount": len(digests)}
        if digests:
            completion |= {"Checksum": linear_checksum(digests), "ChecksumAlgorithm": "SHA256",
                           "ChecksumAggregationMethod": "LINEAR"}
        ebs.complete_snapshot(**completion)
        wait_completed(ec2, snapshot_id, timeout=timeout, sleep=sleep, cancel=cancel)
    except BaseException as exc:
        left = discard(ec2, snapshot_id, tags.get(tag_names.RUN, ""))
        failure = _refused(exc, f"snapshot {snapshot_id}") if isinstance(exc, ClientError) else exc
        if left and isinstance(failure, Exception):
            raise OperationError(f"{failure}; {left}") from exc
        if left:
            log.warning("%s", left)
        if failure is not exc:
            raise failure from exc
        raise
    return Published(snapshot_id=snapshot_id, blocks_sent=len(order), bytes_sent=len(order) * BLOCK_SIZE,
                     blocks_total=len(blocks.digests), seconds=time.monotonic() - started, parent=parent_snapshot)


def wait_completed(ec2, snapshot_id: str, *, timeout: float, sleep: Callable[[float], None] = time.sleep,
                   cancel: Cancel | None = None) -> dict[str, Any]:
    """Describe the snapshot until EC2 shows it `completed`; `error` (or the deadline) fails with one line."""
    deadline = time.monotonic() + timeout
    state = "not visible"
    for delay in backoff():
        try:
            found = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        except ClientError as exc:
            if _code(exc) != "InvalidSnapshot.NotFound":
                raise
            found = []
        if found:
            state = found[0].get("State", "unknown")
            if state == "completed":
                return found[0]
            if state == "error":
                reason = found[0].get("StateMessage") or "no reason given"
                raise OperationError(f"snapshot {snapshot_id} ended in state error: {reason}; publish again")
        if time.monotonic() + delay > deadline:
            raise OperationError(f"snapshot {snapshot_id} is still {state} after {timeout:.0f} s; publish again")
        sleep(delay)
        _check(cancel)
    raise AssertionError("unreachable")


def discard(ec2, snapshot_id: str, run_id: str = "") -> str:
    """Delete a snapshot this run started; '' when it is gone, else a sentence saying what is left for gc."""
    try:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    except ClientError as exc:
        if _code(exc) == "InvalidSnapshot.NotFound":
            return ""
        why = _code(exc)
    except (BotoCoreError, OperationError) as exc:  # AccessDenied, the endpoint out of reach
        why = f"{type(exc).__name__}: {exc}"
    else:
        log.info("deleted snapshot %s", snapshot_id)
        return ""
    tag = f" (tag {tag_names.RUN}={run_id})" if run_id else ""
    return f"snapshot {snapshot_id}{tag} could not be deleted ({why}); ./bake.py gc --target aws removes it"


def list_blocks(ebs, snapshot_id: str) -> tuple[dict[int, str], int]:
    """({block index: block token}, volume size in GiB) of a snapshot, every page."""
    blocks: dict[int, str] = {}
    volume_gib, token = 0, ""
    while True:
        try:
            page = ebs.list_snapshot_blocks(SnapshotId=snapshot_id, MaxResults=LIST_PAGE,
                                            **({"NextToken": token} if token else {}))
        except ClientError as exc:
            raise _refused(exc, f"ListSnapshotBlocks of snapshot {snapshot_id}") from exc
        # the block size is not read from the answer: the EBS direct APIs only know 512 KiB (moto says 512)
        volume_gib = page.get("VolumeSize") or volume_gib
        blocks |= {block["BlockIndex"]: block["BlockToken"] for block in page.get("Blocks", [])}
        token = page.get("NextToken") or ""
        if not token:
            return blocks, volume_gib


class _Reader:
    """GetSnapshotBlock for one block: checksum checked, written at its offset unless it is all zeros."""

    def __init__(self, ebs, fd: int, snapshot_id: str, tokens: dict[int, str], size: int,
                 sleep: Callable[[float], None]):
        self.ebs, self.fd, self.snapshot_id, self.tokens = ebs, fd, snapshot_id, tokens
        self.size, self.sleep = size, sleep

    def fetch(self, index: int) -> bytes:
        what = f"block {index} of snapshot {self.snapshot_id}"
        for _ in range(READ_ATTEMPTS):
            try:
                answer = _retry_throttled(lambda: self.ebs.get_snapshot_block(
                    SnapshotId=self.snapshot_id, BlockIndex=index, BlockToken=self.tokens[index]), what, self.sleep)
            except ClientError as exc:
                raise _refused(exc, what) from exc
            data = answer["BlockData"].read()
            if checksum(hashlib.sha256(data).digest()) == answer.get("Checksum"):
                return data
            log.warning("%s arrived with data that does not match its checksum; asking again", what)
        raise OperationError(f"{what} arrived {READ_ATTEMPTS} times with data that does not match its checksum; "
                             "read it back again later")

    def get(self, index: int) -> int:
        data = self.fetch(index)
        offset = index * BLOCK_SIZE
        keep = max(0, min(len(data), self.size - offset))
        if keep < len(data) and data[keep:].count(0) != len(data) - keep:
            raise OperationError(f"snapshot {self.snapshot_id} holds data in block {index} at byte {offset + keep}, "
                                 f"beyond the disk's size of {self.size} bytes")
        if data[:keep] != ZERO_BLOCK[:keep]:
            os.pwrite(self.fd, data[:keep], offset)  # zeros are left as holes: the disk stays sparse
        return len(data)


def read_snapshot(ebs, snapshot_id: str, out: Path, *, workers: int = 8, progress: Progress | None = None,
                  cancel: Cancel | None = None, size: int | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> Readback:
    """Read a snapshot into the sparse raw disk `out`: VolumeSize GiB, or `size` bytes (the local disk's own
    size, when it is no whole number of GiB). A damaged block fails it and leaves no partial disk behind."""
    started = time.monotonic()
    tokens, volume_gib = list_blocks(ebs, snapshot_id)
    disk_size = volume_gib * GIB if size is None else size
    if disk_size > volume_gib * GIB:
        raise OperationError(f"snapshot {snapshot_id} holds {volume_gib} GiB, less than the {disk_size} bytes "
                             "asked for")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, disk_size)
        reader = _Reader(ebs, fd, snapshot_id, tokens, disk_size, sleep)
        sizes = _in_pool(sorted(tokens), reader.get, workers=_bounded(ebs, workers), cancel=cancel, progress=progress,
                         label=f"read back {snapshot_id}")
        os.fsync(fd)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return Readback(blocks=len(sizes), bytes=sum(sizes.values()), seconds=time.monotonic() - started, size=disk_size)


def _snapshots(ec2, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pages = ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=filters)
    return [snapshot for page in pages for snapshot in page["Snapshots"]]


def run_snapshots(ec2, run_id: str) -> list[dict[str, Any]]:
    """The snapshots a run started (tagged bakery:run=run_id), in any state: what an interrupted run left."""
    return _snapshots(ec2, [{"Name": f"tag:{tag_names.RUN}", "Values": [run_id]}])


def leftover_snapshots(ec2, states: Iterable[str] = ("pending", "error")) -> list[dict[str, Any]]:
    """bakery's snapshots of some run, in one of `states`, that no AMI uses: uploads that died (for gc).

    Whether their run is still going is the caller's to judge (the bakery:run tag names it)."""
    found = _snapshots(ec2, [{"Name": f"tag:{tag_names.MANAGED}", "Values": ["true"]},
                             {"Name": "status", "Values": list(states)}])
    candidates = [s for s in found if tag_names.RUN in tag_names.from_tag_list(s.get("Tags"))]
    if not candidates:
        return []
    pages = ec2.get_paginator("describe_images").paginate(Owners=["self"])
    used = {snapshot for page in pages for image in page["Images"] for snapshot in snapshot_ids(image)}
    return [s for s in candidates if s["SnapshotId"] not in used]
