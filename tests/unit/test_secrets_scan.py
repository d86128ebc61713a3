"""The scan's façade: findings name path, rule, line and layer, and never carry the secret."""

from __future__ import annotations

import json

import pytest

from bakery.verify.secret_content import CONTENT_RULE_NAMES
from bakery.verify.secrets import RULE_NAMES, Finding, load_allowlist, scan_layer, scan_tree
from tests.unit.test_secret_archives import PEM, pipe, tar_bytes, zip_bytes

pytestmark = pytest.mark.unit

FAKE_AWS_ID = "AKIA" + "QYLPMN5HFIQRBXZW"  # split so this file is not itself a finding
SHADOW_HASH = "$6$rounds=5000$" + "saltsalt$Zq1wXn0pYt7LmQ4rVb2Kc9Hs5Dg8Fj3Ae6Wu1Io0Py"
DOCKER_AUTH = "ZGVwbG95OnRvcHNlY3JldA" + "=="
KUBE_TOKEN = "eyJhbGciOiJSUzI1NiJ9" + ".kubetoken"
NPM_TOKEN = "npm_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def tree(root, files):
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def test_every_rule_names_the_path(tmp_path):
    tree(tmp_path, {
        "etc/app/key.pem": PEM,
        "opt/app/config.ini": f"id={FAKE_AWS_ID}\n",
        "srv/repo/.git/config": "[core]\n",
        "root/.bash_history": "ls\n",
        "home/u/.netrc": "machine x login y\n",
        "home/u/.pgpass": "*:*:*:u:p\n",
        "etc/ansible/vault.yml": "db: plain\n",
        "etc/ssh/ssh_host_ed25519_key": "key\n",
        "etc/ok.txt": "nothing to see\n",
    })
    findings = scan_tree(tmp_path, [])
    found = {(f.path, f.rule if f.rule not in CONTENT_RULE_NAMES else "content", f.line) for f in findings}
    assert found == {
        ("/etc/app/key.pem", "content", 1), ("/opt/app/config.ini", "content", 1),
        ("/srv/repo/.git", "git-directory", None), ("/root/.bash_history", "shell-history", None),
        ("/home/u/.netrc", "netrc", None), ("/home/u/.pgpass", "pgpass", None),
        ("/etc/ansible/vault.yml", "decrypted-vault", None), ("/etc/ssh/ssh_host_ed25519_key", "ssh-host-key", None),
    }


def test_an_encrypted_vault_is_not_a_decrypted_one(tmp_path):
    tree(tmp_path, {"etc/ansible/vault.yml": "$ANSIBLE_VAULT;1.1;AES256\n6162\n"})
    assert [f for f in scan_tree(tmp_path, []) if f.rule not in CONTENT_RULE_NAMES] == []


def test_the_allowlist_takes_care_of_false_positives(tmp_path):
    (tmp_path / "allow.yml").write_text("- path: etc/app/*.pem\n  rule: private-key\n  reason: a test key\n")
    entries = load_allowlist(tmp_path / "allow.yml")
    tree(tmp_path / "root", {"etc/app/key.pem": PEM, "etc/other.pem": PEM, "etc/app/sub/key.pem": PEM})
    assert sorted(f.path for f in scan_tree(tmp_path / "root", entries)) == ["/etc/app/sub/key.pem", "/etc/other.pem"]


def test_findings_carry_the_layer_and_serialise():
    findings = scan_layer(pipe(tar_bytes([("root/.bash_history", "ls\n")])), "sha256:0123", [])
    assert findings == [Finding("/root/.bash_history", "shell-history", None, "sha256:0123",
                                "a shell or tool history is baked in")]
    assert json.loads(json.dumps([f.to_dict() for f in findings])) == [
        {"path": "/root/.bash_history", "rule": "shell-history", "line": None, "layer": "sha256:0123",
         "detail": "a shell or tool history is baked in"}]


def test_text_is_one_printable_line():
    finding = Finding("/etc/a\nb\udcff", "netrc", 3, "sha256:1", "a credentials file is baked in")
    assert finding.text() == "/etc/a\\nb\\xff:3: netrc: a credentials file is baked in (layer sha256:1)"


def test_no_output_carries_a_secret():
    secrets = [FAKE_AWS_ID, SHADOW_HASH, DOCKER_AUTH, KUBE_TOKEN, NPM_TOKEN, PEM.splitlines()[1]]
    kube = f"kind: Config\nusers:\n- name: a\n  user:\n    token: {KUBE_TOKEN}\n"
    files = [
        ("etc/shadow", f"app:{SHADOW_HASH}:19000:0:99999:7:::\n"),
        ("root/.docker/config.json", json.dumps({"auths": {"r.example.org": {"auth": DOCKER_AUTH}}})),
        ("root/.kube/config", kube),
        ("home/u/.npmrc", f"//registry.npmjs.org/:_authToken={NPM_TOKEN}\n"),
        ("opt/app/settings.ini", f"key={FAKE_AWS_ID}\n"),
        ("opt/app/key.pem", PEM),
    ]
    archive = zip_bytes(dict(files))
    findings = scan_layer(pipe(tar_bytes([*files, ("opt/backup.zip", archive)])), "sha256:1", [])
    assert len(findings) >= 2 * len(files)
    output = repr(findings) + json.dumps([f.to_dict() for f in findings]) + "\n".join(f.text() for f in findings)
    for secret in secrets:
        assert secret not in output


def test_rule_names_are_path_and_content_rules():
    assert CONTENT_RULE_NAMES <= RULE_NAMES
    assert {"git-directory", "shell-history", "netrc", "pgpass", "mysql-credentials", "git-credentials",
            "ssh-host-key", "decrypted-vault", "gpg-private-key", "baked-authorized-keys", "baked-sudoers",
            "usable-password", "vcs-directory", "ansible-leftover", "archive-not-scanned"} <= RULE_NAMES
    assert all(name == name.lower() and " " not in name for name in RULE_NAMES)
