"""bakery_deploy.data_volume on the aws target: one EBS volume per instance slot, handed from an instance to its
replacement (bakery.fleets.aws_volumes). The rules, for deploy.yml and the deploy flags alike.

The volume moves only once its old instance let go of it, so a refresh must terminate before it launches
(max healthy 100) and replace one slot at a time (min healthy at most 100*(n-1)/n). The label is an ext4 label
the instance mounts it by; the path goes into BAKERY_DATA_VOLUME="LABEL:PATH" (bakery.runtime_grammar).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from bakery.config import NAME_RE
from bakery.errors import ConfigError

P = "bakery_deploy.data_volume"
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,15}\Z")  # ext4: at most 16 bytes
PATH_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+\Z")
SIZE_GB = (1, 16384)  # gp3


def aws_data_volume(dv: dict[str, Any], volume: Any, instances: int, refresh: Any, where: str) -> Any:
    """Check and complete an aws data volume (environments.DataVolume: size_gb, label) with the environment's
    RefreshPreferences (both duck-typed: environments imports this module); `where` starts every message."""
    if not NAME_RE.match(volume.name):
        raise ConfigError(f"{where}{P}.name must be lower-case letters, digits, '-' and '_', got '{volume.name}'")
    if not PATH_RE.match(volume.path) or ".." in volume.path.split("/"):
        raise ConfigError(f"{where}{P}.path must be an absolute path of letters, digits, '.', '_', '-' and '/' "
                          f"(not / itself, no '..'), got '{volume.path}'")
    size = dv.get("size_gb", 8)
    if isinstance(size, bool) or not isinstance(size, int):
        raise ConfigError(f"{where}{P}.size_gb must be an integer, got {size!r}")
    if not SIZE_GB[0] <= size <= SIZE_GB[1]:
        raise ConfigError(f"{where}{P}.size_gb must be from {SIZE_GB[0]} to {SIZE_GB[1]}, got {size}")
    label = dv.get("label") or f"bakery-{volume.name}"
    if not isinstance(label, str) or not LABEL_RE.match(label):
        raise ConfigError(f"{where}{P}.label '{label}' must be 1 to 16 letters, digits, '_' or '-' starting with a "
                          "letter or digit (an ext4 label); set another label")
    if instances < 1:
        raise ConfigError(f"{where}{P} needs instances: 1 or more on aws (one volume per instance), got {instances}")
    check_data_volume_preferences(refresh, instances, lambda key: f"refresh.{key}", where)
    volume.size_gb, volume.label = size, label
    return volume


def check_data_volume_preferences(prefs: Any, instances: int, name: Callable[[str], str], where: str = "") -> Any:
    """Terminate before launch, one slot at a time; name(field) is the field as the user wrote it (file or flag)."""
    if prefs.max_healthy_percentage != 100:
        raise ConfigError(f"{where}{P} needs {name('max_healthy_percentage')} 100 on aws (terminate before launch: "
                          f"the old instance gives its volume to its replacement), got {prefs.max_healthy_percentage}")
    most = 100 * (instances - 1) // instances
    if prefs.min_healthy_percentage > most:
        raise ConfigError(f"{where}{P} with instances: {instances} needs {name('min_healthy_percentage')} at most "
                          f"{most} on aws (one slot at a time), got {prefs.min_healthy_percentage}")
    return prefs
