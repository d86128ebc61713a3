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


def test_system_boots_to_running(host):
    assert host.run("systemctl is-system-running --wait").stdout.strip() == "running"
