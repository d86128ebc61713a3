import pytest

from bakery.errors import ConfigError
from bakery.verify.secrets import load_allowlist, scan

pytestmark = pytest.mark.unit

FAKE_AWS_ID = "AKIA" + "ABCDEFGHIJKLMNOP"  # split so this file is not itself a finding
FAKE_AWS_SECRET = "aws_secret_access_key = " + "abcdEFGHijklMNOPqrstUVWXyz0123456789+/AB"


def tree(root, files):
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return list(files)


def test_every_rule_names_the_path(tmp_path):
    paths = tree(tmp_path, {
        "etc/app/key.pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n",
        "opt/app/config.ini": f"id={FAKE_AWS_ID}\n",
        "root/.aws/credentials": FAKE_AWS_SECRET + "\n",
        "srv/repo/.git/config": "[core]\n",
        "root/.bash_history": "ls\n",
        "home/u/.netrc": "machine x login y password z\n",
        "home/u/.pgpass": "*:*:*:u:p\n",
        "etc/ansible/vault.yml": "db_password: plain\n",
        "etc/ssh/ssh_host_ed25519_key": "key\n",
        "etc/ok.txt": "nothing to see\n",
    })
    found = {(f.path, f.rule) for f in scan(tmp_path, paths, [])}
    assert found == {
        ("/etc/app/key.pem", "private-key"), ("/opt/app/config.ini", "aws-access-key-id"),
        ("/root/.aws/credentials", "aws-secret-access-key"), ("/srv/repo/.git", "git-directory"),
        ("/root/.bash_history", "shell-history"), ("/home/u/.netrc", "netrc"), ("/home/u/.pgpass", "pgpass"),
        ("/etc/ansible/vault.yml", "decrypted-vault"), ("/etc/ssh/ssh_host_ed25519_key", "ssh-host-key"),
    }


def test_encrypted_vault_and_unlisted_paths_are_not_findings(tmp_path):
    paths = tree(tmp_path, {"etc/ansible/vault.yml": "$ANSIBLE_VAULT;1.1;AES256\n6162\n"})
    tree(tmp_path, {"etc/not-in-diff.pem": "-----BEGIN PRIVATE KEY-----\n"})
    assert scan(tmp_path, paths, []) == []


def test_allowlist_needs_a_reason(tmp_path):
    (tmp_path / "allow.yml").write_text("- path: etc/app/*.pem\n  rule: private-key\n  reason: a test key\n")
    entries = load_allowlist(tmp_path / "allow.yml")
    key = "-----BEGIN PRIVATE KEY-----\n"
    paths = tree(tmp_path, {"etc/app/key.pem": key, "etc/other.pem": key})
    assert [f.path for f in scan(tmp_path, paths, entries)] == ["/etc/other.pem"]
    (tmp_path / "allow.yml").write_text("- path: etc/app/*.pem\n  rule: private-key\n")
    with pytest.raises(ConfigError, match="entry 1 needs non-empty 'path', 'rule' and 'reason'"):
        load_allowlist(tmp_path / "allow.yml")
    (tmp_path / "allow.yml").write_text("- {path: x, rule: nosuch, reason: r}\n")
    with pytest.raises(ConfigError, match="unknown rule 'nosuch'"):
        load_allowlist(tmp_path / "allow.yml")


def test_pem_marker_in_a_program_is_not_a_key_but_a_key_block_is(tmp_path):
    marker = b"-----BEGIN OPENSSH PRIVATE KEY-----"
    paths = tree(tmp_path, {
        "usr/bin/ssh-keygen": b"\x7fELF\0\0" + marker + b"\n\0-----END OPENSSH PRIVATE KEY-----\0other strings\0",
        "usr/lib/embedded.so": b"\x7fELF\0\0" + marker + b"\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAE\n",
        "etc/role/file.txt": marker + b"\n",
    })
    found = {(f.path, f.rule) for f in scan(tmp_path, paths, [])}
    assert found == {("/usr/lib/embedded.so", "private-key"), ("/etc/role/file.txt", "private-key")}
