"""Builders turn an image definition into an image version; selected by name, imported lazily."""

from __future__ import annotations

import importlib

from bakery.builders.base import Builder
from bakery.errors import ConfigError

# name -> "module:Class"; modules are imported only when their builder is used.
REGISTRY = {
    "podman": "bakery.builders.podman:PodmanBuilder",
}
DEFAULT_BUILDER = {"local": "podman"}


def get_builder(name: str) -> type[Builder]:
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown builder '{name}'; known builders: {', '.join(sorted(REGISTRY))}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
