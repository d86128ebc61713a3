"""The locks gc holds while it removes anything: every environment's fleet lock on its target.

Deploy, rollback and promote take the same lock, so gc never removes a version one of them is about
to launch; an environment another bake.py is changing makes gc fail at once, in one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from bakery.catalog import Catalog
from bakery.config import Project


@contextmanager
def environment_locks(project: Project, catalog: Catalog, target: str) -> Iterator[None]:
    """Hold the fleet lock of every environment on `target` (the one deploy, rollback and promote take), or fail."""
    from bakery.environments import environment_names, load_environment
    from bakery.fleets import get_fleet
    from bakery.progress import make_progress

    fleet_class = get_fleet(target)
    with ExitStack() as stack:
        for name in environment_names(project):
            env = load_environment(project, name, check_promotion=False)
            if env.target == target:
                stack.enter_context(fleet_class(project, catalog, env, make_progress(quiet=True)).lock())
        yield
