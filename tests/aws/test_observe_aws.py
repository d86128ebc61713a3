"""`bake.py logs` and `top` on the aws target, against moto server: CloudWatch Logs streams and CWAgent procstat
metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
import yaml

from bakery.aws import tags
from bakery.config import Project
from bakery.environments import load_environment
from bakery.observe.cloudwatch import CloudWatchLogs
from bakery.observe.logs import LogQuery, merge
from tests.conftest import bake

pytestmark = pytest.mark.aws

ENV = "awsobs"
GROUP = "bakery-awsobs"


def write_aws_env(project: Path, **aws) -> None:
    folder = project / "inventories" / ENV / "group_vars" / "all"
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"target": "aws", "image": "sample", "instances": 2,
                "aws": {"auto_scaling_group": GROUP, "launch_template": "bakery-awsobs", **aws}}
    (folder / "deploy.yml").write_text(yaml.safe_dump({"bakery_deploy": settings}))


def launch_two(version: str = "20261129.007") -> list[str]:
    """An AMI tagged as bakery tags its versions, and two instances of it in an Auto Scaling group."""
    ec2 = boto3.client("ec2")
    ami = ec2.register_image(Name=f"sample-{version}", RootDeviceName="/dev/xvda", VirtualizationType="hvm")["ImageId"]
    ec2.create_tags(Resources=[ami],
                    Tags=[{"Key": tags.IMAGE, "Value": "sample"}, {"Key": tags.VERSION, "Value": version}])
    template = ec2.create_launch_template(LaunchTemplateName="bakery-awsobs",
                                          LaunchTemplateData={"ImageId": ami, "InstanceType": "t3.small"})
    autoscaling = boto3.client("autoscaling")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=GROUP, MinSize=2, MaxSize=2, DesiredCapacity=2,
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplate"]["LaunchTemplateId"]},
        AvailabilityZones=["us-east-1a"])
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0]
    return sorted(i["InstanceId"] for i in group["Instances"])


def journal_event(at: datetime, unit: str, message: str) -> dict:
    stamp = int(at.timestamp() * 1000)
    entry = {"__REALTIME_TIMESTAMP": str(stamp * 1000), "_SYSTEMD_UNIT": unit, "SYSLOG_IDENTIFIER": "python3",
             "PRIORITY": "6", "MESSAGE": message}
    return {"timestamp": stamp, "message": json.dumps(entry)}


def test_logs_merges_instance_streams_in_time_order_with_grep(aws, proj):
    write_aws_env(proj)
    first, second = launch_two()
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName=f"/bakery/{ENV}")
    start = datetime.now(UTC) - timedelta(minutes=3)
    events = {
        first: [journal_event(start, "webapp.service", "marker one"),
                journal_event(start + timedelta(seconds=20), "webapp.service", "other"),
                journal_event(start + timedelta(seconds=40), "cron.service", "marker from cron"),
                {"timestamp": int((start + timedelta(seconds=50)).timestamp() * 1000),
                 "message": "plain file line marker"}],
        second: [journal_event(start + timedelta(seconds=10), "webapp.service", "marker two"),
                 journal_event(start + timedelta(seconds=30), "webapp.service", "marker three")],
    }
    for stream, batch in events.items():
        logs.create_log_stream(logGroupName=f"/bakery/{ENV}", logStreamName=stream)
        logs.put_log_events(logGroupName=f"/bakery/{ENV}", logStreamName=stream, logEvents=batch)

    out = bake(proj, "logs", "--env", ENV, "--grep", "marker", "--since", "10m", "--json")
    assert out.rc == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(line["instance"], line["message"]) for line in lines] == [
        (first, "marker one"), (second, "marker two"), (second, "marker three"), (first, "marker from cron"),
        (first, "plain file line marker")]
    assert ({line["version"] for line in lines} == {"20261129.007"}
            and {line["origin"] for line in lines} == {"cloudwatch"})

    out = bake(proj, "logs", "--env", ENV, "--grep", "marker", "--unit", "webapp", "--since", "10m")
    assert out.rc == 0, out.stderr
    assert [line.split(" ", 1)[1] for line in out.stdout.splitlines()] == [
        f"{first} 20261129.007 webapp: marker one", f"{second} 20261129.007 webapp: marker two",
        f"{second} 20261129.007 webapp: marker three"]

    # everything is older than a minute
    out = bake(proj, "logs", "--env", ENV, "--since", "1m", "--grep", "marker", "--json")
    assert out.rc == 0 and out.stdout == ""

    # --follow polls from the newest event seen: only what arrives later, never a line twice.
    source = CloudWatchLogs(None, load_environment(Project.discover(str(proj)), ENV), logs, boto3.client("ec2"))
    query = LogQuery(since=start - timedelta(minutes=1), grep="marker")
    assert len(merge(source.read(query))) == 5 and merge(source.poll(query)) == []
    logs.put_log_events(logGroupName=f"/bakery/{ENV}", logStreamName=second,
                        logEvents=[journal_event(start + timedelta(seconds=90), "webapp.service", "marker four")])
    assert [(x.instance, x.message) for x in merge(source.poll(query))] == [(second, "marker four")]
    assert merge(source.poll(query)) == []
    # An agent's batch arrives late: stamped before the newest line shown, it is still followed, once.
    logs.put_log_events(logGroupName=f"/bakery/{ENV}", logStreamName=first,
                        logEvents=[journal_event(start + timedelta(seconds=80), "webapp.service", "marker late")])
    assert [(x.instance, x.message) for x in merge(source.poll(query))] == [(first, "marker late")]
    assert merge(source.poll(query)) == []

    # gc deregistered the AMI the instances were launched from: their lines still show, with an unknown version.
    ec2 = boto3.client("ec2")
    ec2.deregister_image(ImageId=ec2.describe_images(Owners=["self"])["Images"][0]["ImageId"])
    out = bake(proj, "logs", "--env", ENV, "--grep", "marker", "--since", "10m", "--json")
    assert out.rc == 0, out.stderr
    assert {json.loads(line)["version"] for line in out.stdout.splitlines()} == {"?"}


def test_logs_of_an_environment_without_its_log_group_is_one_line(aws, proj):
    write_aws_env(proj)
    out = bake(proj, "logs", "--env", ENV)
    assert out.rc == 1 and out.stderr.count("\n") == 1 and f"log group /bakery/{ENV} does not exist" in out.stderr


def test_top_reads_the_procstat_metrics_of_every_instance(aws, proj):
    write_aws_env(proj)
    first, second = launch_two()
    cloudwatch = boto3.client("cloudwatch")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    pids = {first: [401, 401, 401], second: [512, 512, 777]}  # the second instance's app restarted once
    for instance, series in pids.items():
        for minutes_ago, pid in zip((3, 2, 1), series, strict=True):
            dims = [{"Name": "pattern", "Value": "-m webapp"}, {"Name": "pid_finder", "Value": "native"},
                    {"Name": "InstanceId", "Value": instance}, {"Name": "AutoScalingGroupName", "Value": GROUP}]
            at = now - timedelta(minutes=minutes_ago)
            cloudwatch.put_metric_data(Namespace="CWAgent", MetricData=[
                {"MetricName": "procstat_cpu_usage", "Dimensions": dims, "Timestamp": at,
                 "Value": 2.5 if instance == first else 40.0},
                {"MetricName": "procstat_memory_rss", "Dimensions": dims, "Timestamp": at, "Value": 23_000_000},
                {"MetricName": "procstat_num_fds", "Dimensions": dims, "Timestamp": at, "Value": 6 + minutes_ago},
                {"MetricName": "procstat_pid", "Dimensions": dims, "Timestamp": at, "Value": pid},
            ])

    out = bake(proj, "top", "--env", ENV, "--json")
    assert out.rc == 0, out.stderr
    rows = {row["instance"]: row for row in out.json["instances"]}
    assert sorted(rows) == [first, second]
    assert (rows[first]["pid"], rows[first]["restarts"], rows[first]["cpu_percent"]) == (401, 0, 2.5)
    assert (rows[second]["pid"], rows[second]["restarts"], rows[second]["cpu_percent"]) == (777, 1, 40.0)
    # the latest datapoint, not an older one
    assert rows[first]["open_fds"] == 7 and rows[first]["memory_bytes"] == 23_000_000
    assert ({(r["version"], r["health"], r["unit"]) for r in rows.values()}
            == {("20261129.007", "Healthy", "webapp.service")})

    out = bake(proj, "top", "--env", ENV)
    assert out.rc == 0 and first in out.stdout and "777" in out.stdout and "21.9 MiB" in out.stdout  # 23 000 000 bytes
