"""requirements.yml as ops write it for ansible-galaxy, and the mistakes refused before anything is installed."""

from __future__ import annotations

import pytest

from bakery.deps.requirements import load_requirements, redact
from bakery.errors import ConfigError

pytestmark = pytest.mark.unit


def parse(tmp_path, text: str):
    (tmp_path / "requirements.yml").write_text(text, encoding="utf-8")
    return load_requirements(tmp_path)


def test_no_file_means_no_requirements(tmp_path):
    assert load_requirements(tmp_path) is None


def test_the_old_list_format_is_roles(tmp_path):
    reqs = parse(tmp_path, "- geerlingguy.nginx\n- src: https://github.com/dev-sec/ansible-ssh-hardening\n"
                           "  version: 9.7.0\n")
    assert [(r.name, r.kind, r.version) for r in reqs.roles] == [
        ("geerlingguy.nginx", "galaxy", None), ("ansible-ssh-hardening", "git", "9.7.0")]


def test_roles_and_collections_with_ansible_galaxys_defaults(tmp_path):
    reqs = parse(tmp_path, """
roles:
  - name: acme.web
    src: git+file:///srv/repos/web.git
    version: v1.0.0
  - src: https://example.com/roles/tools.tar.gz
  - src: git@example.com:acme/base.git
    scm: git
    version: main
collections:
  - community.general
  - name: acme.tools
    source: ./dist/acme-tools-1.0.0.tar.gz
    type: file
  - name: ./dist/other-coll-2.0.0.tar.gz
  - name: git+https://example.com/acme/things.git
    version: v2
""")
    roles = [(r.name, r.kind, r.location) for r in reqs.roles]
    assert roles == [("acme.web", "git", "file:///srv/repos/web.git"),
                     ("tools", "url", "https://example.com/roles/tools.tar.gz"),
                     ("base", "git", "git@example.com:acme/base.git")]
    colls = [(c.name, c.kind, c.source, c.version) for c in reqs.collections]
    assert colls == [("community.general", "galaxy", "community.general", None),
                     ("acme.tools", "file", "./dist/acme-tools-1.0.0.tar.gz", None),
                     (None, "file", "./dist/other-coll-2.0.0.tar.gz", None),
                     (None, "git", "git+https://example.com/acme/things.git", "v2")]


@pytest.mark.parametrize("text, fragment", [
    ("roles: [a.b\n", "malformed YAML"),
    ("roles:\n  - src: hg+https://example.com/r\n    version: '1'\n", "unknown source type 'hg'"),
    ("roles:\n  - src: https://example.com/r\n    scm: hg\n    version: '1'\n", "unknown source type 'hg'"),
    ("roles:\n  - src: git+https://example.com/acme/web.git\n", "has no version"),
    ("collections:\n  - name: git+https://example.com/acme/c.git\n", "has no version"),
    ("collections:\n  - name: acme.tools\n    type: svn\n", "unknown source type 'svn'"),
    ("collections:\n  - name: ./colls\n    type: subdirs\n", "type: dir"),
    ("roles:\n  - src: acme.web\n    verison: '1.0'\n", "unknown key 'verison'"),
    ("packages: []\n", "unknown top-level key 'packages'"),
    ("roles:\n  - src: git+https://example.com/x.git\n    version: v1\n    name: 'bad name'\n", "'bad name'"),
    ("collections:\n  - name: not-a-collection\n    type: galaxy\n", "'not-a-collection' is invalid"),
    ("roles:\n  - acme.web\n  - acme.web\n", "listed twice"),
    ("roles: {acme.web: 1}\n", "must be a list"),
    ("roles:\n  - src: /no/such/dir\n", "unknown source type"),
])
def test_bad_requirements_are_one_line_naming_the_file(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, text)
    message = str(caught.value)
    assert fragment in message
    assert "requirements.yml" in message and "\n" not in message


def test_credentials_in_a_git_url_are_never_repeated(tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, "roles:\n  - src: git+https://deploy:s3cr3t-token@git.example.com/acme/web.git\n")
    assert "s3cr3t" not in str(caught.value) and "https://***@git.example.com" in str(caught.value)
    assert redact("clone of 'https://u:p@h/x' failed; ssh://git@h/y") == "clone of 'https://***@h/x' failed; ssh://***@h/y"
    assert redact("git@github.com:org/repo.git") == "git@github.com:org/repo.git"


def test_tokens_in_query_strings_and_fragments_are_never_repeated(tmp_path):
    assert redact("https://h/web.tar.gz?private_token=TOKEN&x=1#sig=abc") == "https://h/web.tar.gz?private_token=***&x=***#sig=***"
    assert redact("git+https://u:p@h/r.git?t=1 failed") == "git+https://***@h/r.git?t=*** failed"
    assert redact("see https://h/r.git.") == "see https://h/r.git."
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, "roles:\n  - src: https://h.example.com/roles/web.tar.gz?private_token=TOKEN456\n    scm: hg\n")
    assert "TOKEN456" not in str(caught.value) and "private_token=***" in str(caught.value)
    reqs = parse(tmp_path, "roles:\n  - src: https://h.example.com/roles/web.tar.gz?private_token=TOKEN456\n"
                           "  - src: https://h.example.com/x/tools.tgz#sha=1\n")
    assert [(r.name, r.kind) for r in reqs.roles] == [("web", "url"), ("tools", "url")]


def test_a_role_with_only_a_name_is_a_galaxy_role_as_for_ansible_galaxy(tmp_path):
    reqs = parse(tmp_path, "roles:\n  - name: geerlingguy.nginx\n    version: 3.2.0\n")
    assert [(r.name, r.src, r.kind, r.version) for r in reqs.roles] == [
        ("geerlingguy.nginx", "geerlingguy.nginx", "galaxy", "3.2.0")]


@pytest.mark.parametrize("text, fragment", [
    ("roles:\n  - git+https://h/acme/web.git,v1.0.0,acme.web\n", "'src,version,name' form"),
    ("roles:\n  - include: more-requirements.yml\n", "include: is not read"),
])
def test_forms_bakery_refuses_say_what_to_write_instead(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, text)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_query_values_are_hidden_unless_their_key_is_known_harmless_so_a_real_change_shows(tmp_path):
    """`?sha=1` -> `?sha=2` is a change a reviewer must see in the lock; a value whose key is not known to be harmless
    (auth=, jwt=, a session id) may be a credential, so it is hidden."""
    assert redact("https://h/web.tar.gz?sha=1") != redact("https://h/web.tar.gz?sha=2")
    assert redact("https://h/web.tar.gz?SHA=1&Ref=main") == "https://h/web.tar.gz?SHA=1&Ref=main"
    url = ("https://b.s3.amazonaws.com/web.tgz?X-Amz-Credential=AKIA1&X-Amz-Signature=ab12&X-Amz-Security-Token=T0"
           "&version=3&Token=t1&access_token=a1&API_KEY=k1&key=k2&password=p1&secret=s1&sig=g1&my_signature=m1"
           "&auth=u1&jwt=j1&pass=w1&session=e1&ticket=i1&X-JFrog-Art-Api=f1&X-Amz-Date=20240101T000000Z"
           "&X-Amz-Expires=300&sv=2022-11-02&se=2030-01-01")
    shown = redact(url)
    for kept in ("version=3", "X-Amz-Date=20240101T000000Z", "X-Amz-Expires=300", "sv=2022-11-02", "se=2030-01-01"):
        assert kept in shown, (kept, shown)
    for value in ("AKIA1", "ab12", "T0", "t1", "a1", "k1", "k2", "p1", "s1", "g1", "m1", "u1", "j1", "w1", "e1", "i1",
                  "f1"):
        assert f"={value}" not in shown, (value, shown)
    assert redact("https://h/app/web.tgz;jsessionid=S3SS10N?sha=1") == "https://h/app/web.tgz;jsessionid=***?sha=1"
    assert redact("https://h/x.tgz#token=abc") == "https://h/x.tgz#token=***"
    assert redact("https://h/r.git#/collections/acme") == "https://h/r.git#/collections/acme"


@pytest.mark.parametrize("url, shown", [
    ("https://user:p@ss@host/x", "https://***@host/x"),
    ("https://user:p@ss@host", "https://***@host"),
    ("git+https://a@b:c@d@git.example.com/r.git?ref=v1", "git+https://***@git.example.com/r.git?ref=v1"),
    ("https://host/path@v1/x.tgz", "https://host/path@v1/x.tgz"),
    ("https://host/x.tgz?sha=1&mail=a@b", "https://host/x.tgz?sha=1&mail=***"),
])
def test_userinfo_is_hidden_up_to_the_last_at_before_the_path(url, shown):
    assert redact(url) == shown
