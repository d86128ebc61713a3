"""Fleets run an environment's instances on one target; selected by the environment's `target`, imported lazily."""

from __future__ import annotations

import importlib

from bakery.errors import ConfigError
from bakery.fleets.base import Fleet

# target name -> "module:Class"; a module is imported only when its target is used.
REGISTRY = {
    "local": "bakery.fleets.local:LocalFleet",
    "aws": "bakery.fleets.aws:AwsFleet",
}


def get_fleet(target: str) -> type[Fleet]:
    try:
        where = REGISTRY[target]
    except KeyError:
        raise ConfigError(f"no fleet for target '{target}' yet; known targets: {', '.join(sorted(REGISTRY))}") from None
    module_name, _, class_name = where.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
