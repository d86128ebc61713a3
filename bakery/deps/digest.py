"""The digest of an installed role or collection: what the lock pins and the bake gate checks.

Every file counts, tests and Molecule scenarios included (verify runs a community role's own tests when
`verify.role_tests` names it, so they must be exactly what was locked); only caches and the install date
ansible-galaxy writes into meta/.galaxy_install_info are left out, so two installs of the same commit match.
"""

from __future__ import annotations

from pathlib import Path

from bakery.provenance import tree_digest


def installed_digest(root: Path) -> str:
    """sha256 over every file's relative path, executable bit and content (symlinks: their target)."""
    return tree_digest(root, everything=True)
