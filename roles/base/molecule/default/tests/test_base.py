"""Checks of the base role; Molecule runs them, and so does bake.py verify on every image with this role."""


def test_base_packages_are_installed(host):
    for name in ("ca-certificates", "tzdata", "locales", "procps"):
        assert host.package(name).is_installed


def test_timezone_is_utc(host):
    assert host.file("/etc/localtime").linked_to == "/usr/share/zoneinfo/Etc/UTC"
    assert host.file("/etc/timezone").content_string.strip() == "Etc/UTC"


def test_locale_is_generated_and_default(host):
    assert "LANG=en_US.UTF-8" in host.file("/etc/default/locale").content_string
    assert "en_US.utf8" in host.run("locale -a").stdout


def test_journal_is_persistent_and_capped(host):
    conf = host.file("/etc/systemd/journald.conf.d/50-bakery.conf")
    assert conf.contains("^Storage=persistent$")
    assert conf.contains("^SystemMaxUse=200M$")
    assert host.file("/var/log/journal").is_directory
    assert host.service("systemd-journald").is_running


def test_apt_lists_are_removed(host):
    lists = host.run("find /var/lib/apt/lists -type f ! -name lock")
    assert lists.stdout.strip() == ""


def test_runtime_config_unit_is_enabled_and_ran_at_boot(host):
    unit = host.service("bakery-runtime-config")
    assert unit.is_enabled
    assert host.file("/run/bakery/runtime.env").exists
    assert host.file("/run/bakery/runtime.env").mode == 0o600


def test_runtime_config_is_applied_from_the_launch_file(host):
    """Runs the applier on scratch paths, so it also runs safely on a verify instance whose launch file is
    read-only."""
    run = ("BAKERY_LAUNCH_FILE=/tmp/launch.env BAKERY_RUNTIME_FILE=/tmp/bakery-test/runtime.env "
           "/usr/local/libexec/bakery/bakery-runtime-config")
    try:
        host.run("printf '# qa settings\\nENVIRONMENT=qa\\nLOG_LEVEL=debug\\n' > /tmp/launch.env")
        applied = host.run(run)
        assert applied.rc == 0, applied.stdout + applied.stderr
        content = host.file("/tmp/bakery-test/runtime.env").content_string
        assert 'ENVIRONMENT="qa"' in content and 'LOG_LEVEL="debug"' in content
        assert host.file("/tmp/bakery-test/runtime.env").mode == 0o600
        host.run("printf 'not a key value line\\n' > /tmp/launch.env")
        refused = host.run(run)
        assert refused.rc != 0
        assert "/tmp/launch.env:1: expected KEY=VALUE" in refused.stdout
        # the grammar: split at LF only, no control characters, UTF-8 (tests/unit/test_runtime_grammar.py)
        for hostile, says in (("NOTE=\"ok\\rBREAK_GLASS_SSH=true\"\\n", "NOTE has '\\x0d' (a control character)"),
                              ("NOTE=\"caf\\351\"\\n", "is not UTF-8")):
            host.run(f"rm -rf /tmp/bakery-test && printf '{hostile}' > /tmp/launch.env")
            refused = host.run(run)
            assert refused.rc == 1 and says in refused.stdout and "Traceback" not in refused.stdout + refused.stderr
            assert not host.file("/tmp/bakery-test/runtime.env").exists
    finally:
        host.run("rm -rf /tmp/launch.env /tmp/bakery-test")


def test_botocore_is_baked_for_the_aws_parameters(host):
    clients = ("import botocore.session; s = botocore.session.get_session(); "
               "[s.create_client(n, region_name='eu-west-1', aws_access_key_id='x', aws_secret_access_key='y') "
               "for n in ('ssm', 'secretsmanager', 'sts')]")
    assert host.run(f'/usr/bin/python3 -c "{clients}"').rc == 0


def test_only_the_botocore_models_the_applier_uses_are_installed(host):
    models = "/usr/lib/python3/dist-packages/botocore/data"
    assert host.file(f"{models}/ssm").is_directory and host.run(f"ls {models}/ssm").stdout.strip()
    assert host.run(f"ls {models}/ec2").stdout.strip() == ""  # excluded by /etc/dpkg/dpkg.cfg.d/bakery-botocore-models
    kib = int(host.run("du -sk /usr/lib/python3/dist-packages/botocore").stdout.split()[0])
    assert kib < 20 * 1024, f"botocore takes {kib} KiB"


def test_the_refresh_timer_is_enabled_and_the_applier_reloads_its_unit(host):
    assert host.service("bakery-runtime-refresh.timer").is_enabled
    assert host.file("/usr/local/libexec/bakery/bakery_runtime/flows.py").exists
    props = host.run("systemctl show bakery-runtime-config -p ExecReload").stdout
    assert "/bin/true" in props
    assert host.file("/run/bakery/params.json").exists
    assert host.file("/run/bakery/params.json").mode == 0o644


def test_references_resolve_from_a_local_store_and_refresh(host):
    """The applier on scratch paths and a scratch store (so it runs on a verify instance too): a reference
    resolved, a missing one refused naming the key, a refresh that changed a value calling systemctl."""
    env = ("BAKERY_LAUNCH_FILE=/tmp/bkp/launch.env BAKERY_RUNTIME_FILE=/tmp/bkp/run/runtime.env "
           "BAKERY_PARAMS_DIR=/tmp/bkp/store BAKERY_SYSTEMCTL=/bin/true ")
    run = env + "/usr/local/libexec/bakery/bakery-runtime-config"
    record = '{"name": "/t/flag", "type": "String", "value": "%s", "version": %d}'
    try:
        host.run("rm -rf /tmp/bkp && mkdir -p /tmp/bkp/store/ssm/t")
        host.run(f"printf '{record % ('true', 1)}' > /tmp/bkp/store/ssm/t/flag.json")
        host.run("printf 'BAKERY_PARAMS=\"local\"\\nBAKERY_REFRESH=\"FLAG=5\"\\nFLAG=\"ssm:/t/flag\"\\n' "
                 "> /tmp/bkp/launch.env")
        applied = host.run(run)
        assert applied.rc == 0, applied.stdout + applied.stderr
        assert host.file("/tmp/bkp/run/runtime.env").content_string == 'FLAG="true"\n'
        host.run(f"printf '{record % ('false', 2)}' > /tmp/bkp/store/ssm/t/flag.json && sleep 5")
        refreshed = host.run(run + " --refresh")
        assert refreshed.rc == 0 and "changed: FLAG" in refreshed.stdout, refreshed.stdout + refreshed.stderr
        assert host.file("/tmp/bkp/run/runtime.env").content_string == 'FLAG="false"\n'
        host.run("rm /tmp/bkp/store/ssm/t/flag.json")
        missing = host.run(run)
        assert missing.rc == 1 and "cannot resolve FLAG (ssm:/t/flag)" in missing.stdout
    finally:
        host.run("rm -rf /tmp/bkp")


def test_system_boots_to_running(host):
    assert host.run("systemctl is-system-running --wait").stdout.strip() == "running"
