"""Which roles' testinfra tests an image runs: the project's own always, a third-party role's only when asked.

Project roles keep theirs in molecule/default/tests/ and are written against this project's images. Community
roles often ship tests that assume their own Molecule platforms (other distributions, their own fixtures), so
their molecule/*/tests/ run only for the roles named in bakery.yml `images.<name>.verify.role_tests`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from bakery.config import ImageDefinition, RoleRef
from bakery.deps.gate import check_lock


def project_role_tests(roles_dir: Path, roles: Iterable[str]) -> list[Path]:
    """roles/<role>/molecule/default/tests/test_*.py of each named role that is a project role."""
    files: list[Path] = []
    for role in roles:
        tests_dir = roles_dir / role / "molecule" / "default" / "tests"
        files += sorted(tests_dir.glob("test_*.py")) if tests_dir.is_dir() else []
    return files


def third_party_role_tests(definition: ImageDefinition | None) -> list[Path]:
    """<role>/molecule/*/tests/test_*.py of the image's third-party roles named in its role_tests."""
    if definition is None or not definition.role_tests:
        return []
    wanted = set(definition.role_tests)
    # The tests are part of what the lock pins: a test edited after `deps` would judge the image by other rules.
    if definition.root is not None:  # always set by Project.image()
        check_lock(definition.root)
    files: list[Path] = []
    for ref in _baked_roles(layer.role for layer in definition.layers):
        if ref.third_party and ref.name in wanted:
            files += sorted(ref.path.glob("molecule/*/tests/test_*.py"))
    return files


def _baked_roles(roles: Iterable[RoleRef]) -> Iterator[RoleRef]:
    """Every role the image bakes, dependencies first, each once."""
    seen: set[Path] = set()

    def walk(ref: RoleRef) -> Iterator[RoleRef]:
        if ref.path in seen:
            return
        seen.add(ref.path)
        for dependency in ref.dependencies:
            yield from walk(dependency)
        yield ref

    for ref in roles:
        yield from walk(ref)
