"""Path rules: every family of credential files, histories, leftovers and baked access paths, through a layer."""

from __future__ import annotations

import json

import pytest

from bakery.verify.secret_paths import PATH_RULE_NAMES
from bakery.verify.secrets import scan_tree
from tests.unit.test_secret_archives import path_rules as found
from tests.unit.test_secret_archives import scan, tar_bytes

pytestmark = pytest.mark.unit

AUTH = "ZGVwbG95OnMzY3IzdA" + "=="  # split so that this file is not itself a finding
DOCKER = json.dumps({"auths": {"registry.example.org": {"auth": AUTH}}})
KUBE = ("apiVersion: v1\nkind: Config\nclusters: []\nusers:\n- name: admin\n  user:\n    token: " + "abc.def\n")

# (case, entries, expected {(path, rule)}); a case with an empty set is a near miss that must not be flagged
CASES = [
    ("_netrc", [("home/u/_netrc", "machine x login y\n")], {("/home/u/_netrc", "netrc")}),
    ("docker config with auths", [("root/.docker/config.json", DOCKER)],
     {("/root/.docker/config.json", "registry-credentials")}),
    ("docker config without credentials", [("root/.docker/config.json", '{"auths": {"r": {}}, "credsStore": "pass"}')],
     set()),
    ("docker config that is not JSON", [("root/.docker/config.json", "{auths")],
     {("/root/.docker/config.json", "registry-credentials")}),
    ("podman auth.json under /run", [("run/containers/0/auth.json", DOCKER)],
     {("/run/containers/0/auth.json", "registry-credentials")}),
    ("containers auth.json identitytoken",
     [("etc/containers/auth.json", json.dumps({"auths": {"r": {"identitytoken": "t" + "ok"}}})),
      ("root/.config/containers/auth.json", DOCKER)],
     {("/etc/containers/auth.json", "registry-credentials"),
      ("/root/.config/containers/auth.json", "registry-credentials")}),
    ("a config.json elsewhere", [("opt/app/config.json", DOCKER)], set()),
    ("kubeconfig", [("root/.kube/config", KUBE)], {("/root/.kube/config", "kubeconfig-credentials")}),
    ("kubernetes admin.conf", [("etc/kubernetes/admin.conf", "users:\n- user:\n    client-key-data: TFMw\n")],
     {("/etc/kubernetes/admin.conf", "kubeconfig-credentials")}),
    ("any YAML of kind Config", [("opt/ci/cluster.yaml", KUBE.replace("token: abc.def", "password: pw"))],
     {("/opt/ci/cluster.yaml", "kubeconfig-credentials")}),
    ("YAML of kind Config without credentials", [("opt/ci/c.yaml", "kind: Config\nusers:\n- name: a\n")], set()),
    ("gh hosts.yml", [("root/.config/gh/hosts.yml", "github.com:\n    oauth_token: gho_x\n    user: u\n")],
     {("/root/.config/gh/hosts.yml", "github-cli-token")}),
    (".npmrc", [("home/u/.npmrc", "//registry.npmjs.org/:_authToken=npm_x\n"), ("etc/npmrc", "_auth = eA==\n")],
     {("/home/u/.npmrc", "npmrc-credentials"), ("/etc/npmrc", "npmrc-credentials")}),
    (".npmrc without a token", [("home/u/.npmrc", "registry=https://registry.example.org/\n")], set()),
    (".pypirc", [("root/.pypirc", "[pypi]\nusername = __token__\npassword = pypi-x\n")],
     {("/root/.pypirc", "pypirc-credentials")}),
    (".vault-token", [("root/.vault-token", "hvs.x\n")], {("/root/.vault-token", "vault-token-file")}),
    ("vault password files", [("home/u/.vault_pass", "pw\n"), ("home/u/.vault-pass.txt", "pw\n"),
                              ("etc/ansible/vault_password_file", "pw\n")],
     {("/home/u/.vault_pass", "vault-password-file"), ("/home/u/.vault-pass.txt", "vault-password-file"),
      ("/etc/ansible/vault_password_file", "vault-password-file")}),
    ("cloud credential files", [("root/.s3cfg", "[default]\n"), ("root/.boto", "[Boto]\n"),
                                ("root/.aws/credentials", "[default]\nregion = eu-west-1\n")],
     {("/root/.s3cfg", "cloud-credentials"), ("/root/.boto", "cloud-credentials"),
      ("/root/.aws/credentials", "cloud-credentials")}),
    ("histories", [(p, "ls\n") for p in ("root/.local/share/fish/fish_history", "root/.ash_history",
                                         "root/.lesshst", "root/.viminfo", "home/u/.irb_history", "home/u/.Rhistory",
                                         "root/.bash_history")],
     {(p, "shell-history") for p in ("/root/.local/share/fish/fish_history", "/root/.ash_history", "/root/.lesshst",
                                     "/root/.viminfo", "/home/u/.irb_history", "/home/u/.Rhistory",
                                     "/root/.bash_history")}),
    ("history backups", [(p, "ls\n") for p in ("root/.bash_history.bak", "root/.bash_history~",
                                               "root/.bash_history-20240101", "root/.zsh_history.old")],
     {(p, "shell-history") for p in ("/root/.bash_history.bak", "/root/.bash_history~",
                                     "/root/.bash_history-20240101", "/root/.zsh_history.old")}),
    ("histories that hold nothing", [("root/.bash_history", ("symlink", "/dev/null")), ("root/.zsh_history", ""),
                                     ("usr/share/doc/x/bash_history.txt", "ls\n")], set()),
    ("ansible leftovers", [("root/.ansible/tmp/", None), ("root/.ansible/tmp/ansible-tmp-1/", None),
                           ("root/.ansible/tmp/ansible-tmp-1/AnsiballZ_setup.py", "x\n"),
                           ("home/app/.ansible/tmp/AnsiballZ_command.py", "x\n")],
     {("/root/.ansible/tmp/ansible-tmp-1/AnsiballZ_setup.py", "ansible-leftover"),
      ("/home/app/.ansible/tmp/AnsiballZ_command.py", "ansible-leftover")}),
    ("an empty ansible tmp", [("root/.ansible/", None), ("root/.ansible/tmp/", None)], set()),
    ("git checkout", [("srv/repo/.git/", None), ("srv/repo/.git/config", "[core]\n")],
     {("/srv/repo/.git", "git-directory")}),
    ("bare git repository", [("srv/app.git/", None), ("srv/app.git/HEAD", "ref: refs/heads/main\n"),
                             ("srv/app.git/objects/", None), ("srv/app.git/objects/ab/cdef", "x"),
                             ("srv/app.git/refs/", None), ("srv/app.git/refs/heads/main", "0" * 40 + "\n")],
     {("/srv/app.git", "git-directory")}),
    ("a directory named .git that is no repository", [("srv/x.git/HEAD", "x\n"), ("srv/x.git/README", "x\n")],
     set()),
    ("hg and svn", [("srv/a/.hg/store/data", "x"), ("srv/b/.svn/wc.db", "x")],
     {("/srv/a/.hg", "vcs-directory"), ("/srv/b/.svn", "vcs-directory")}),
    ("GnuPG secret keys", [("root/.gnupg/private-keys-v1.d/", None),
                           ("root/.gnupg/private-keys-v1.d/0123ABCD.key", "(private-key)"),
                           ("home/u/.gnupg/secring.gpg", b"\x95\x01")],
     {("/root/.gnupg/private-keys-v1.d/0123ABCD.key", "gpg-private-key"),
      ("/home/u/.gnupg/secring.gpg", "gpg-private-key")}),
    ("authorized_keys of any account", [("home/u/.ssh/authorized_keys", "ssh-ed25519 A\n"),
                                        ("root/.ssh/authorized_keys2", "ssh-ed25519 A\n"),
                                        ("etc/ssh/authorized_keys", "ssh-ed25519 A\n"),
                                        ("etc/ssh/authorized_keys.d/ops", "ssh-ed25519 A\n"),
                                        ("srv/app/.ssh/authorized_keys", ("symlink", "/opt/keys"))],
     {(p, "baked-authorized-keys") for p in ("/home/u/.ssh/authorized_keys", "/root/.ssh/authorized_keys2",
                                             "/etc/ssh/authorized_keys", "/etc/ssh/authorized_keys.d/ops",
                                             "/srv/app/.ssh/authorized_keys")}),
    ("sudoers drop-ins", [("etc/sudoers.d/", None), ("etc/sudoers.d/README", "#\n"),
                          ("etc/sudoers.d/90-app", "app ALL=(ALL) NOPASSWD: ALL\n")],
     {("/etc/sudoers.d/90-app", "baked-sudoers")}),
    ("ssh host keys", [("etc/ssh/ssh_host_ed25519_key", "k\n"), ("etc/ssh/ssh_host_ed25519_key.pub", "k\n")],
     {("/etc/ssh/ssh_host_ed25519_key", "ssh-host-key"), ("/etc/ssh/ssh_host_ed25519_key.pub", "ssh-host-key")}),
    ("decrypted vault", [("etc/ansible/vault.yml", "db: plain\n"),
                         ("etc/ansible/group_vault.yaml", "  $ANSIBLE_VAULT;1.1;AES256\n6162\n")],
     {("/etc/ansible/vault.yml", "decrypted-vault")}),
    ("old credential files", [("home/u/.pgpass", "*:*:*:u:p\n"), ("root/.my.cnf", "[client]\n"),
                              ("root/.git-credentials", "https://u@example.org\n"), ("root/.netrc", "machine x\n")],
     {("/home/u/.pgpass", "pgpass"), ("/root/.my.cnf", "mysql-credentials"),
      ("/root/.git-credentials", "git-credentials"), ("/root/.netrc", "netrc")}),
]


@pytest.mark.parametrize(("entries", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_path_rules_in_a_layer(entries, expected):
    assert found(scan(entries)) == expected


@pytest.mark.parametrize(("entries", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_tree_walk_finds_the_same(tmp_path, entries, expected):
    for name, content in entries:
        path = tmp_path / name
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):
            path.symlink_to(content[1])
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)
    assert found(scan_tree(tmp_path, [])) == expected


SHADOW = ("root:*:19000:0:99999:7:::\n"
          "daemon:!:19000::::::\n"
          "app:$6$salt$" + "hashhashhash:19000:0:99999:7:::\n"
          "guest::19000:0:99999:7:::\n"
          "breakglass:!:19000::::::\n"
          "old:!*:19000::::::\n")


def test_usable_passwords_name_the_account_and_line_never_the_hash():
    passwd = "root:x:0:0:root:/root:/bin/bash\nbob:$1$x$" + "cafe:1000:1000::/home/bob:/bin/sh\n"
    findings = scan([("etc/shadow", SHADOW), ("etc/shadow-", SHADOW), ("etc/passwd", passwd)])
    findings = [f for f in findings if f.rule == "usable-password"]
    assert {(f.path, f.rule, f.line) for f in findings} == {
        ("/etc/shadow", "usable-password", 3), ("/etc/shadow", "usable-password", 4),
        ("/etc/shadow-", "usable-password", 3), ("/etc/shadow-", "usable-password", 4),
        ("/etc/passwd", "usable-password", 2)}
    text = repr(findings)
    assert "'app'" in text and "'guest'" in text and "'bob'" in text
    assert "hashhash" not in text and "cafe" not in text and "salt" not in text


def test_a_locked_shadow_is_clean():
    assert found(scan([("etc/shadow", "root:*:1::::::\nbreakglass:!:1::::::\nwebapp:!*:1::::::\n")])) == set()


def test_path_rules_apply_inside_archives_to_the_member_path():
    backup = tar_bytes([("etc/shadow", SHADOW), ("etc/sudoers.d/90-x", "x ALL=(ALL) ALL\n")], compression="gz")
    assert found(scan([("var/backups/etc.tgz", backup)])) == {
        ("/var/backups/etc.tgz!/etc/shadow", "usable-password"),
        ("/var/backups/etc.tgz!/etc/sudoers.d/90-x", "baked-sudoers")}


def test_every_rule_a_case_expects_is_a_known_path_rule():
    expected = {rule for c in CASES for _, rule in c[2]} | {"usable-password", "archive-not-scanned"}
    assert expected <= PATH_RULE_NAMES
