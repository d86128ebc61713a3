"""Checks of the __ROLE__ role: Molecule runs them, and bake.py verify runs them on every image with this role."""


def test_configuration_is_rendered(host):
    config = host.file("/etc/__ROLE__.conf")
    assert config.is_file
    assert config.user == "root" and config.mode == 0o644
    assert config.contains("^message=configured by the __ROLE__ role$")
