
import pytest

from bakery.config import Project, parse_extra_vars
from bakery.errors import ConfigError

pytestmark = pytest.mark.unit



def test_image_splits_into_one_layer_per_role(proj):
    definition = Project(proj).image("sample")
    assert [layer.role.name for layer in definition.layers] == ["first", "second"]
    assert definition.base == "bookworm"
    assert definition.layers[0].play_header["become"] is True
    assert "roles" not in definition.layers[0].play_header


def test_unknown_image_names_the_playbook_and_known_images(proj):
    known = "known images: badunit, bootinstall, failing, leaky, planted, sample"
    with pytest.raises(ConfigError, match=rf"unknown image 'nosuch'.*playbooks/nosuch.yml.*{known}"):
        Project(proj).image("nosuch")


def test_invalid_image_name(proj):
    with pytest.raises(ConfigError, match="image name '../x' is invalid"):
        Project(proj).image("../x")


def test_the_image_name_verifications_is_refused(proj, capsys):
    """/bakery/verifications/ holds the write-once verification records: an image of that name would put its release
    parameters /bakery/<image>/<env>/... there, where the IAM policy denies overwriting them."""
    from bakery.cli import main

    (proj / "playbooks" / "verifications.yml").write_text((proj / "playbooks" / "sample.yml").read_text())
    with pytest.raises(ConfigError, match=r"^image name 'verifications' is reserved: .*/bakery/verifications/"):
        Project(proj).image("verifications")
    assert main(["--project", str(proj), "build", "verifications"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image name 'verifications' is reserved" in err and "Traceback" not in err
    (proj / "playbooks" / "verifications.yml").unlink()
    (proj / "bakery.yml").write_text("images:\n  verifications: {base: bookworm}\n")
    with pytest.raises(ConfigError, match=r"bakery.yml: images.verifications: image name 'verifications' is reserved"):
        Project(proj).image("sample")


def test_malformed_yaml_names_file_and_line(proj):
    (proj / "playbooks" / "bad.yml").write_text("- name: x\n  roles: [first\n")
    with pytest.raises(ConfigError, match=r"playbooks/bad.yml:\d+:\d+: malformed YAML"):
        Project(proj).image("bad")


def test_playbook_must_be_a_list_of_plays(proj):
    (proj / "playbooks" / "bad.yml").write_text("name: not a list\n")
    with pytest.raises(ConfigError, match="playbooks/bad.yml: a playbook must be a non-empty list of plays"):
        Project(proj).image("bad")
    (proj / "playbooks" / "bad.yml").write_text("- just a string\n")
    with pytest.raises(ConfigError, match="play 1 must be a mapping"):
        Project(proj).image("bad")


def test_tasks_outside_roles_are_refused(proj):
    (proj / "playbooks" / "bad.yml").write_text("- hosts: all\n  roles: [first]\n  tasks: [{debug: {msg: x}}]\n")
    with pytest.raises(ConfigError, match="play 1 has 'tasks'.*move this work into a role"):
        Project(proj).image("bad")


def test_unknown_role_says_how_to_create_it(proj):
    (proj / "playbooks" / "bad.yml").write_text("- hosts: all\n  roles: [first, nosuchrole]\n")
    with pytest.raises(ConfigError, match="role 'nosuchrole' not found in roles/; create it with: bake.py new-role "
                                          "nosuchrole"):
        Project(proj).image("bad")


def test_role_dependencies_are_resolved_and_cycles_refused(proj):
    (proj / "roles" / "first" / "meta").mkdir()
    (proj / "roles" / "first" / "meta" / "main.yml").write_text("dependencies: [second]\n")
    layer = Project(proj).image("sample").layers[0]
    assert [d.name for d in layer.role.dependencies] == ["second"]
    (proj / "roles" / "second" / "meta").mkdir()
    (proj / "roles" / "second" / "meta" / "main.yml").write_text("dependencies: [{role: first}]\n")
    with pytest.raises(ConfigError, match="role dependency cycle: first -> second -> first"):
        Project(proj).image("sample")


def test_project_file_unknown_key(proj):
    (proj / "bakery.yml").write_text("imagez: {}\n")
    with pytest.raises(ConfigError, match="bakery.yml: unknown key 'imagez'"):
        Project(proj)


def test_image_settings_choose_the_base(proj):
    (proj / "bakery.yml").write_text("images:\n  sample:\n    base: localhost/mine:1\n")
    assert Project(proj).image("sample").base == "localhost/mine:1"
    (proj / "bakery.yml").write_text("images:\n  sample:\n    bsae: x\n")
    with pytest.raises(ConfigError, match="images.sample: unknown key 'bsae'"):
        Project(proj)


def test_discover_walks_up_from_a_subdirectory(proj, monkeypatch):
    monkeypatch.delenv("BAKERY_PROJECT", raising=False)
    monkeypatch.chdir(proj / "roles" / "first")
    assert Project.discover().root == proj.resolve()


def test_discover_without_a_project(tmp_path, monkeypatch):
    monkeypatch.delenv("BAKERY_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no bakery.yml"):
        Project.discover()


def test_extra_vars_parse_yaml_scalars():
    assert parse_extra_vars(("a=1", "b=text", "c=true", "d=")) == {"a": 1, "b": "text", "c": True, "d": ""}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_extra_vars(("novalue",))


def test_artifacts_must_name_a_role_the_image_bakes(proj):
    (proj / "bakery.yml").write_text("images:\n  sample:\n    artifacts: {second: webapp}\n")
    assert Project(proj).image("sample").artifacts == {"second": "webapp"}
    (proj / "bakery.yml").write_text("images:\n  sample:\n    artifacts: {nosuch: webapp}\n")
    with pytest.raises(ConfigError, match="artifacts names role 'nosuch'"):
        Project(proj).image("sample")
    (proj / "bakery.yml").write_text("images:\n  sample:\n    artifacts: [webapp]\n")
    with pytest.raises(ConfigError, match="must map a role name to an artifact name"):
        Project(proj)
