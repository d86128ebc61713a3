import pytest
import yaml

from bakery.errors import ConfigError
from bakery.scaffold import new_role

pytestmark = pytest.mark.unit


def test_new_role_substitutes_the_name_everywhere(tmp_path):
    created = new_role(tmp_path, "demo")
    role = tmp_path / "demo"
    assert role / "molecule/default/tests/test_demo.py" in created
    for path in role.rglob("*"):
        assert "__ROLE__" not in path.name
        if path.is_file():
            assert "__ROLE__" not in path.read_text()
    specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text())
    assert set(specs) == set(defaults)  # every default is documented
    assert all(name.startswith("demo_") for name in defaults)


def test_new_role_refuses_bad_names_and_existing_roles(tmp_path):
    with pytest.raises(ConfigError, match="role name 'Bad-Name' is invalid"):
        new_role(tmp_path, "Bad-Name")
    new_role(tmp_path, "demo")
    with pytest.raises(ConfigError, match="already exists"):
        new_role(tmp_path, "demo")


def test_new_role_passes_the_readme_check_and_its_tag_selects(tmp_path):
    """make lint checks every role's generated variable table, and a concern's tag must reach its tasks."""
    import subprocess
    import sys

    from tests.conftest import REPO

    new_role(tmp_path, "demo")
    check = subprocess.run([sys.executable, str(REPO / "scripts/role_docs.py"), "--check", str(tmp_path / "demo")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    dispatch = yaml.safe_load((tmp_path / "demo/tasks/main.yml").read_text())
    assert all("ansible.builtin.import_tasks" in task for task in dispatch)
