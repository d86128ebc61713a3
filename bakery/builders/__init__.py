"""Builders turn an image definition into an image version; selected by name, imported lazily."""

from __future__ import annotations

import importlib

from bakery.builders.base import Builder
from bakery.errors import ConfigError

# name -> "module:Class"; modules are imported only when their builder is used.
REGISTRY = {
    "podman": "bakery.builders.podman:PodmanBuilder",
    "packer": "bakery.builders.packer:PackerBuilder",
    "imagebuilder": "bakery.builders.imagebuilder:ImageBuilderBuilder",
    "disk": "bakery.builders.disk:DiskBuilder",
}
# The builders each target accepts; the first is the default (on aws, bakery.yml's aws.builder overrides it).
TARGET_BUILDERS = {"local": ("podman",), "aws": ("packer", "imagebuilder", "disk")}
DEFAULT_BUILDER = {target: names[0] for target, names in TARGET_BUILDERS.items()}


def builder_for(target: str, name: str | None, configured: str | None = None) -> type[Builder]:
    """The builder class for a target: the one asked for, else the configured one, else the target's default."""
    chosen = name or configured or DEFAULT_BUILDER[target]
    if chosen not in TARGET_BUILDERS[target]:
        raise ConfigError(f"builder '{chosen}' does not build for target '{target}'; use one of: "
                          f"{', '.join(TARGET_BUILDERS[target])}")
    return get_builder(chosen)


def get_builder(name: str) -> type[Builder]:
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown builder '{name}'; known builders: {', '.join(sorted(REGISTRY))}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
