"""bakery: bake Ansible roles into verified, immutable server images."""

__version__ = "0.1.0"
