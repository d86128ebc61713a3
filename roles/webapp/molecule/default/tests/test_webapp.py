"""Checks of the webapp role: Molecule runs them, and bake.py verify runs them on every image with this role."""

import json

FETCH = (
    "import json, sys, urllib.request, urllib.error\n"
    "req = urllib.request.Request(sys.argv[1], data=(sys.argv[3].encode() if len(sys.argv) > 3 else None), "
    "method=sys.argv[2])\n"
    "try:\n"
    "    r = urllib.request.urlopen(req, timeout=5)\n"
    "    print(json.dumps({'status': r.status, 'body': r.read().decode()}))\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(json.dumps({'status': e.code, 'body': e.read().decode()}))\n"
)


def http(host, path, method="GET", body=None):
    args = [FETCH, f"http://127.0.0.1:8080{path}", method] + ([body] if body is not None else [])
    out = host.run("python3 -c " + " ".join(_quote(a) for a in args))
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def _quote(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"


def test_service_user_cannot_log_in(host):
    user = host.user("webapp")
    assert user.exists and user.shell == "/usr/sbin/nologin"
    assert user.password in ("!", "*", "!*")


def test_service_is_enabled_running_and_listening(host):
    service = host.service("webapp")
    assert service.is_enabled and service.is_running
    assert host.socket("tcp://0.0.0.0:8080").is_listening


def test_service_is_sandboxed(host):
    props = host.run("systemctl show webapp -p ProtectSystem -p NoNewPrivileges -p PrivateTmp -p ReadWritePaths "
                     "-p Restart -p User -p Type").stdout
    for expected in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "ReadWritePaths=/var/lib/webapp",
                     "Restart=on-failure", "User=webapp", "Type=notify"):
        assert expected in props


def test_artifact_is_installed_with_its_checksum(host):
    current = host.file("/opt/webapp/current")
    assert current.is_symlink
    sha = current.linked_to.rsplit("/", 1)[-1]
    archive = host.file(f"/opt/webapp/artifacts/{sha}.tar.gz")
    assert archive.exists and archive.sha256sum == sha
    assert host.file("/opt/webapp/current/webapp/__init__.py").exists


def test_health_and_data_round_trip(host):
    assert http(host, "/health")["status"] == 200
    assert http(host, "/items/molecule-check", "PUT", "kept")["status"] == 201
    assert http(host, "/items/molecule-check")["body"] == "kept"
    assert host.file("/var/lib/webapp").user == "webapp"
    assert http(host, "/items/molecule-check", "DELETE")["status"] in (200, 204)


def test_runtime_config_is_read_at_start_not_baked(host):
    """Restores whatever runtime config the instance had, so it also runs safely on a verify instance."""
    host.run("mkdir -p /run/bakery && touch /run/bakery/runtime.env "
             "&& cp -p /run/bakery/runtime.env /run/bakery/runtime.env.saved")
    try:
        host.run("printf 'ENVIRONMENT=\"molecule-check\"\\n' > /run/bakery/runtime.env")
        assert host.run("systemctl restart webapp").rc == 0
        assert json.loads(http(host, "/version")["body"])["environment"] == "molecule-check"
    finally:
        host.run("mv /run/bakery/runtime.env.saved /run/bakery/runtime.env")
        host.run("systemctl restart webapp")
    assert "qa" not in host.file("/etc/systemd/system/webapp.service").content_string


def test_a_reload_rereads_feature_flags_without_a_restart(host):
    """bakery-runtime-refresh reloads bakery-runtime-config.service when a parameter changed; the reload reaches
    webapp (ReloadPropagatedFrom=), which copies the runtime file and re-reads its flags on SIGHUP. Restores the
    instance's runtime config, so it also runs safely on a verify instance."""
    props = host.run("systemctl show webapp -p ReloadPropagatedFrom -p RuntimeDirectory -p MainPID").stdout
    assert "ReloadPropagatedFrom=bakery-runtime-config.service" in props and "RuntimeDirectory=webapp" in props
    pid = host.run("systemctl show webapp -p MainPID --value").stdout.strip()
    host.run("mkdir -p /run/bakery && touch /run/bakery/runtime.env "
             "&& cp -p /run/bakery/runtime.env /run/bakery/runtime.env.saved")
    try:
        host.run("cp -p /run/bakery/runtime.env.saved /run/bakery/runtime.env "
                 "&& printf 'FEATURE_MOLECULE_CHECK=\"true\"\\n' >> /run/bakery/runtime.env")
        # the base role's unit where it is baked (an image, a verify instance); webapp's own reload in the scenario,
        # which converges webapp alone
        base = host.file("/etc/systemd/system/bakery-runtime-config.service").exists
        assert host.run(f"systemctl reload {'bakery-runtime-config' if base else 'webapp'}.service").rc == 0
        host.run("sleep 1")
        assert json.loads(http(host, "/version")["body"])["features"].get("molecule_check") is True
        assert host.file("/run/webapp/runtime.env").user == "webapp"
        assert host.file("/run/webapp/runtime.env").mode == 0o600
        assert host.run("systemctl show webapp -p MainPID --value").stdout.strip() == pid
    finally:
        host.run("mv /run/bakery/runtime.env.saved /run/bakery/runtime.env")
        host.run("systemctl reload webapp")


def test_service_restarts_on_failure(host):
    before = int(host.run("systemctl show webapp -p NRestarts --value").stdout.strip())
    host.run("systemctl kill -s KILL webapp")
    # RestartSec=2, then the app must report ready (Type=notify): poll, since an emulated VM on a busy host needs
    # longer than a fixed sleep allows
    host.run("timeout 60 sh -c 'until systemctl is-active -q webapp && "
             f"[ \"$(systemctl show webapp -p NRestarts --value)\" -gt {before} ]; do sleep 0.5; done'")
    after = int(host.run("systemctl show webapp -p NRestarts --value").stdout.strip())
    assert after == before + 1
    assert host.service("webapp").is_running
