
import pytest

from bakery.cli import main

pytestmark = pytest.mark.unit



def run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_unknown_image_is_one_line_and_exit_2(proj, capsys):
    rc, out, err = run(capsys, "--project", str(proj), "build", "nosuchimage")
    assert rc == 2
    assert err.count("\n") == 1 and "unknown image 'nosuchimage'" in err
    assert "Traceback" not in err


def test_malformed_playbook_exit_2(proj, capsys):
    (proj / "playbooks" / "broken.yml").write_text("- roles: [\n")
    rc, _, err = run(capsys, "--project", str(proj), "build", "broken")
    assert rc == 2 and "playbooks/broken.yml:" in err and "malformed YAML" in err


def test_bad_flag_is_a_usage_error(proj, capsys):
    rc, _, err = run(capsys, "--project", str(proj), "build", "sample", "--no-such-flag")
    assert rc == 2 and "No such option" in err


def test_no_project_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BAKERY_PROJECT", raising=False)
    rc, _, err = run(capsys, "images")
    assert rc == 2 and "no bakery.yml" in err


def test_debug_shows_the_traceback(proj):
    from bakery.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "--project", str(proj), "build", "nosuchimage"])


def test_images_and_show_on_an_empty_catalog(proj, capsys):
    rc, out, _ = run(capsys, "--project", str(proj), "images", "--json")
    assert rc == 0 and out.strip() == "[]"
    rc, _, err = run(capsys, "--project", str(proj), "show", "sample")
    assert rc == 2 and "has no versions" in err
    rc, _, err = run(capsys, "--project", str(proj), "show", "sample:20990101.001")
    assert rc == 2 and "unknown version" in err


def test_images_lists_what_the_catalog_holds(proj, capsys):
    import os

    from bakery.catalog import open_catalog

    cat = open_catalog(proj / ".bakery")
    v = cat.reserve_version("sample", "run", os.getpid())
    cat.complete_version("sample", v, image_ref="localhost/bakery/sample:" + v, image_id="sha256:i", input_digest="d",
                         provenance={"git_commit": "0123456789abcdef"}, layers=[])
    rc, out, _ = run(capsys, "--project", str(proj), "images")
    assert rc == 0 and v in out and "0123456789ab" in out and "ready" in out
    rc, out, _ = run(capsys, "--project", str(proj), "show", f"sample:{v}", "--json")
    assert rc == 0 and f'"version": "{v}"' in out


def test_help_lists_the_commands(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    for command in ("base", "build", "images", "show", "gc"):
        assert command in out
