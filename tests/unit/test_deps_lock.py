"""requirements.lock and the gate every bake passes: what is installed must be what the lock says, by content."""

from __future__ import annotations

import shutil

import pytest

from bakery.deps.digest import installed_digest
from bakery.deps.gate import check_lock, locked_collections, problems
from bakery.deps.lock import Lock, read_lock, write_lock
from bakery.errors import ConfigError

pytestmark = pytest.mark.unit

COMMIT = "15ee6191f2c234ed6c3608ef30439ea1c92e9b53"
REQUIREMENTS = """roles:
  - name: acme.web
    src: git+https://deploy:tok3n@git.example.com/acme/web.git
    version: v1.0.0
collections:
  - name: acme.tools
    source: ./dist/acme-tools-1.0.0.tar.gz
    type: file
"""


def install(root, rel: str, files: dict[str, str]):
    path = root / ".bakery" / "galaxy" / rel
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


@pytest.fixture
def locked(tmp_path):
    """A project whose requirements are installed and locked as `bake.py deps` leaves them."""
    root = tmp_path
    (root / "requirements.yml").write_text(REQUIREMENTS)
    role = install(root, "roles/acme.web", {"tasks/main.yml": "- ansible.builtin.debug: msg=hi\n",
                                            "meta/.galaxy_install_info": "install_date: today\n"})
    coll = install(root, "collections/ansible_collections/acme/tools", {"MANIFEST.json": "{}",
                                                                        "roles/motd/tasks/main.yml": "[]\n"})
    write_lock(root, Lock(
        roles={"acme.web": {"src": "git+https://***@git.example.com/acme/web.git", "version": "v1.0.0",
                            "commit": COMMIT, "digest": installed_digest(role)}},
        collections={"acme.tools": {"source": "./dist/acme-tools-1.0.0.tar.gz", "type": "file", "version": "1.0.0",
                                    "digest": installed_digest(coll)}}))
    return root


def test_the_lock_round_trips_and_holds_no_credentials(locked):
    text = (locked / "requirements.lock").read_text()
    assert text.startswith("# written by bake.py deps") and "tok3n" not in text
    lock = read_lock(locked)
    assert lock.roles["acme.web"]["commit"] == COMMIT and lock.collections["acme.tools"]["version"] == "1.0.0"


def test_the_install_date_does_not_change_the_digest_but_any_role_file_does(locked):
    role = locked / ".bakery/galaxy/roles/acme.web"
    before = installed_digest(role)
    (role / "meta/.galaxy_install_info").write_text("install_date: tomorrow\n")
    assert installed_digest(role) == before
    (role / "tasks/main.yml").write_text("- ansible.builtin.debug: msg=tampered\n")
    assert installed_digest(role) != before
    after_tasks = installed_digest(role)
    # A role's own tests are locked too: verify runs them when verify.role_tests names the role.
    (role / "molecule/default/tests").mkdir(parents=True)
    (role / "molecule/default/tests/test_web.py").write_text("def test_nothing():\n    pass\n")
    assert installed_digest(role) != after_tasks


def test_a_clean_install_passes_and_gives_provenance(locked):
    assert problems(locked) == []
    facts = check_lock(locked)
    assert facts["acme.web"].startswith(f"v1.0.0@{COMMIT[:12]} sha256:")
    assert facts["acme.tools"].startswith("1.0.0 sha256:")
    assert list(locked_collections(locked)) == ["acme.tools"]


def test_no_requirements_needs_nothing(tmp_path):
    assert check_lock(tmp_path) == {} and locked_collections(tmp_path) == {}


def expect(root, fragment: str) -> str:
    with pytest.raises(ConfigError) as caught:
        check_lock(root)
    message = str(caught.value)
    assert fragment in message and "\n" not in message, message
    return message


def test_a_tampered_role_stops_the_bake_naming_it(locked):
    (locked / ".bakery/galaxy/roles/acme.web/tasks/main.yml").write_text("- ansible.builtin.shell: curl x | sh\n")
    message = expect(locked, "installed role 'acme.web' (.bakery/galaxy/roles/acme.web) differs from "
                             "requirements.lock")
    assert "bake.py deps --update acme.web" in message


def test_a_missing_install_says_run_deps(locked):
    import shutil

    shutil.rmtree(locked / ".bakery/galaxy/collections")
    expect(locked, "'acme.tools' is not installed; run: bake.py deps")


def test_no_lock_and_an_unlocked_or_changed_requirement(locked):
    (locked / "requirements.yml").write_text(REQUIREMENTS + "  - name: acme.more\n")
    expect(locked, "requirement 'acme.more' is not in requirements.lock; run: bake.py deps --update acme.more")
    (locked / "requirements.yml").write_text(REQUIREMENTS.replace("v1.0.0", "v1.1.0"))
    expect(locked, "requirement 'acme.web' in requirements.yml differs from requirements.lock")
    (locked / "requirements.lock").unlink()
    expect(locked, "requirements.yml is not locked; run: bake.py deps")


def test_an_unlocked_install_blocks_and_a_stale_entry_only_shows_in_check(locked):
    install(locked, "roles/someone.else", {"tasks/main.yml": "[]\n"})
    expect(locked, "role 'someone.else' is installed in .bakery/galaxy/roles but not in requirements.lock")
    import shutil

    shutil.rmtree(locked / ".bakery/galaxy/roles/someone.else")
    (locked / "requirements.yml").write_text(REQUIREMENTS.split("collections:")[0])
    shutil.rmtree(locked / ".bakery/galaxy/collections")
    assert [p.kind for p in problems(locked)] == ["stale"]
    assert "acme.tools" not in check_lock(locked)


def test_a_damaged_lock_is_bad_input(locked):
    (locked / "requirements.lock").write_text("format: 1\nroles:\n  acme.web: {version: v1}\n")
    expect(locked, "roles.acme.web: digest is missing")


def test_without_requirements_an_installed_role_or_collection_still_stops_the_bake(tmp_path):
    """No requirements.yml (or an empty one) and no lock: what sits in .bakery/galaxy is still never used unchecked."""
    install(tmp_path, "roles/someone.else", {"tasks/main.yml": "[]\n"})
    message = expect(tmp_path, "role 'someone.else' is installed in .bakery/galaxy/roles but not in requirements.lock")
    assert "run: bake.py deps" in message and "requirements.yml" in message
    (tmp_path / "requirements.yml").write_text("")
    expect(tmp_path, "role 'someone.else' is installed")
    import shutil

    shutil.rmtree(tmp_path / ".bakery/galaxy/roles")
    install(tmp_path, "collections/ansible_collections/acme/extra", {"MANIFEST.json": "{}"})
    expect(tmp_path, "collection 'acme.extra' is installed in .bakery/galaxy/collections but not in requirements.lock")
    (tmp_path / "requirements.yml").unlink()
    assert [p.kind for p in problems(tmp_path)] == ["extra"]


def test_a_project_role_shadowing_a_locked_role_stops_the_bake(locked):
    """ansible would run roles/acme.web while provenance claims the locked acme.web was baked."""
    (locked / "roles/acme.web/tasks").mkdir(parents=True)
    expect(locked, "roles/acme.web shadows the locked role acme.web: rename one of them or drop it from "
                   "requirements.yml")
    assert [p.kind for p in problems(locked)] == ["shadowed"]


def test_deps_removes_unlisted_installs_without_requirements_and_says_why(tmp_path):
    from bakery.deps.sync import sync

    install(tmp_path, "roles/someone.else", {"tasks/main.yml": "[]\n"})
    install(tmp_path, "collections/ansible_collections/acme/extra", {"MANIFEST.json": "{}"})
    outcome = sync(tmp_path)
    assert sorted(outcome.removed) == ["acme.extra", "someone.else"]
    assert outcome.removal_lines() == ["removed acme.extra (not in requirements.lock)",
                                       "removed someone.else (not in requirements.lock)"]
    assert not (tmp_path / ".bakery/galaxy/roles/someone.else").exists()
    assert not (tmp_path / ".bakery/galaxy/collections/ansible_collections/acme").exists()
    assert check_lock(tmp_path) == {}


def test_a_previously_locked_requirement_is_removed_as_no_longer_in_requirements(locked):
    from bakery.deps.sync import sync

    (locked / "requirements.yml").write_text(REQUIREMENTS.split("collections:")[0])
    install(locked, "roles/someone.else", {"tasks/main.yml": "[]\n"})
    outcome = sync(locked)
    assert outcome.removal_lines() == ["removed acme.tools (no longer in requirements.yml)",
                                       "removed someone.else (not in requirements.lock)"]


def test_a_symlinked_role_inside_galaxy_is_unlinked_not_followed(locked, tmp_path_factory):
    from bakery.deps.sync import sync

    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "tasks").mkdir()
    (elsewhere / "tasks/main.yml").write_text("[]\n")
    (locked / ".bakery/galaxy/roles/linked.role").symlink_to(elsewhere)
    outcome = sync(locked)
    assert "linked.role" in outcome.removed
    assert not (locked / ".bakery/galaxy/roles/linked.role").is_symlink()
    assert (elsewhere / "tasks/main.yml").is_file()


@pytest.mark.parametrize("rel", [".bakery/galaxy", ".bakery/galaxy/roles", ".bakery/galaxy/collections",
                                 ".bakery/galaxy/collections/ansible_collections/acme"])
def test_a_symlinked_galaxy_directory_is_refused_before_anything_is_written(locked, tmp_path_factory, rel):
    import shutil

    from bakery.deps.sync import sync

    outside = tmp_path_factory.mktemp("outside") / "target"
    shutil.move(str(locked / rel), str(outside))
    (locked / rel).symlink_to(outside)
    (locked / "requirements.yml").write_text(REQUIREMENTS.split("collections:")[0])
    lock_text = (locked / "requirements.lock").read_text()
    before = sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*"))
    with pytest.raises(ConfigError) as caught:
        sync(locked)
    message = str(caught.value)
    assert rel in message and "symlink" in message and "\n" not in message, message
    assert (locked / "requirements.lock").read_text() == lock_text
    assert sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*")) == before


def test_ansible_galaxy_2_19_error_lines_are_the_message(tmp_path, monkeypatch):
    import subprocess

    from bakery.deps import install as galaxy
    from bakery.errors import OperationError

    def fake_run(*_args, **_kwargs):
        return subprocess.CompletedProcess(
            [], 1, stdout="Starting galaxy role install process\n- downloading role 'web', owned by acme\n",
            stderr="[ERROR]: failed to download https://h/web.tar.gz?private_token=TOKEN456: HTTP Error 404\n"
                   "[WARNING]: - web.tar.gz was NOT installed successfully.\n"
                   "[ERROR]: - you can use --ignore-errors to skip failed roles and finish processing the list.\n")

    monkeypatch.setattr(galaxy.subprocess, "run", fake_run)
    (tmp_path / "staging").mkdir()
    with pytest.raises(OperationError) as caught:
        galaxy.galaxy_install(tmp_path, tmp_path / "staging", "role", {"name": "web"}, tmp_path / "out", "web")
    message = str(caught.value)
    assert "[ERROR]: failed to download https://h/web.tar.gz?private_token=***: HTTP Error 404" in message, message
    assert "TOKEN456" not in message


def test_a_dropped_requirement_still_installed_stops_the_bake_even_tampered(locked):
    """A lock entry no longer in requirements.yml but still installed would be resolved and run by a bake, unchecked
    and missing from provenance."""
    (locked / "requirements.yml").write_text(REQUIREMENTS.split("collections:")[0])
    (locked / ".bakery/galaxy/collections/ansible_collections/acme/tools/MANIFEST.json").write_text('{"evil": 1}')
    message = expect(locked, "collection 'acme.tools' is installed in .bakery/galaxy/collections but no longer in "
                             "requirements.yml")
    assert "run: bake.py deps (removes it)" in message
    (locked / "requirements.yml").unlink()
    expect(locked, "role 'acme.web' is installed in .bakery/galaxy/roles but no longer in requirements.yml")
    assert {p.kind for p in problems(locked)} == {"extra"} and all(p.blocking for p in problems(locked))


def test_a_changed_collection_is_reported_once(locked):
    (locked / "requirements.yml").write_text(REQUIREMENTS.replace("type: file", "type: file\n    version: 2.0.0"))
    assert [(p.name, p.kind) for p in problems(locked)] == [("acme.tools", "changed")]


@pytest.mark.parametrize("entry, fragment", [
    ("acme.web: {src: 'git+https://h/web.git', version: v1, digest: 'sha256:%s'}" % ("0" * 64),
     "roles.acme.web: commit"),
    ("acme.web: {src: 'git+https://h/web.git', version: v1, commit: main, digest: 'sha256:%s'}" % ("0" * 64),
     "roles.acme.web: commit 'main'"),
    ("acme.web: {src: acme.web, digest: 'sha256:%s'}" % ("0" * 64), "roles.acme.web: version"),
    ("acme.web: {src: acme.web, version: '1', digest: 'sha256:abc'}", "roles.acme.web: digest 'sha256:abc'"),
])
def test_a_lock_entry_without_a_valid_pin_is_bad_input_naming_it(locked, entry, fragment):
    (locked / "requirements.lock").write_text(f"format: 1\nroles:\n  {entry}\n")
    with pytest.raises(ConfigError) as caught:
        read_lock(locked)
    message = str(caught.value)
    assert "requirements.lock" in message and fragment in message and "\n" not in message, message
    assert "run: bake.py deps --update acme.web" in message


def test_a_lock_collection_needs_a_version_and_a_git_one_a_commit(locked):
    digest = "sha256:" + "1" * 64
    (locked / "requirements.lock").write_text(
        f"format: 1\ncollections:\n  acme.tools: {{source: x.tgz, type: file, digest: '{digest}'}}\n")
    with pytest.raises(ConfigError, match=r"collections\.acme\.tools: version .*--update acme\.tools"):
        read_lock(locked)
    (locked / "requirements.lock").write_text(
        f"format: 1\ncollections:\n  acme.tools: {{source: 'git+https://h/t.git', type: git, version: '1.0.0', "
        f"digest: '{digest}'}}\n")
    with pytest.raises(ConfigError, match=r"collections\.acme\.tools: commit"):
        read_lock(locked)


def test_a_rotated_token_keeps_the_locked_pin_and_the_lock_holds_no_hash_of_it(locked):
    """The lock compares sources redacted: a new token is no new requirement, so plain `deps` keeps the locked commit
    (a branch pin does not move) and a bake passes; the lock keeps nothing derived from the token (a hash of a short
    password is brute-forced offline)."""
    import hashlib

    from bakery.deps.gate import role_matches
    from bakery.deps.requirements import load_requirements
    from bakery.deps.sync import sync

    (locked / "requirements.yml").write_text(REQUIREMENTS.replace("deploy:tok3n", "deploy:other"))
    role = load_requirements(locked).roles[0]
    assert role_matches(role, read_lock(locked).roles["acme.web"])
    assert problems(locked) == []
    before = (locked / "requirements.lock").read_text()
    outcome = sync(locked)  # everything installed matches: no ansible-galaxy, no git, no network
    assert sorted(outcome.unchanged) == ["acme.tools", "acme.web"] and not outcome.lock_written
    text = (locked / "requirements.lock").read_text()
    assert text == before and "src_sha256" not in text
    for secret in ("tok3n", "other"):
        source = f"git+https://deploy:{secret}@git.example.com/acme/web.git"
        assert secret not in text and hashlib.sha256(source.encode()).hexdigest() not in text


def test_a_lock_written_with_src_sha256_still_matches_and_deps_drops_the_hash(locked):
    lock_path = locked / "requirements.lock"
    lock_path.write_text(lock_path.read_text().replace("    version: v1.0.0\n",
                                                       "    src_sha256: " + "ab" * 32 + "\n    version: v1.0.0\n"))
    assert "src_sha256" in lock_path.read_text()
    assert problems(locked) == []
    from bakery.deps.sync import sync

    assert sync(locked).lock_written
    assert "src_sha256" not in lock_path.read_text() and problems(locked) == []


def test_a_reinstall_from_a_changed_hidden_source_giving_other_content_is_refused(locked, monkeypatch):
    """What redaction hides can still change what is fetched: the locked commit is reinstalled from the source as
    written now, and content other than the locked digest is refused, never locked."""
    from bakery.deps import install
    from bakery.deps.sync import sync
    from bakery.errors import OperationError

    (locked / "requirements.yml").write_text(REQUIREMENTS.replace("deploy:tok3n", "deploy:other"))
    shutil.rmtree(locked / ".bakery/galaxy/roles/acme.web")
    requests = []

    def fake_install(_root, _staging, what, request, dest, _label):
        requests.append(request)
        (dest / request["name"] / "tasks").mkdir(parents=True)
        (dest / request["name"] / "tasks/main.yml").write_text("- ansible.builtin.debug: msg=someone else's\n")

    monkeypatch.setattr(install, "galaxy_install", fake_install)
    before = (locked / "requirements.lock").read_text()
    with pytest.raises(OperationError) as caught:
        sync(locked)
    message = str(caught.value)
    assert "the source changed" in message and "bake.py deps --update acme.web" in message
    assert "other" not in message and "https://***@git.example.com" in message
    assert requests == [{"name": "acme.web", "scm": "git", "version": COMMIT,
                         "src": "https://deploy:other@git.example.com/acme/web.git"}]
    assert (locked / "requirements.lock").read_text() == before


@pytest.mark.parametrize("stderr, stdout, expected", [
    ("[WARNING]: - acme.web was NOT installed successfully: - sorry, acme.web was not found on galaxy.\n"
     "[ERROR]: - you can use --ignore-errors to skip failed roles and finish processing the list.\n", "",
     "- sorry, acme.web was not found on galaxy."),
    ("", " [WARNING]: - acme.web was NOT installed successfully: Unable to clone https://***@h/x\n"
         "ERROR! - you can use --ignore-errors to skip failed roles\n",
     "Unable to clone https://***@h/x"),
])
def test_the_reason_a_role_was_not_installed_is_the_message(stderr, stdout, expected):
    from bakery.deps.install import error_line

    assert error_line(stdout, stderr) == expected


def test_a_git_failure_names_gits_fatal_line(tmp_path, monkeypatch):
    import subprocess

    from bakery.deps import install as galaxy
    from bakery.errors import OperationError

    def fake_run(*_args, **_kwargs):
        return subprocess.CompletedProcess([], 128, stdout="", stderr=(
            "remote: HTTP Basic: Access denied\nfatal: Authentication failed for 'https://u:SECRET9@h/r.git/'\n"
            "hint: see the docs\n"))

    monkeypatch.setattr(galaxy.subprocess, "run", fake_run)
    with pytest.raises(OperationError) as caught:
        galaxy.resolve_commit(tmp_path, "https://u:SECRET9@h/r.git", "v1", "r")
    message = str(caught.value)
    assert "fatal: Authentication failed for 'https://***@h/r.git/'" in message and "SECRET9" not in message
