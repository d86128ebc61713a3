"""The aws target's side of `logs` and `top`: CloudWatch Logs and the CloudWatch agent's procstat metrics.

Instances baked with role cloudwatch_agent ship their journal (as JSON lines, so
unit and identifier survive) and the app's log files to the environment's log
group, one log stream per instance id, and publish procstat metrics for the app's
process in the CWAgent namespace with the instance id and Auto Scaling group as
dimensions. This module reads them back:

- logs: filter_log_events on the log group (`/bakery/<env>` unless
  `bakery_deploy.aws.log_group` says otherwise), paginated, merged by timestamp,
  each stream's image version from its instance's AMI tag bakery:version;
- top: the environment's Auto Scaling group (health, lifecycle) and, per instance,
  the latest procstat_cpu_usage, procstat_memory_rss, procstat_num_fds and
  procstat_pid (restarts = how often the pid changed in the last hour).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from bakery.aws import tags
from bakery.errors import OperationError
from bakery.observe.logs import LogLine, LogQuery, from_journal, journal_matches, line_matches
from bakery.observe.top import ProcessRow

NAMESPACE = "CWAgent"
METRICS = {"cpu_percent": "procstat_cpu_usage", "memory_bytes": "procstat_memory_rss", "open_fds": "procstat_num_fds",
           "pid": "procstat_pid"}
PID_WINDOW = timedelta(hours=1)
LOOKBACK_MS = 120_000  # how late (by its own timestamp) an event may reach CloudWatch Logs and still be followed


def log_group(env) -> str:
    """bakery_deploy.aws.log_group (validated by bakery.environments), else the role's default /bakery/<env>."""
    return (env.aws or {}).get("log_group") or f"/bakery/{env.name}"


def asg_name(env) -> str:
    """bakery_deploy.aws.auto_scaling_group: required for target aws, so load_environment has checked it."""
    return env.aws["auto_scaling_group"]


def _clients(project, env, *services: str):
    """Clients in the environment's region (bakery_deploy.aws.region), else bakery.yml's aws.region,
    else the AWS chain's."""
    from bakery.aws.clients import client

    region = (env.aws or {}).get("region") or getattr(project.aws, "region", "") or None
    return [client(service, region) for service in services]


def instance_versions(ec2, instance_ids: list[str]) -> dict[str, str]:
    """instance id -> the bakery:version tag of the AMI it runs ('?' when the instance or the tag is gone)."""
    if not instance_ids:
        return {}
    images: dict[str, str] = {}
    for page in ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": "instance-id",
                                                                           "Values": instance_ids}]):
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                images[instance["InstanceId"]] = instance.get("ImageId", "")
    image_ids = sorted({i for i in images.values() if i})
    versions: dict[str, str] = {}
    if image_ids:
        # A filter, not ImageIds: an AMI deregistered since (gc) is simply absent instead of failing the whole call.
        for image in ec2.describe_images(Filters=[{"Name": "image-id", "Values": image_ids}]).get("Images", []):
            found = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
            versions[image["ImageId"]] = found.get(tags.VERSION, "?")
    return {i: versions.get(images.get(i, ""), "?") for i in instance_ids}


def event_line(event: dict[str, Any], version: str, query: LogQuery) -> LogLine | None:
    """One log event: a journal entry shipped as JSON keeps its unit and time; any other line is taken as it is."""
    instance = event.get("logStreamName", "?")
    message = event.get("message", "")
    entry = None
    if message.startswith("{"):
        try:
            entry = json.loads(message)
        except ValueError:
            entry = None
    if isinstance(entry, dict) and "MESSAGE" in entry:
        if not journal_matches(entry, query):
            return None
        entry.setdefault("__REALTIME_TIMESTAMP", str(int(event.get("timestamp", 0)) * 1000))
        line = from_journal(entry, instance, version, origin="cloudwatch")
    elif query.unit_name:
        return None  # a plain file line names no unit
    else:
        line = LogLine(timestamp_us=int(event.get("timestamp", 0)) * 1000, instance=instance, version=version,
                       source="file", message=message.rstrip("\n"), origin="cloudwatch")
    return line if line is not None and line_matches(line, query) else None


def filter_pattern(grep: str | None) -> str | None:
    """A quoted CloudWatch term matches the text exactly; text with a quote is filtered here instead."""
    return f'"{grep}"' if grep and '"' not in grep else None


class CloudWatchLogs:
    """LogSource over an environment's log group: every stream (instance id) merged in time order."""

    def __init__(self, project, env, logs_client=None, ec2_client=None):
        if logs_client is None or ec2_client is None:
            logs_client, ec2_client = _clients(project, env, "logs", "ec2")
        self.logs, self.ec2 = logs_client, ec2_client
        self.group = log_group(env)
        self.env = env
        self.versions: dict[str, str] = {}
        self.after_ms: int | None = None  # the newest event time seen; polling starts LOOKBACK_MS before it
        # event id -> its time, for events inside the look-back window (never shown twice)
        self.seen: dict[str, int] = {}

    def _events(self, query: LogQuery, start_ms: int) -> list[dict[str, Any]]:
        args: dict[str, Any] = {"logGroupName": self.group, "startTime": start_ms}
        pattern = filter_pattern(query.grep)
        if pattern:
            args["filterPattern"] = pattern
        events = []
        try:
            for page in self.logs.get_paginator("filter_log_events").paginate(**args):
                events += page.get("events", [])
        except self.logs.exceptions.ResourceNotFoundException:
            raise OperationError(f"log group {self.group} does not exist in CloudWatch Logs: "
                                 f"do the instances of {self.env.name} run the cloudwatch_agent role "
                                 "(and may their instance role write logs)?") from None
        return events

    def _lines(self, events: list[dict[str, Any]], query: LogQuery) -> list[list[LogLine]]:
        unknown = sorted({e.get("logStreamName", "") for e in events} - set(self.versions))
        if unknown:
            self.versions.update(instance_versions(self.ec2, [s for s in unknown if s.startswith("i-")]))
        streams: dict[str, list[LogLine]] = {}
        for event in events:
            if event.get("eventId") in self.seen:
                continue
            line = event_line(event, self.versions.get(event.get("logStreamName", ""), "?"), query)
            if line is not None:
                streams.setdefault(line.instance, []).append(line)
        if events:
            self.after_ms = max(self.after_ms or 0, *(int(e.get("timestamp", 0)) for e in events))
            self.seen.update({e["eventId"]: int(e.get("timestamp", 0)) for e in events if e.get("eventId")})
            horizon = self.after_ms - LOOKBACK_MS
            self.seen = {event: at for event, at in self.seen.items() if at >= horizon}
        return list(streams.values())

    def read(self, query: LogQuery) -> list[list[LogLine]]:
        return self._lines(self._events(query, int(query.since.timestamp() * 1000)), query)

    def poll(self, query: LogQuery) -> list[list[LogLine]]:
        since = int(query.since.timestamp() * 1000)
        # Agents send in batches: an event stamped before the newest one seen can arrive later. Look back a while and
        # drop what was shown already (by event id), so a late event is neither skipped nor repeated.
        start = max(since, self.after_ms - LOOKBACK_MS) if self.after_ms is not None else since
        return self._lines(self._events(query, start), query)


def _procstat_metrics(cloudwatch, instance_id: str, unit: str) -> dict[str, dict[str, Any]]:
    """field -> the metric (name + dimensions as the agent emitted them) of this instance's watched process."""
    short = unit.removesuffix(".service")
    found: dict[str, dict[str, Any]] = {}
    for field, name in METRICS.items():
        candidates = []
        for page in cloudwatch.get_paginator("list_metrics").paginate(
                Namespace=NAMESPACE, MetricName=name, Dimensions=[{"Name": "InstanceId", "Value": instance_id}]):
            candidates += page.get("Metrics", [])
        # The agent tags each process it watches with how it found it (pattern, exe or pid_file):
        # prefer the one naming the unit.
        named = [m for m in candidates if any(d["Name"] in ("pattern", "exe", "pid_file") and short in d["Value"]
                                              for d in m.get("Dimensions", []))]
        chosen = (named or candidates)[:1]
        if chosen:
            found[field] = chosen[0]
    return found


def aws_top(project, env, unit: str, now: datetime | None = None, clients: tuple | None = None) -> list[ProcessRow]:
    """One row per instance of the environment's Auto Scaling group, from the procstat metrics of the last hour."""
    autoscaling, ec2, cloudwatch = clients or _clients(project, env, "autoscaling", "ec2", "cloudwatch")
    name = asg_name(env)
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name]).get("AutoScalingGroups", [])
    if not groups:
        raise OperationError(f"Auto Scaling group {name} of environment {env.name} does not exist; "
                             f"deploy the environment first "
                             f"(or name its group in bakery_deploy.aws.auto_scaling_group)")
    members = sorted(groups[0].get("Instances", []), key=lambda i: i["InstanceId"])
    versions = instance_versions(ec2, [m["InstanceId"] for m in members])
    unit_name = unit if "." in unit else f"{unit}.service"
    now = now or datetime.now(UTC)
    rows = []
    for member in members:
        iid = member["InstanceId"]
        row = ProcessRow(instance=iid, version=versions.get(iid, "?"), health=member.get("HealthStatus", "?"),
                         in_service=(member.get("LifecycleState") == "InService"
                                     and member.get("HealthStatus") == "Healthy"),
                         unit=unit_name, state=member.get("LifecycleState", "?"))
        metrics = _procstat_metrics(cloudwatch, iid, unit_name)
        if not metrics:
            row.error = (f"no procstat metrics in {NAMESPACE} for this instance in the last hour "
                         "(is the cloudwatch_agent role baked in?)")
            rows.append(row)
            continue
        queries = [{"Id": f"m{index}",
                    "MetricStat": {"Metric": metric, "Period": 60, "Stat": "Maximum" if field == "pid" else "Average"},
                    "ReturnData": True} for index, (field, metric) in enumerate(metrics.items())]
        fields = list(metrics)
        results = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=now - PID_WINDOW,
                                             EndTime=now + timedelta(minutes=1),
                                             ScanBy="TimestampDescending").get("MetricDataResults", [])
        for result in results:
            field = fields[int(result["Id"][1:])]
            values = [v for _, v in sorted(zip(result.get("Timestamps", []), result.get("Values", []), strict=True),
                                           key=lambda p: p[0])]
            if not values:
                continue
            if field == "pid":
                row.pid = int(values[-1])
                row.restarts = sum(1 for a, b in zip(values, values[1:], strict=False) if a != b)
            elif field == "cpu_percent":
                row.cpu_percent = round(values[-1], 1)
            else:
                setattr(row, field, int(values[-1]))
        rows.append(row)
    return rows

