"""Commit bakery's layers at the play boundaries of a local bake's one ansible-playbook run.

Loaded by ansible-playbook (the venv's Python) from ANSIBLE_CALLBACK_PLUGINS; does nothing unless
BAKERY_LAYER_PLAN names a plan (bakery.builders.layer_commits). Play k is committed when play k+1 starts:
Ansible starts the next play only when the host did not fail; the last play is committed at the end only
when the stats show no unrescued failure and no unreachable host. The commit runs while Ansible waits.
Every play starts with no host state from the plays before it (facts, set_fact, register, include_vars), as
when each role had its own run: a layer must come out the same whether the layers before it ran in this run
or came from the cache.
"""

from __future__ import annotations

import json
import os
import sys

from ansible.plugins.callback import CallbackBase  # type: ignore[import-untyped]

DOCUMENTATION = """
    name: bakery_layers
    type: aggregate
    short_description: commit a bakery layer at each play boundary
    description: Runs bakery's layer commit between the plays of a local bake (only when BAKERY_LAYER_PLAN is set).
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bakery_layers"
    CALLBACK_NEEDS_ENABLED = False  # a project's callbacks_enabled must not have to name it

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = os.environ.get("BAKERY_LAYER_PLAN", "")
        self.pending: int | None = None  # the play running now, not committed yet
        self.next = 0
        self.broken = False  # after a failed commit nothing more is committed

    def v2_playbook_on_play_start(self, play):
        if not self.plan:
            return
        if self.pending is not None:
            self._commit(self.pending)
        self.pending = self.next
        self.next += 1
        try:
            _forget_host_state(play)
        except Exception as exc:  # noqa: BLE001 - the layer would depend on the run: the bake must fail
            self._report(f"could not clear the host state of the plays before it ({exc}); not baked")

    def v2_playbook_on_no_hosts_matched(self):
        self._report("no host left to run it on (an earlier role ended the play with meta: end_host or end_play?)")

    def v2_playbook_on_no_hosts_remaining(self):
        """Every host failed this play (a failed task, max_fail_percentage): the task failure is the report, and
        the stats at the end decide nothing is committed."""
        self.broken = True

    def v2_playbook_on_stats(self, stats):
        if not self.plan or self.pending is None:
            return
        hosts = list(stats.processed)
        if hosts and not any(stats.failures.get(h) or stats.dark.get(h) for h in hosts):
            self._commit(self.pending)
        self.pending = None

    def _commit(self, index):
        if self.broken:
            return
        record = _layer_commits().commit_from_plan(self.plan, index)
        self.broken = "error" in record

    def _report(self, error):
        """An error record for the play running now: bakery fails the bake with it; nothing more is committed."""
        if not self.plan or self.pending is None or self.broken:
            return
        commits = _layer_commits()
        with open(self.plan, encoding="utf-8") as source:
            plan = json.load(source)
        role = plan["layers"][self.pending]["role"]
        commits.append_record(commits.Path(plan["records"]), {"index": self.pending, "role": role, "error": error})
        self.broken = True
        self.pending = None


def _forget_host_state(play):
    """Drop what earlier plays left in the variable manager (`meta: clear_facts` drops the gathered facts only)."""
    manager = getattr(play, "get_variable_manager", lambda: None)()
    if manager is None:
        return
    inventory = getattr(manager, "_inventory", None)
    hosts = {host.name for host in inventory.get_hosts()} if inventory is not None else set()
    # not the fact cache's keys(): ansible-runner's jsonfile cache fails to list them (no prefix set)
    for host in hosts | set(manager._nonpersistent_fact_cache) | set(manager._vars_cache):
        manager.clear_facts(host)
    manager._nonpersistent_fact_cache.clear()  # set_fact, register
    manager._vars_cache.clear()  # include_vars


def _layer_commits():
    """bakery itself, from the checkout this plugin ships in (bakery is not an installed package)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    if root not in sys.path:
        sys.path.insert(0, root)
    from bakery.builders import layer_commits

    return layer_commits
