"""Checks of the cloudwatch_agent role: Molecule runs them, and bake.py verify runs them on every image with this role.

The agent itself is not installed here (only package registries are reachable, not AWS's
S3): these check the configuration that is baked, how it is made final at boot, and that
its units skip cleanly on an instance that is a container.
"""

import json

TEMPLATE = "/etc/bakery/cloudwatch-agent.json.tmpl"
RENDERER = "/usr/local/libexec/bakery/cloudwatch-agent-config"
UNITS = ("bakery-cloudwatch-agent-config.service", "bakery-journal-export.service")


def collect_list(config):
    return config["logs"]["logs_collected"]["files"]["collect_list"]


def baked(host):
    return json.loads(host.file(TEMPLATE).content_string)


def test_template_is_json_shipping_the_journal_per_instance_to_an_environment_group(host):
    files = collect_list(baked(host))
    assert "/var/log/bakery/journal.jsonl" in [f["file_path"] for f in files]
    for entry in files:
        assert entry["log_group_name"] == "/bakery/@ENVIRONMENT@" and entry["log_stream_name"] == "{instance_id}"


def test_procstat_watches_the_app_process(host):
    metrics = baked(host)["metrics"]
    watched = [p for p in metrics["metrics_collected"]["procstat"] if "webapp" in p.get("pattern", "")]
    assert watched and {"cpu_usage", "memory_rss", "num_fds", "pid"} <= set(watched[0]["measurement"])
    assert metrics["namespace"] == "CWAgent"
    assert metrics["append_dimensions"]["InstanceId"] == "${aws:InstanceId}"
    assert metrics["append_dimensions"]["AutoScalingGroupName"] == "${aws:AutoScalingGroupName}"


def render(host, runtime_env):
    """Run the boot-time renderer on a runtime config fixture: (exit code, stderr, the rendered config or None)."""
    tmp = host.run("mktemp -d").stdout.strip()
    try:
        host.run(f"printf '%s' '{runtime_env}' > {tmp}/runtime.env")
        out = host.run(f"{RENDERER} --runtime-env {tmp}/runtime.env --template {TEMPLATE} "
                       f"--output {tmp}/agent.json --no-start")
        rendered = host.file(f"{tmp}/agent.json")
        return out.rc, out.stderr, json.loads(rendered.content_string) if rendered.exists else None
    finally:
        host.run(f"rm -rf {tmp}")


def test_log_group_is_named_from_the_runtime_config_at_boot(host):
    rc, _, config = render(host, 'ENVIRONMENT="qa"\nLOG_LEVEL="info"\n')
    assert rc == 0 and {f["log_group_name"] for f in collect_list(config)} == {"/bakery/qa"}
    assert config["metrics"] == baked(host)["metrics"]
    rc, _, config = render(host, 'ENVIRONMENT="qa"\nCLOUDWATCH_LOG_GROUP="/org/qa-web"\n')
    assert rc == 0 and {f["log_group_name"] for f in collect_list(config)} == {"/org/qa-web"}


def test_a_runtime_config_that_cannot_name_a_group_is_refused_without_output(host):
    for runtime_env, says in (('LOG_LEVEL="info"\n', "has no ENVIRONMENT"),
                              ('ENVIRONMENT="q a"\n', "not a valid CloudWatch Logs group name")):
        rc, stderr, config = render(host, runtime_env)
        assert rc == 1 and says in stderr and stderr.count("\n") == 1 and config is None


def test_units_are_enabled_and_skip_cleanly_in_a_container(host):
    for unit in UNITS:
        assert host.service(unit).is_enabled
        assert host.run(f"systemctl start {unit}").rc == 0
        props = host.run(f"systemctl show {unit} -p ConditionResult -p ActiveState").stdout
        assert "ConditionResult=no" in props and "ActiveState=inactive" in props
    exporter = host.run("systemctl show bakery-journal-export.service -p ExecStart").stdout
    assert "journalctl" in exporter and "--output=json" in exporter and "--cursor-file=" in exporter
