"""Commit bakery's layers at the play boundaries of a local bake's one ansible-playbook run.

Loaded by ansible-playbook (the venv's Python) from ANSIBLE_CALLBACK_PLUGINS; does nothing unless
BAKERY_LAYER_PLAN names a plan (bakery.builders.layer_commits). Play k is committed when play k+1 starts:
Ansible starts the next play only when the host did not fail; the last play is committed at the end only
when the stats show no unrescued failure and no unreachable host. The commit, and the boot of the next play's
container from the committed layer, run while Ansible waits.
Every play starts with no host state from the plays before it (facts, set_fact, register, include_vars), as
when each role had its own run: a layer must come out the same whether the layers before it ran in this run
or came from the cache.
"""

from __future__ import annotations

import copy
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
        # taken out of the environment: an ansible-playbook that a role itself runs must not commit this plan
        self.plan = os.environ.pop("BAKERY_LAYER_PLAN", "")
        self.pending: int | None = None  # the play running now, not committed yet
        self.next = 0
        self.broken = False  # after a failed commit nothing more is committed
        self.inventory = None  # the inventory as the first play found it
        self.started = set()  # the plays that started (one bake host: each play starts once)
        self.address = None  # the id of the build container booted for the play running now (after a swap)

    def v2_playbook_on_play_start(self, play):
        if not self.plan:
            return
        uuid = getattr(play, "_uuid", None)
        if uuid is not None and uuid in self.started:  # a second batch: a role added hosts (add_host)
            self._report("the play started twice (a role added hosts to bakery_build: add_host?); not baked")
            return
        self.started.add(uuid)
        # the counters move first: whatever fails below, no play is ever committed under another's index
        finished, self.pending, self.next = self.pending, self.next, self.next + 1
        try:
            if finished is not None:
                self.address = self._commit(finished) or self.address
        finally:
            try:
                self.inventory = _forget_host_state(play, self.inventory)
                if self.address:  # the restored inventory has the first play's container
                    _connect_to(play, self.address)
            except Exception as exc:  # noqa: BLE001 - the layer would depend on the run: the bake must fail
                self._report(f"could not start it as a run of its own would ({exc}); not baked")

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
        """Commit play `index`; the id of the container the next play runs in (None if there is none)."""
        if self.broken:
            return None
        try:
            record = _layer_commits().commit_from_plan(self.plan, index)
        except Exception:  # the record could not be written: bakery finds the layer missing and fails the bake
            self.broken = True
            raise
        self.broken = "error" in record
        return None if self.broken else record.get("container")

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


def _forget_host_state(play, inventory):
    """Drop what earlier plays left: facts (`meta: clear_facts` drops only these), set_fact and register results,
    include_vars, and inventory changes (group_by, add_host, also as a refresh_inventory would replay them).
    Returns the first play's inventory, to restore."""
    manager = getattr(play, "get_variable_manager", lambda: None)()
    if manager is None:
        return inventory
    hosts = manager._inventory
    if inventory is None:
        inventory = copy.deepcopy(hosts._inventory)
    else:
        hosts._inventory = copy.deepcopy(inventory)
        hosts.clear_caches()
        # Ansible chose this play's hosts before the restore: one an earlier role added is still among them
        added = set(hosts._restriction or ()) - set(hosts._inventory.hosts)
        if added:
            raise ValueError(f"a role added {', '.join(sorted(added))} to the bake's hosts (add_host); bakery "
                             "bakes one host")
    # what a `meta: refresh_inventory` would replay onto the inventory it reads back: earlier plays' add_host/group_by
    hosts._cached_dynamic_hosts.clear()
    hosts._cached_dynamic_grouping.clear()
    names = {host.name for host in hosts.get_hosts()} | {"localhost"}  # delegate_facts may have set localhost's
    # not the fact cache's keys(): ansible-runner's jsonfile cache fails to list them (no prefix set)
    for name in names | set(manager._nonpersistent_fact_cache) | set(manager._vars_cache):
        manager.clear_facts(name)
    manager._nonpersistent_fact_cache.clear()  # set_fact, register
    manager._vars_cache.clear()  # include_vars
    return inventory


def _connect_to(play, container):
    """Point the bake host at the container just booted for this play, by its id: the old one had the same name,
    and mitogen, keying its connections by address, could hand this play the removed container's dead one."""
    manager = getattr(play, "get_variable_manager", lambda: None)()
    if manager is None:
        return
    for host in manager._inventory._inventory.hosts.values():
        host.set_variable("ansible_host", container)


def _layer_commits():
    """bakery itself, from the checkout this plugin ships in (bakery is not an installed package)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    if root not in sys.path:
        sys.path.insert(0, root)
    from bakery.builders import layer_commits

    return layer_commits
