"""Publishing a raw disk as an EBS snapshot through the EBS direct APIs, and reading a snapshot back.

Against moto server (real HTTP) for the round trip, the incremental publish and the look-ups; moto 5's EBS backend
ignores ParentSnapshotId, Encrypted and every checksum, so what it cannot answer realistically (a checksum refused,
throttling, a snapshot in state `error`, a block that arrives damaged) goes through botocore's Stubber, which checks
each request and answer against the service model.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path

import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from moto.core import DEFAULT_ACCOUNT_ID

from bakery.aws import clients, ebs_direct, tags
from bakery.aws.disk_blocks import BLOCK_SIZE, ZERO_BLOCK, block_map
from bakery.errors import Interrupted, OperationError
from bakery.signals import Cancellation

pytestmark = pytest.mark.aws

GIB = 1024 ** 3
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
RUN = "20261203T101010-build-4242"
TAGS = {tags.MANAGED: "true", tags.IMAGE: "webapp", tags.VERSION: "1.2.3", tags.RUN: RUN}


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Sent:
    """The parameters of every request of some operations, as bakery passed them (before serialisation)."""

    def __init__(self, client, *operations: str):
        self.calls: dict[str, list[dict]] = {op: [] for op in operations}
        for op in operations:
            client.meta.events.register(f"provide-client-params.{client.meta.service_model.service_id.hyphenize()}"
                                        f".{op}", self._record)

    def _record(self, params, model, **_):
        if model.name in self.calls:
            self.calls[model.name].append({k: v for k, v in params.items() if k != "BlockData"})


def write_disk(path: Path, size: int, blocks: dict[int, bytes]) -> Path:
    """A sparse raw disk: `blocks` (index -> bytes at the block's start), holes elsewhere."""
    with path.open("r+b" if path.exists() else "wb") as f:
        f.truncate(size)
        for index, data in blocks.items():
            f.seek(index * BLOCK_SIZE)
            f.write(data)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def linear(blocks: dict[int, bytes]) -> str:
    """The aggregated checksum as AWS defines LINEAR, computed here independently of bakery."""
    joined = b"".join(hashlib.sha256(blocks[i].ljust(BLOCK_SIZE, b"\0")).digest() for i in sorted(blocks))
    return base64.b64encode(hashlib.sha256(joined).digest()).decode()


def cold_disk(tmp_path: Path) -> tuple[Path, dict[int, bytes]]:
    blocks = {0: os.urandom(BLOCK_SIZE), 1: os.urandom(BLOCK_SIZE), 7: b"partial block" * 100,
              100: os.urandom(BLOCK_SIZE), 50: ZERO_BLOCK, 2047: os.urandom(BLOCK_SIZE)}
    disk = write_disk(tmp_path / "disk.raw", GIB, blocks)
    return disk, {i: d for i, d in blocks.items() if d != ZERO_BLOCK}


def publish(ebs, ec2, disk: Path, **kwargs):
    options = {"tags": TAGS, "kms_key": KMS_KEY, "description": "webapp 1.2.3", "client_token": f"{RUN}-0",
               "sleep": Sleeps()} | kwargs
    return ebs_direct.publish(ebs, ec2, disk, block_map(disk), **options)


def snapshot_state(ec2, snapshot_id: str) -> str | None:
    found = ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}])["Snapshots"]
    return found[0]["State"] if found else None


def test_cold_publish_then_read_back_gives_the_same_disk(aws, tmp_path):
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    disk, blocks = cold_disk(tmp_path)
    sent = Sent(ebs, "StartSnapshot", "PutSnapshotBlock", "CompleteSnapshot")
    published = publish(ebs, ec2, disk, workers=4, timeout=7200)
    assert (published.blocks_sent, published.blocks_total, published.parent) == (5, 5, "")
    assert published.bytes_sent == 5 * BLOCK_SIZE
    [start] = sent.calls["StartSnapshot"]
    assert start == {"VolumeSize": 1, "Encrypted": True, "KmsKeyArn": KMS_KEY, "Tags": tags.as_tag_list(TAGS),
                     "Description": "webapp 1.2.3", "ClientToken": f"{RUN}-0", "Timeout": 120}
    puts = sorted(sent.calls["PutSnapshotBlock"], key=lambda p: p["BlockIndex"])
    assert [p["BlockIndex"] for p in puts] == sorted(blocks)  # the zero block (50) and the holes are not sent
    for put in puts:
        data = blocks[put["BlockIndex"]].ljust(BLOCK_SIZE, b"\0")
        assert put["Checksum"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
        assert (put["ChecksumAlgorithm"], put["DataLength"]) == ("SHA256", BLOCK_SIZE)
    assert sent.calls["CompleteSnapshot"] == [{
        "SnapshotId": published.snapshot_id, "ChangedBlocksCount": 5, "Checksum": linear(blocks),
        "ChecksumAlgorithm": "SHA256", "ChecksumAggregationMethod": "LINEAR"}]
    [snapshot] = ec2.describe_snapshots(SnapshotIds=[published.snapshot_id])["Snapshots"]
    assert snapshot["State"] == "completed" and tags.from_tag_list(snapshot["Tags"]) == TAGS

    readback = ebs_direct.read_snapshot(ebs, published.snapshot_id, tmp_path / "back.raw", workers=3)
    assert (readback.blocks, readback.bytes, readback.size) == (5, 5 * BLOCK_SIZE, GIB)
    assert sha256_file(tmp_path / "back.raw") == sha256_file(disk)
    assert os.stat(tmp_path / "back.raw").st_blocks * 512 < 8 * BLOCK_SIZE  # written sparse, not 1 GiB of zeros


def test_read_back_to_the_disks_own_size(aws, tmp_path):
    """A disk that is not a whole number of GiB reads back byte for byte when its size is given."""
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    blocks = {0: os.urandom(BLOCK_SIZE), 5: b"end of disk"}
    disk = write_disk(tmp_path / "small.raw", 5 * BLOCK_SIZE + 4096, blocks)
    published = publish(ebs, ec2, disk)
    out = tmp_path / "back.raw"
    ebs_direct.read_snapshot(ebs, published.snapshot_id, out, size=disk.stat().st_size)
    assert sha256_file(out) == sha256_file(disk)
    with pytest.raises(OperationError, match=r"block 5 .* beyond the disk's size of 2621440 bytes"):
        ebs_direct.read_snapshot(ebs, published.snapshot_id, tmp_path / "short.raw", size=5 * BLOCK_SIZE)
    assert not (tmp_path / "short.raw").exists()


def test_incremental_publish_sends_only_changed_blocks_and_zeros_for_vanished_ones(aws, tmp_path):
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    disk, blocks = cold_disk(tmp_path)
    cold_map = block_map(disk)
    cold = publish(ebs, ec2, disk)
    changed = {7: b"the app changed" * 100, 200: os.urandom(BLOCK_SIZE), 100: ZERO_BLOCK}
    write_disk(disk, GIB, changed)
    sent = Sent(ebs, "StartSnapshot", "PutSnapshotBlock", "CompleteSnapshot")
    incremental = publish(ebs, ec2, disk, parent_snapshot=cold.snapshot_id, parent_blocks=cold_map,
                          client_token=f"{RUN}-1")
    assert (incremental.blocks_sent, incremental.blocks_total, incremental.parent) == (3, 5, cold.snapshot_id)
    assert incremental.bytes_sent == 3 * BLOCK_SIZE
    [start] = sent.calls["StartSnapshot"]
    assert start["ParentSnapshotId"] == cold.snapshot_id and start["KmsKeyArn"] == KMS_KEY
    assert "Encrypted" not in start  # AWS refuses Encrypted with ParentSnapshotId: the parent's encryption carries on
    assert sorted(p["BlockIndex"] for p in sent.calls["PutSnapshotBlock"]) == [7, 100, 200]
    [complete] = sent.calls["CompleteSnapshot"]
    assert complete["ChangedBlocksCount"] == 3
    assert len(changed[7]) > len(blocks[7])  # block 7 is the new text only
    assert complete["Checksum"] == linear({7: changed[7], 100: ZERO_BLOCK, 200: changed[200]})
    # moto keeps only what this snapshot was sent (it ignores the parent): exactly the changed blocks, 100 as zeros
    listed = ebs.list_snapshot_blocks(SnapshotId=incremental.snapshot_id)["Blocks"]
    assert sorted(b["BlockIndex"] for b in listed) == [7, 100, 200]
    zero = ebs.get_snapshot_block(SnapshotId=incremental.snapshot_id, BlockIndex=100,
                                  BlockToken=next(b["BlockToken"] for b in listed if b["BlockIndex"] == 100))
    assert zero["BlockData"].read() == ZERO_BLOCK


def test_an_unchanged_disk_publishes_no_block(aws, tmp_path):
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    disk, _ = cold_disk(tmp_path)
    cold = publish(ebs, ec2, disk)
    again = publish(ebs, ec2, disk, parent_snapshot=cold.snapshot_id, parent_blocks=block_map(disk))
    assert (again.blocks_sent, again.bytes_sent, again.blocks_total) == (0, 0, 5)


def test_a_parent_without_its_block_map_is_refused_before_anything_starts(aws, tmp_path):
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    disk, _ = cold_disk(tmp_path)
    with pytest.raises(OperationError, match="snap-0123 .* block map"):
        publish(ebs, ec2, disk, parent_snapshot="snap-0123")
    assert ec2.describe_snapshots(OwnerIds=["self"], Filters=tags_filter(TAGS))["Snapshots"] == []


def real_snapshot(volume_gib: int = 1) -> str:
    """A pending EBS direct snapshot in moto (made by the test, so that a stubbed StartSnapshot can hand it out)."""
    started = clients.client("ebs").start_snapshot(VolumeSize=volume_gib, Tags=tags.as_tag_list(TAGS))
    return started["SnapshotId"]


def started(snapshot_id: str) -> dict:
    return {"SnapshotId": snapshot_id, "Status": "pending", "VolumeSize": 1, "BlockSize": BLOCK_SIZE}


def one_block_disk(tmp_path: Path) -> Path:
    return write_disk(tmp_path / "one.raw", 4 * BLOCK_SIZE, {2: b"one block of data"})


def test_a_refused_checksum_fails_naming_the_block_and_deletes_the_snapshot(aws, tmp_path):
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    snapshot = real_snapshot()
    with Stubber(ebs) as stub:
        stub.add_response("start_snapshot", started(snapshot))
        stub.add_client_error("put_snapshot_block", service_error_code="ValidationException", http_status_code=400,
                              service_message="The checksum of the block data does not match the Checksum header",
                              expected_params={"SnapshotId": snapshot, "BlockIndex": 2, "BlockData": ANY,
                                               "DataLength": BLOCK_SIZE, "Checksum": ANY,
                                               "ChecksumAlgorithm": "SHA256", "Progress": ANY})
        with pytest.raises(OperationError) as caught:
            publish(ebs, ec2, one_block_disk(tmp_path), workers=1)
        stub.assert_no_pending_responses()
    message = str(caught.value)
    assert "block 2" in message and "does not match" in message and "\n" not in message
    assert snapshot_state(ec2, snapshot) is None  # deleted: nothing registers an AMI over it


def test_throttling_on_put_snapshot_block_is_retried_until_it_succeeds(aws, tmp_path):
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    snapshot = real_snapshot()
    sleeps = Sleeps()
    with Stubber(ebs) as stub:
        stub.add_response("start_snapshot", started(snapshot))
        stub.add_client_error("put_snapshot_block", service_error_code="RequestThrottledException",
                              http_status_code=400, service_message="Rate exceeded")
        stub.add_client_error("put_snapshot_block", service_error_code="ThrottlingException",
                              http_status_code=400, service_message="Rate exceeded")
        stub.add_response("put_snapshot_block", {"Checksum": "x", "ChecksumAlgorithm": "SHA256"})
        stub.add_response("complete_snapshot", {"Status": "pending"})
        published = publish(ebs, ec2, one_block_disk(tmp_path), workers=1, sleep=sleeps)
        stub.assert_no_pending_responses()
    assert (published.snapshot_id, published.blocks_sent) == (snapshot, 1)
    assert len(sleeps) == 2 and sleeps[0] < sleeps[1]  # bounded backoff between the throttled attempts
    assert snapshot_state(ec2, snapshot) == "completed"


def test_a_snapshot_not_yet_writable_just_after_it_started_is_retried(aws, tmp_path):
    """Real EBS can answer the first blocks of a fresh snapshot with ResourceNotFoundException (AWS's own uploader,
    awslabs/coldsnap src/upload.rs, retries every block for that reason); moto never does."""
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    snapshot = real_snapshot()
    sleeps = Sleeps()
    with Stubber(ebs) as stub:
        stub.add_response("start_snapshot", started(snapshot))
        stub.add_client_error("put_snapshot_block", service_error_code="ResourceNotFoundException",
                              http_status_code=404, service_message=f"The snapshot '{snapshot}' does not exist.")
        stub.add_client_error("put_snapshot_block", service_error_code="InternalServerException",
                              http_status_code=500, service_message="internal error")
        stub.add_response("put_snapshot_block", {"Checksum": "x", "ChecksumAlgorithm": "SHA256"})
        stub.add_response("complete_snapshot", {"Status": "pending"})
        published = publish(ebs, ec2, one_block_disk(tmp_path), workers=1, sleep=sleeps)
        stub.assert_no_pending_responses()
    assert (published.snapshot_id, published.blocks_sent) == (snapshot, 1) and len(sleeps) == 2


def test_endless_throttling_gives_up_with_one_line_and_deletes_the_snapshot(aws, tmp_path):
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    snapshot = real_snapshot()
    with Stubber(ebs) as stub:
        stub.add_response("start_snapshot", started(snapshot))
        for _ in range(ebs_direct.THROTTLED_ATTEMPTS):
            stub.add_client_error("put_snapshot_block", service_error_code="RequestThrottledException",
                                  http_status_code=400, service_message="Rate exceeded")
        with pytest.raises(OperationError, match=r"block 2 .*still throttled after \d+ attempts"):
            publish(ebs, ec2, one_block_disk(tmp_path), workers=1)
    assert snapshot_state(ec2, snapshot) is None


def test_a_snapshot_in_state_error_fails_and_is_deleted(aws, tmp_path):
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    with Stubber(ebs) as ebs_stub, Stubber(ec2) as ec2_stub:
        ebs_stub.add_response("start_snapshot", started("snap-0abc"))
        ebs_stub.add_response("put_snapshot_block", {"Checksum": "x", "ChecksumAlgorithm": "SHA256"})
        ebs_stub.add_response("complete_snapshot", {"Status": "pending"})
        ec2_stub.add_response("describe_snapshots", {"Snapshots": [{"SnapshotId": "snap-0abc", "State": "pending"}]})
        ec2_stub.add_response("describe_snapshots", {"Snapshots": [
            {"SnapshotId": "snap-0abc", "State": "error", "StateMessage": "Snapshot creation failed"}]})
        ec2_stub.add_response("delete_snapshot", {}, expected_params={"SnapshotId": "snap-0abc"})
        with pytest.raises(OperationError, match=r"snapshot snap-0abc .*error.*Snapshot creation failed"):
            publish(ebs, ec2, one_block_disk(tmp_path), workers=1)
        ec2_stub.assert_no_pending_responses()


@pytest.mark.parametrize("code", ["IncorrectState", "UnauthorizedOperation"])
def test_a_snapshot_that_cannot_be_deleted_is_named_for_gc(aws, tmp_path, code):
    """The failure that stopped the upload is what is reported, with the snapshot left for gc (deleting a pending
    snapshot may be refused; a policy may deny it): the refusal to delete never hides the first failure."""
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    with Stubber(ebs) as ebs_stub, Stubber(ec2) as ec2_stub:
        ebs_stub.add_response("start_snapshot", started("snap-0abc"))
        ebs_stub.add_client_error("put_snapshot_block", service_error_code="ValidationException",
                                  http_status_code=400, service_message="checksum mismatch")
        ec2_stub.add_client_error("delete_snapshot", service_error_code=code, http_status_code=400,
                                  service_message="Snapshot is in a pending state")
        with pytest.raises(OperationError) as caught:
            publish(ebs, ec2, one_block_disk(tmp_path), workers=1)
    message = str(caught.value)
    assert "block 2" in message and "snap-0abc" in message and f"bakery:run={RUN}" in message and "gc" in message


def test_a_refused_completion_is_one_line_and_deletes_the_snapshot(aws, tmp_path):
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    snapshot = real_snapshot()
    with Stubber(ebs) as stub:
        stub.add_response("start_snapshot", started(snapshot))
        stub.add_response("put_snapshot_block", {"Checksum": "x", "ChecksumAlgorithm": "SHA256"})
        stub.add_client_error("complete_snapshot", service_error_code="ValidationException", http_status_code=400,
                              service_message="The aggregated checksum does not match")
        with pytest.raises(OperationError, match=rf"EBS refused snapshot {snapshot}: ValidationException: The agg"):
            publish(ebs, ec2, one_block_disk(tmp_path), workers=1)
    assert snapshot_state(ec2, snapshot) is None


def test_refused_start_and_read_back_of_an_unknown_snapshot_are_one_line(aws, tmp_path):
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    with Stubber(ebs) as stub:
        stub.add_client_error("start_snapshot", service_error_code="ValidationException", http_status_code=400,
                              service_message="Snapshot quota exceeded")
        stub.add_client_error("list_snapshot_blocks", service_error_code="ResourceNotFoundException",
                              http_status_code=404, service_message="The snapshot does not exist")
        with pytest.raises(OperationError, match=r"EBS refused StartSnapshot \(1 GiB, parent none\): Validation"):
            publish(ebs, ec2, one_block_disk(tmp_path))
        with pytest.raises(OperationError, match=r"ListSnapshotBlocks of snapshot snap-0abc: ResourceNotFound"):
            ebs_direct.read_snapshot(ebs, "snap-0abc", tmp_path / "back.raw")
    assert not (tmp_path / "back.raw").exists()


class CancelAfter(Cancellation):
    """A cancellation that is requested after `calls` looks (as if Ctrl-C arrived mid-upload)."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def __call__(self) -> bool:
        self.calls -= 1
        if self.calls < 0:
            self.requested, self.signal_name = True, "SIGINT"
        return self.requested


def test_a_cancel_mid_upload_deletes_the_snapshot(aws, tmp_path):
    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    disk, _ = cold_disk(tmp_path)
    sent = Sent(ebs, "PutSnapshotBlock", "CompleteSnapshot")
    with pytest.raises(Interrupted):
        publish(ebs, ec2, disk, workers=1, cancel=CancelAfter(2))
    assert 0 < len(sent.calls["PutSnapshotBlock"]) < 5 and sent.calls["CompleteSnapshot"] == []
    assert ec2.describe_snapshots(OwnerIds=["self"], Filters=tags_filter(TAGS))["Snapshots"] == []


def tags_filter(wanted: dict[str, str]) -> list[dict]:
    return [{"Name": f"tag:{k}", "Values": [v]} for k, v in wanted.items()]


def streamed(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


def checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_read_back_pages_through_the_block_list_and_refuses_a_damaged_block(aws, tmp_path):
    ebs = clients.client("ebs")
    good, bad = os.urandom(BLOCK_SIZE), os.urandom(BLOCK_SIZE)
    out = tmp_path / "back.raw"
    with Stubber(ebs) as stub:
        stub.add_response("list_snapshot_blocks", {"Blocks": [{"BlockIndex": 3, "BlockToken": "t3"}],
                                                   "VolumeSize": 1, "BlockSize": BLOCK_SIZE, "NextToken": "page2"},
                          expected_params={"SnapshotId": "snap-0abc", "MaxResults": ANY})
        stub.add_response("list_snapshot_blocks", {"Blocks": [{"BlockIndex": 9, "BlockToken": "t9"}],
                                                   "VolumeSize": 1, "BlockSize": BLOCK_SIZE},
                          expected_params={"SnapshotId": "snap-0abc", "MaxResults": ANY, "NextToken": "page2"})
        stub.add_response("get_snapshot_block", {"BlockData": streamed(good), "DataLength": BLOCK_SIZE,
                                                 "Checksum": checksum(good), "ChecksumAlgorithm": "SHA256"},
                          expected_params={"SnapshotId": "snap-0abc", "BlockIndex": 3, "BlockToken": "t3"})
        for _ in range(ebs_direct.READ_ATTEMPTS):  # a damaged block is asked for again, then refused
            stub.add_response("get_snapshot_block", {"BlockData": streamed(bad), "DataLength": BLOCK_SIZE,
                                                     "Checksum": checksum(good), "ChecksumAlgorithm": "SHA256"},
                              expected_params={"SnapshotId": "snap-0abc", "BlockIndex": 9, "BlockToken": "t9"})
        with pytest.raises(OperationError, match=r"block 9 of snapshot snap-0abc .*checksum"):
            ebs_direct.read_snapshot(ebs, "snap-0abc", out, workers=1)
        stub.assert_no_pending_responses()
    assert not out.exists()  # no partial disk left to be mistaken for the snapshot


def test_run_snapshots_and_leftovers(aws, tmp_path):
    from moto.ec2.models import ec2_backends

    ebs, ec2 = clients.client("ebs"), clients.client("ec2")
    disk, _ = cold_disk(tmp_path)
    done = publish(ebs, ec2, disk).snapshot_id
    pending = real_snapshot()  # a run killed mid-upload: moto shows EBS direct snapshots as completed at once,
    backend = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]  # so the test puts it back to what EC2 would show
    backend.snapshots[pending].status = "pending"
    other = clients.client("ebs").start_snapshot(VolumeSize=1, Tags=tags.as_tag_list({tags.MANAGED: "true"}))
    backend.snapshots[other["SnapshotId"]].status = "error"  # managed but of no run: not this module's to judge
    assert sorted(s["SnapshotId"] for s in ebs_direct.run_snapshots(ec2, RUN)) == sorted([done, pending])
    assert ebs_direct.run_snapshots(ec2, "another-run") == []
    assert [s["SnapshotId"] for s in ebs_direct.leftover_snapshots(ec2)] == [pending]
