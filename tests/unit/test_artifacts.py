import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from bakery.artifacts import LocalArtifactStore, build_app, read_version, source_files, verify
from bakery.errors import ConfigError, OperationError
from tests.conftest import REPO

pytestmark = pytest.mark.unit

APP = REPO / "app"


@pytest.fixture
def src(tmp_path):
    """A copy of the real sample application, to edit freely."""
    root = tmp_path / "src"
    shutil.copytree(APP, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture
def store(tmp_path):
    return LocalArtifactStore(tmp_path / "store")


def build(src, tmp_path, label="s"):
    """Build into a fresh store, so nothing is shared between two builds but the sources."""
    return build_app(src, LocalArtifactStore(tmp_path / f"store-{label}"))


def test_two_builds_of_the_same_tree_give_identical_bytes_even_with_new_mtimes_and_modes(src, tmp_path):
    first = build(src, tmp_path, "a")
    for path in src.rglob("*"):
        os.utime(path, (1_900_000_000, 1_900_000_000))
        if path.is_file():
            path.chmod(0o600)
    second = build(src, tmp_path, "b")
    assert first.sha256 == second.sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.path != second.path


@pytest.mark.parametrize("change", ["edit", "add", "executable"])
def test_a_changed_or_added_file_gives_a_new_sha(src, tmp_path, change):
    before = build(src, tmp_path, "a")
    if change == "edit":
        (src / "webapp" / "items.py").write_text((src / "webapp" / "items.py").read_text() + "\n# changed\n")
    elif change == "add":
        (src / "webapp" / "extra.py").write_text("X = 1\n")
    else:
        (src / "webapp" / "server.py").chmod(0o755)
    after = build(src, tmp_path, "b")
    assert after.sha256 != before.sha256
    assert after.version == f"1.0.0+{after.sha256[:12]}"


def test_excluded_files_do_not_change_the_artifact(src, tmp_path):
    before = build(src, tmp_path, "a")
    (src / "webapp" / "__pycache__").mkdir()
    (src / "webapp" / "__pycache__" / "items.cpython-311.pyc").write_bytes(b"\0bytecode")
    (src / "webapp" / "stray.pyc").write_bytes(b"\0")
    (src / "webapp" / ".items.py.swp").write_bytes(b"vim")
    (src / "webapp" / "notes.txt~").write_text("backup")
    (src / "webapp" / ".hidden").mkdir()
    (src / "webapp" / ".hidden" / "secret.py").write_text("TOKEN = 1\n")
    (src / "webapp" / "tests").mkdir()
    (src / "webapp" / "tests" / "test_items.py").write_text("def test(): pass\n")
    (src / "webapp" / "test_server.py").write_text("def test(): pass\n")
    (src / "webapp" / "conftest.py").write_text("")
    (src / "tests").mkdir()
    (src / "tests" / "test_app.py").write_text("")
    (src / ".env").write_text("SECRET=1\n")
    (src / "setup.cfg").write_text("[x]\n")  # only the package and README.md are packed
    (src / "webapp" / "empty").mkdir()  # a directory without packed files adds nothing
    after = build(src, tmp_path, "b")
    assert after.sha256 == before.sha256


def test_archive_is_normalised_and_unpacks_to_a_runnable_package(src, store, tmp_path):
    artifact = build_app(src, store)
    blob = artifact.path.read_bytes()
    assert blob[:2] == b"\x1f\x8b"
    assert blob[4:8] == b"\0\0\0\0", "gzip header mtime must be 0"
    assert not blob[3] & 0x08, "gzip header must carry no file name"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert names[:3] == ["README.md", "webapp", "webapp/__init__.py"]
        assert "webapp/__main__.py" in names and "webapp/server.py" in names
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0), m.name
            assert m.mode == (0o755 if m.isdir() else 0o644), m.name
        tar.extractall(tmp_path / "unpacked", filter="data")
    probe = "import webapp, webapp.server; print(webapp.__version__)"
    out = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(tmp_path / "unpacked"),
                                                             "PATH": os.environ["PATH"]},
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1.0.0"


def test_store_layout_manifest_and_checksum_file(src, store, tmp_path):
    artifact = build_app(src, store)
    sha = artifact.sha256
    directory = store.root / "webapp"
    assert sorted(p.name for p in directory.iterdir()) == sorted([f"{sha}.tar.gz", f"{sha}.tar.gz.sha256",
                                                                  f"{sha}.json", "latest"])
    assert artifact.path == directory / f"{sha}.tar.gz"
    assert hashlib.sha256(artifact.path.read_bytes()).hexdigest() == sha
    assert artifact.size == artifact.path.stat().st_size
    assert (directory / "latest").read_text().strip() == sha

    manifest = json.loads((directory / f"{sha}.json").read_text())
    assert {k: manifest[k] for k in ("name", "version", "sha256", "size", "created")} == {
        "name": "webapp", "version": artifact.version, "sha256": sha, "size": artifact.size,
                                                                                          "created": artifact.created}
    assert artifact.created.endswith("Z") and "T" in artifact.created
    files = {f["path"]: f for f in manifest["files"]}
    assert sorted(files) == source_files(src, "webapp")
    assert "README.md" in files and "webapp/__init__.py" in files
    init = src / "webapp" / "__init__.py"
    assert files["webapp/__init__.py"]["sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()

    assert (directory / f"{sha}.tar.gz.sha256").read_text() == f"{sha}  {sha}.tar.gz\n"
    check = subprocess.run(["sha256sum", "-c", f"{sha}.tar.gz.sha256"], cwd=directory, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]

    assert artifact.to_dict() == {"name": "webapp", "version": artifact.version, "sha256": sha,
                                  "path": str(artifact.path),
                                  "size": artifact.size, "created": artifact.created}
    assert json.loads(json.dumps(artifact.to_dict()))["path"] == str(artifact.path)


def test_putting_an_existing_artifact_rewrites_nothing(src, store):
    first = build_app(src, store)
    directory = store.root / "webapp"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}
    second = build_app(src, store)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}
    assert second == first  # same created time: the manifest was not rewritten
    assert after == before


def test_a_damaged_stored_file_is_replaced_by_the_next_identical_build(src, store):
    artifact = build_app(src, store)
    good = artifact.path.read_bytes()
    artifact.path.write_bytes(b"garbage")
    again = build_app(src, store)
    assert again.path.read_bytes() == good
    verify(again)


def test_latest_is_the_most_recently_built_and_list_has_all(src, store):
    assert store.latest("webapp") is None
    assert store.list("webapp") == []
    a = build_app(src, store)
    (src / "webapp" / "extra.py").write_text("X = 1\n")
    b = build_app(src, store)
    assert store.latest("webapp") == b
    assert {x.sha256 for x in store.list("webapp")} == {a.sha256, b.sha256}
    (src / "webapp" / "extra.py").unlink()
    rebuilt = build_app(src, store)  # back to a's sources: a is again the newest build
    assert rebuilt == a
    assert store.latest("webapp") == a


def test_latest_without_a_pointer_falls_back_to_the_newest_manifest(src, store):
    build_app(src, store)
    (src / "webapp" / "extra.py").write_text("X = 1\n")
    b = build_app(src, store)
    manifest = store.root / "webapp" / f"{b.sha256}.json"
    data = json.loads(manifest.read_text())
    data["created"] = "2999-01-01T00:00:00Z"
    manifest.write_text(json.dumps(data))
    (store.root / "webapp" / "latest").unlink()
    assert store.latest("webapp").sha256 == b.sha256
    assert store.list("webapp")[0].sha256 == b.sha256


def test_get_by_sha_prefix_or_version(src, store):
    artifact = build_app(src, store)
    assert store.get("webapp", artifact.sha256) == artifact
    assert store.get("webapp", f"sha256:{artifact.sha256}") == artifact
    assert store.get("webapp", artifact.sha256[:12]) == artifact
    assert store.get("webapp", artifact.version) == artifact
    with pytest.raises(ConfigError, match=r"no artifact webapp@0{64} in .*build-app"):
        store.get("webapp", "0" * 64)
    with pytest.raises(ConfigError, match="at least 12 hex digits"):
        store.get("webapp", artifact.sha256[:6])
    with pytest.raises(ConfigError, match="artifact name"):
        store.get("../etc", artifact.sha256)


def test_verify_passes_on_an_intact_file_and_catches_corruption(src, store):
    artifact = build_app(src, store)
    assert verify(artifact) is artifact
    blob = bytearray(artifact.path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    artifact.path.write_bytes(bytes(blob))
    with pytest.raises(OperationError, match=rf"{artifact.path}: corrupt artifact: sha256 is [0-9a-f]{{64}}, expected "
                                             rf"{artifact.sha256}"):
        verify(artifact)
    artifact.path.unlink()
    with pytest.raises(OperationError, match="is missing; rebuild it"):
        verify(artifact)


def test_missing_source_dir_is_a_config_error_naming_it(tmp_path, store):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as err:
        build_app(missing, store)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_missing_package_is_a_config_error(tmp_path, store):
    (tmp_path / "app").mkdir()
    with pytest.raises(ConfigError, match=r"app/webapp/__init__.py: not found; the application must be a Python "
                                          r"package webapp/"):
        build_app(tmp_path / "app", store)


@pytest.mark.parametrize("content, message", [
    ('"""No version here."""\n', r'no __version__ found; add a line such as __version__ = "1.0.0"'),
    ("__version__ = get_version()\n", r"__init__.py:1: __version__ must be a plain string literal"),
    ("__version__ = 'one two'\n", r"__init__.py:1: __version__ must be a plain string literal"),
    ("def broken(:\n", r"__init__.py:1: syntax error"),
])
def test_a_missing_or_unusable_version_is_a_config_error_naming_the_file(src, store, content, message):
    init = src / "webapp" / "__init__.py"
    init.write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        build_app(src, store)
    assert str(init) in str(err.value)
    assert not (store.root / "webapp").exists()


def test_version_is_read_without_importing(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text('import does_not_exist\n__version__: str = "2.3.4rc1"\n')
    assert read_version(init) == "2.3.4rc1"


def test_symlinks_are_refused(src, store):
    (src / "webapp" / "link.py").symlink_to(src / "webapp" / "items.py")
    with pytest.raises(ConfigError, match=r"webapp/link.py: symlinks cannot be packed"):
        build_app(src, store)

