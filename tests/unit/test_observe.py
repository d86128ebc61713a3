"""logs and top without podman or AWS: --since, journal entries, merging, exports, follow, CloudWatch events, sizes."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from bakery.errors import ConfigError
from bakery.observe import journals
from bakery.observe.cloudwatch import event_line, filter_pattern, log_group
from bakery.observe.logs import LogLine, LogQuery, follow, from_journal, merge
from bakery.observe.since import parse_since
from bakery.observe.top import ProcessRow, human_seconds, parse_size, table

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
EPOCH = datetime(2026, 11, 29, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("10m", NOW - timedelta(minutes=10)), ("2h", NOW - timedelta(hours=2)), ("1d", NOW - timedelta(days=1)),
    ("45s", NOW - timedelta(seconds=45)),
    (" 5m ", NOW - timedelta(minutes=5)),
    ("2026-11-29T10:30:00Z", datetime(2026, 11, 29, 10, 30, tzinfo=UTC)),
    ("2026-11-29T11:30:00+01:00", datetime(2026, 11, 29, 10, 30, tzinfo=UTC)),
    ("2026-11-29 10:30", datetime(2026, 11, 29, 10, 30, tzinfo=UTC)),  # no zone: the instances' zone, UTC
])
def test_since_accepts_durations_and_iso_times(text, expected):
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize(("text", "says"), [("10x", "neither a duration"), ("", "neither a duration"),
                                             ("-5m", "neither a duration"), ("yesterday", "neither a duration"),
                                             ("2026-11-30T00:00:00Z", "in the future")])
def test_since_refuses_anything_else_in_one_line(text, says):
    with pytest.raises(ConfigError, match=says) as caught:
        parse_since(text, NOW)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def entry(seconds: float, message, unit: str = "webapp.service", **extra) -> dict:
    stamp = int((EPOCH + timedelta(seconds=seconds)).timestamp() * 1_000_000)
    return {"__REALTIME_TIMESTAMP": str(stamp), "_SYSTEMD_UNIT": unit, "SYSLOG_IDENTIFIER": "python3", "PRIORITY": "6",
            "MESSAGE": message, "__CURSOR": f"c{seconds}", **extra}


def test_journal_entry_names_its_unit_or_identifier_and_decodes_byte_messages():
    app = from_journal(entry(1, "ready"), "bakery-qa-1", "20261129.001")
    assert (app.source, app.message, app.priority, app.unit) == ("webapp", "ready", 6, "webapp.service")
    assert app.text() == "2026-11-29T00:00:01.000Z bakery-qa-1 20261129.001 webapp: ready"
    init = from_journal(entry(2, "Started webapp.service", unit="init.scope", SYSLOG_IDENTIFIER="systemd"), "i", "v")
    assert init.source == "systemd"
    raw = from_journal(entry(3, list(b"caf\xc3\xa9 \xff")), "i", "v")
    assert raw.message == "café \ufffd"
    assert from_journal({"MESSAGE": "no time"}, "i", "v") is None


def line(instance: str, seconds: float, message: str = "x") -> LogLine:
    return LogLine(timestamp_us=int(seconds * 1_000_000), instance=instance, version="v", source="webapp",
                   message=message)


def test_merge_orders_every_instance_by_time_keeping_each_instances_order_on_ties():
    a = [line("a", 3, "a3"), line("a", 1, "a1"), line("a", 5, "a5-first"), line("a", 5, "a5-second")]
    b = [line("b", 2, "b2"), line("b", 5, "b5"), line("b", 4, "b4")]
    assert [x.message for x in merge([a, b, []])] == ["a1", "b2", "a3", "b4", "a5-first", "a5-second", "b5"]


def query(**kw) -> LogQuery:
    return LogQuery(since=EPOCH + timedelta(seconds=kw.pop("since", 0)), **kw)


def test_an_export_is_read_with_its_header_and_filtered_like_a_live_journal(tmp_path):
    body = [entry(1, "starting marker"), entry(2, "GET /x 200"), entry(3, "marker in cron", unit="cron.service"),
            entry(9, "late marker")]
    path = tmp_path / "bakery-qa-1.jsonl"
    path.write_text(json.dumps({journals.HEADER_KEY: 1, "instance": "bakery-qa-1", "version": "20261129.002"}) + "\n"
                    + "".join(json.dumps(e) + "\n" for e in body) + "not json\n")
    name, lines = journals.read_export(path, query(since=1.5, unit="webapp", grep="marker"))
    assert name == "bakery-qa-1"
    assert [(x.message, x.version, x.origin) for x in lines] == [("late marker", "20261129.002", "export")]
    _, lines = journals.read_export(path, query())
    assert len(lines) == 4


def test_exports_older_than_the_retention_are_pruned(tmp_path):
    old, fresh = tmp_path / "bakery-qa-old.jsonl", tmp_path / "bakery-qa-new.jsonl"
    for path in (old, fresh):
        path.write_text("{}\n")
    now = 2_000_000_000
    os.utime(old, (now - journals.RETENTION - 60, now - journals.RETENTION - 60))
    os.utime(fresh, (now - 60, now - 60))
    assert journals.prune_exports(tmp_path, now) == [old]
    assert not old.exists() and fresh.exists()


def test_local_source_skips_the_export_of_an_instance_still_running(tmp_path):
    (tmp_path / "bakery-qa-1.jsonl").write_text(json.dumps({journals.HEADER_KEY: 1, "instance": "bakery-qa-1",
                                                            "version": "1"}) + "\n"
                                                + json.dumps(entry(1, "from the export")) + "\n")
    (tmp_path / "bakery-qa-2.jsonl").write_text(json.dumps({journals.HEADER_KEY: 1, "instance": "bakery-qa-2",
                                                            "version": "1"}) + "\n"
                                                + json.dumps(entry(1, "replaced one")) + "\n")
    source = journals.LocalJournals(lambda: [], tmp_path)
    assert sorted(x.message for s in source.read(query()) for x in s) == ["from the export", "replaced one"]
    source._read_live = lambda q: ({"bakery-qa-1"}, [])  # bakery-qa-1 is still running: its live journal has everything
    assert [x.message for s in source.read(query()) for x in s] == ["replaced one"]


def test_journalctl_reads_from_since_then_after_the_last_cursor():
    q = query(unit="webapp")
    assert journals.journalctl_args(q) == ["journalctl", "-o", "json", "--no-pager",
                                           "--since", f"@{int(EPOCH.timestamp())}", "-u", "webapp.service"]
    assert journals.journalctl_args(q, "s=abc")[4:6] == ["--after-cursor", "s=abc"]
    lines, cursor = journals.parse_journal(json.dumps(entry(1, "a")) + "\n"
                                           + json.dumps(entry(2, "b", unit="cron.service")), "i", "v", q, "live")
    assert [x.message for x in lines] == ["a"] and cursor == "c2"  # the cursor moves past lines the filter dropped


class ListSource:
    """A LogSource over lists: what each read and poll returns."""

    def __init__(self, first, *polls):
        self.first, self.polls = first, list(polls)

    def read(self, q):
        return self.first

    def poll(self, q):
        if not self.polls:
            raise KeyboardInterrupt
        return self.polls.pop(0)


def test_follow_prints_what_is_there_then_what_arrives_until_interrupted():
    source = ListSource([[line("a", 2, "a2")], [line("b", 1, "b1")]], [[line("b", 4, "b4")], [line("a", 3, "a3")]], [])
    printed = []
    with pytest.raises(KeyboardInterrupt):
        follow(source, query(), lambda x: printed.append(x.message), sleep=lambda s: None)
    assert printed == ["b1", "a2", "a3", "b4"]


def test_cloudwatch_events_keep_journal_units_and_filter_like_local_ones():
    env = SimpleNamespace(name="prod", aws={}, path="inventories/prod")
    assert log_group(env) == "/bakery/prod"
    assert log_group(SimpleNamespace(name="prod", aws={"log_group": "/org/prod-web"}, path="x")) == "/org/prod-web"
    stamp = int((EPOCH + timedelta(seconds=5)).timestamp() * 1000)
    journal = {"logStreamName": "i-1", "timestamp": stamp, "message": json.dumps(entry(5, "marker"))}
    plain = {"logStreamName": "i-2", "timestamp": stamp, "message": "plain marker\n"}
    got = event_line(journal, "v1", query(unit="webapp", grep="marker"))
    assert (got.instance, got.source, got.message, got.origin) == ("i-1", "webapp", "marker", "cloudwatch")
    assert event_line(plain, "v1", query(unit="webapp")) is None  # a file line names no unit
    assert event_line(plain, "v1", query(grep="marker")).message == "plain marker"
    assert event_line(journal, "v1", query(unit="cron")) is None
    assert (filter_pattern("marker-1") == '"marker-1"' and filter_pattern('say "hi"') is None
            and filter_pattern(None) is None)


def test_sizes_durations_and_the_table():
    assert (parse_size("41.99MB") == 41_990_000 and parse_size("40MiB") == 40 * 1024**2 and parse_size("512B") == 512
            and parse_size("?") is None)
    assert (human_seconds(5), human_seconds(125), human_seconds(3 * 3600 + 60), human_seconds(2 * 86400 + 3600)) == (
        "5s", "2m05s", "3h01m", "2d01h")
    rows = [ProcessRow("bakery-qa-1", "20261129.001", "UP", True, "webapp.service", pid=34, state="active/running",
                       cpu_percent=1.25, memory_bytes=23 * 1024**2, restarts=2, uptime_seconds=61, open_fds=6),
            ProcessRow("bakery-qa-2", "20261129.001", "DOWN", False, "webapp.service", error="instance is not running")]
    text = table(rows).splitlines()
    assert text[0].split() == ["INSTANCE", "VERSION", "HEALTH", "UNIT", "PID", "STATE", "CPU%", "MEM", "RESTARTS",
                               "UPTIME", "FDS"]
    assert text[1].split() == ["bakery-qa-1", "20261129.001", "UP", "webapp.service", "34", "active/running", "1.2",
                               "23.0", "MiB", "2", "1m01s", "6"]
    assert text[2].split()[2] == "DOWN*" and text[-1] == "  bakery-qa-2: instance is not running"
