"""The one-run bake's pieces without podman: the generated plays, the commit records, the plugin's protocol."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import ansible.constants as ansible_constants
import pytest
from ansible.executor.stats import AggregateStats
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.playbook.play import Play
from ansible.vars.manager import VariableManager

from bakery.ansible import podman_inventory
from bakery.builders import build_container, layer_commits
from bakery.builders.apt_mounts import SOURCES_DIGEST, AptMounts
from bakery.builders.layer_commits import (
    append_record,
    callback_plugins,
    plays,
    read_records,
    run_segments,
    write_inventory,
    write_plan,
)
from bakery.builders.layer_run import LayerRun
from bakery.config import Layer, RoleRef
from bakery.layers import PlannedLayer
from bakery.progress import Progress
from tests.shown_process import start_shown

pytestmark = pytest.mark.unit

PLUGIN = Path(layer_commits.PLUGINS) / "bakery_layers.py"


def planned(header: dict, *entries) -> list[PlannedLayer]:
    layers = []
    for position, entry in enumerate(entries):
        name = entry if isinstance(entry, str) else entry["role"]
        layer = Layer(position, 0, header, RoleRef(name, Path("/roles") / name, entry))
        layers.append(PlannedLayer(layer, key=f"key-{name}", role_digest=f"digest-{name}"))
    return layers


def test_one_play_per_layer_under_its_header():
    header = {"name": "Bake", "hosts": "all", "become": True, "vars": {"color": "blue"}}
    layers = planned(header, "first", {"role": "web", "port": 80}, "last")
    result = plays(layers)
    assert [p["roles"] for p in result] == [["first"], [{"role": "web", "port": 80}], ["last"]]
    assert all(p["hosts"] == "bakery_build" and p["become"] is True and p["vars"] == {"color": "blue"}
               for p in result)
    assert header == {"name": "Bake", "hosts": "all", "become": True, "vars": {"color": "blue"}}  # not mutated


def test_a_role_that_ships_plugins_runs_alone(tmp_path):
    def layer(name, plugin_dir=None, dependency=None):
        (tmp_path / name / "tasks").mkdir(parents=True)
        if plugin_dir:
            (tmp_path / name / plugin_dir).mkdir()
            (tmp_path / name / plugin_dir / "helpers.py").write_text("")
        role = RoleRef(name, tmp_path / name, name, dependencies=(dependency,) if dependency else ())
        return PlannedLayer(Layer(0, 0, {}, role), key=name, role_digest=name)

    plain = [layer(n) for n in ("a", "b")]
    dep = RoleRef("dep", tmp_path / "dep", "dep")
    (tmp_path / "dep" / "library").mkdir(parents=True)
    (tmp_path / "dep" / "library" / "mod.py").write_text("")
    with_filter, with_dep = layer("c", "filter_plugins"), layer("d", dependency=dep)
    empty_dir = layer("e", "module_utils")
    (tmp_path / "e" / "module_utils" / "helpers.py").unlink()  # an empty plugin directory loads nothing
    names = [[p.role for p in run] for run in run_segments([*plain, with_filter, with_dep, empty_dir, layer("f")])]
    assert names == [["a", "b"], ["c"], ["d"], ["e", "f"]]


@pytest.mark.parametrize("gather", [None, True, False])
def test_every_play_gathers_facts_as_its_header_says_as_a_run_of_its_own_would(gather):
    header = {"hosts": "all"} if gather is None else {"hosts": "all", "gather_facts": gather}
    result = plays(planned(header, "a", "b", "c"))
    assert [p.get("gather_facts") for p in result] == [gather] * 3


def test_the_bake_keeps_the_callback_plugins_the_project_configures(tmp_path, monkeypatch):
    monkeypatch.delenv("ANSIBLE_CALLBACK_PLUGINS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert callback_plugins(tmp_path).split(":") == [str(layer_commits.PLUGINS), str(tmp_path / "home" / ".ansible"
                                                     / "plugins" / "callback"), "/usr/share/ansible/plugins/callback"]
    (tmp_path / "ansible.cfg").write_text("[defaults]\ncallback_plugins = ./callbacks:/opt/more\n")
    assert callback_plugins(tmp_path).split(":") == [str(layer_commits.PLUGINS), str(tmp_path / "callbacks"),
                                                     "/opt/more"]
    monkeypatch.setenv("ANSIBLE_CALLBACK_PLUGINS", "/from/env")  # the caller's setting wins over ansible.cfg
    assert callback_plugins(tmp_path).split(":") == [str(layer_commits.PLUGINS), "/from/env"]


def fake_podman(monkeypatch, sources: list[str]) -> list[tuple]:
    """podman as the commit uses it; the apt sources' digest is the next of `sources` each time it is read."""
    calls: list[tuple] = []

    def run(*args, **kw):
        calls.append(args)
        out = sources.pop(0) if args[-1] == SOURCES_DIGEST else "running" if "is-system-running" in args else \
            f"{len(calls):064x}" if args[0] in ("run", "commit") else ""
        return subprocess.CompletedProcess(args, 0, stdout=out, stderr="")

    monkeypatch.setattr(layer_commits.podman, "run", run)
    monkeypatch.setattr(layer_commits.podman, "image_id", lambda ref: "sha-" + ref)  # the tag read back: never used
    return calls


CONTAINER = build_container.run_args("ctr", "x-bake", {"io.bakery.build": "1"}, ["--volume", "/a:/b"])


def two_layer_plan(tmp_path: Path) -> tuple[Path, Path, AptMounts]:
    plan, records, apt = tmp_path / "plan.json", tmp_path / "commits.jsonl", AptMounts(tmp_path / "apt")
    write_inventory(tmp_path / "inventory.json", podman_inventory("ctr", ["bakery_build", "x"], address="first-id"))
    write_plan(plan, container=CONTAINER, apt_root=apt.root, records=records, inventory=tmp_path / "inventory.json",
               layers=[("a", "localhost/bakery-cache/x:1"), ("b", "localhost/bakery-cache/x:2")])
    return plan, records, apt


def inventory_addresses(tmp_path: Path) -> set[str]:
    """The addresses a `meta: refresh_inventory` would read back from the run's inventory file."""
    inventory = InventoryManager(DataLoader(), sources=[str(tmp_path / "inventory.json")])
    return {host.vars["ansible_host"] for host in inventory.get_hosts()}


def test_commit_cleans_commits_then_boots_the_next_play_from_the_layer_and_restores_apt_lists(tmp_path, monkeypatch):
    calls = fake_podman(monkeypatch, ["same", "same"])
    plan, records, apt = two_layer_plan(tmp_path)
    apt.volumes()
    (apt.lists / "deb_dists_bookworm_main_binary-amd64_Packages").write_text("index\n")
    apt.refresh("ctr")
    (apt.lists / "deb_dists_bookworm_main_binary-amd64_Packages").unlink()  # a role cleaned the lists
    calls.clear()
    record = layer_commits.commit_from_plan(str(plan), 0)
    # the next role runs where a bake from this cached layer would: a fresh container booted from it, same name
    assert calls == [("exec", "ctr", "sh", "-c", layer_commits.HYGIENE),
                     ("commit", "-q", "ctr", "localhost/bakery-cache/x:1"),
                     ("inspect", "--format", "{{.Id}}", "ctr"),  # its podman exec clients name it by id
                     ("rm", "-f", "-t", "0", "ctr"),
                     ("run", "-d", "--name", "ctr", "--hostname", "x-bake", "--systemd=always",
                      "--label", "io.bakery.build=1", "--volume", "/a:/b", f"sha256:{2:064x}", "/sbin/init"),
                     ("exec", "ctr", "systemctl", "is-system-running", "--wait"),
                     ("exec", "ctr", "sh", "-c", SOURCES_DIGEST)]
    # the id `podman commit` printed (the second call), not the tag read back: another checkout may move the tag
    assert record["image_id"] == f"sha256:{2:064x}" and record["seconds"] >= 0
    assert record.pop("container") == f"{5:064x}"  # the next play reaches the new container by its id, not the name
    assert inventory_addresses(tmp_path) == {f"{5:064x}"}  # and so does a role's refresh_inventory
    assert read_records(records) == [record]
    assert (apt.lists / "deb_dists_bookworm_main_binary-amd64_Packages").is_file()  # back for the next play


def test_the_last_layer_of_a_run_is_only_cleaned_and_committed(tmp_path, monkeypatch):
    calls = fake_podman(monkeypatch, [])
    plan, records, _ = two_layer_plan(tmp_path)
    layer_commits.commit_from_plan(str(plan), 1)
    assert calls == [("exec", "ctr", "sh", "-c", layer_commits.HYGIENE), ("commit", "-q", "ctr",
                                                                           "localhost/bakery-cache/x:2")]
    assert inventory_addresses(tmp_path) == {"first-id"}  # no container booted: the inventory stays as it was
    assert [r["role"] for r in read_records(records)] == ["b"]


def test_a_committed_layer_is_recorded_even_when_the_next_container_does_not_start(tmp_path, monkeypatch):
    fake_podman(monkeypatch, [])
    plan, records, _ = two_layer_plan(tmp_path)
    real_run = layer_commits.podman.run

    def run(*args, **kw):
        if args[0] == "run":
            raise layer_commits.podman.OperationError("'podman run -d' failed: no space left")
        return real_run(*args, **kw)

    monkeypatch.setattr(layer_commits.podman, "run", run)
    record = layer_commits.commit_from_plan(str(plan), 0)
    first, second = read_records(records)
    assert first["role"] == "a" and "error" not in first  # cached: the commit worked
    assert second == record == {"index": 1, "role": "b", "error": "no build container from the layer of 'a': "
                                "'podman run -d' failed: no space left"}


def test_a_play_the_plan_does_not_have_is_an_error_record(tmp_path):
    plan, records = tmp_path / "plan.json", tmp_path / "commits.jsonl"
    write_plan(plan, container=CONTAINER, apt_root=tmp_path, records=records, layers=[("a", "r1")])
    record = layer_commits.commit_from_plan(str(plan), 1)
    assert record["role"] == "?" and "not one of the plan's 1 layers" in record["error"]
    assert read_records(records) == [record]


def test_a_layer_that_changed_the_apt_sources_gets_fresh_lists_for_the_next_role(tmp_path, monkeypatch):
    calls = fake_podman(monkeypatch, ["before", "a source added", "a source added"])
    apt = AptMounts(tmp_path / "apt")
    apt.volumes()
    apt.refresh("ctr")
    calls.clear()
    layer_commits.next_container(CONTAINER, "localhost/bakery-cache/x:1", apt)
    assert ("exec", "ctr", "apt-get", "update", "-q") in calls  # as a build container booted from this layer would
    assert (apt.root / "sources.sha256").read_text() == "a source added"


def test_a_failed_commit_is_an_error_record_not_an_exception(tmp_path, monkeypatch):
    def boom(*args, **kw):
        raise layer_commits.podman.OperationError("podman commit: no space left on device")

    monkeypatch.setattr(layer_commits.podman, "run", boom)
    plan, records = tmp_path / "plan.json", tmp_path / "commits.jsonl"
    write_plan(plan, container=CONTAINER, apt_root=tmp_path / "apt", records=records, layers=[("first", "ref-1")])
    record = layer_commits.commit_from_plan(str(plan), 0)
    assert record == {"index": 0, "role": "first",
                      "error": "layer commit failed: podman commit: no space left on device"}
    assert read_records(records) == [record]


def test_records_are_read_only_when_complete(tmp_path):
    path = tmp_path / "commits.jsonl"
    assert read_records(path) == []
    append_record(path, {"index": 0})
    with path.open("a") as out:
        out.write('{"index": 1')  # the plugin is still writing
    assert read_records(path) == [{"index": 0}]


def load_plugin(monkeypatch, plan: Path, commits: list):
    spec = importlib.util.spec_from_file_location("bakery_layers_under_test", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("BAKERY_LAYER_PLAN", str(plan))

    def commit(plan_path, index):
        commits.append(index)
        return {"index": index}

    monkeypatch.setattr(layer_commits, "commit_from_plan", commit)
    return module.CallbackModule()


def stats(failed: bool) -> AggregateStats:
    result = AggregateStats()
    result.increment("ok", "ctr")
    if failed:
        result.increment("failures", "ctr")
    return result


@pytest.mark.parametrize("failed, expected", [(False, [0, 1, 2]), (True, [0, 1])], ids=["success", "failure"])
def test_plugin_commits_each_play_when_the_next_starts_and_the_last_only_on_success(tmp_path, monkeypatch, failed,
                                                                                   expected):
    commits: list[int] = []
    plugin = load_plugin(monkeypatch, tmp_path / "plan.json", commits)
    for _ in range(3):
        plugin.v2_playbook_on_play_start(object())
    assert commits == [0, 1]  # play 3 still running
    plugin.v2_playbook_on_stats(stats(failed))
    assert commits == expected


def two_play_plugin(tmp_path, monkeypatch):
    """The plugin following a two-layer plan: (records file, commits made, plugin)."""
    plan, records = tmp_path / "plan.json", tmp_path / "commits.jsonl"
    write_plan(plan, container=CONTAINER, apt_root=tmp_path, records=records, layers=[("a", "r1"), ("b", "r2")])
    commits: list[int] = []
    return records, commits, load_plugin(monkeypatch, plan, commits)


def test_plugin_reports_a_play_left_without_host_and_commits_nothing_more(tmp_path, monkeypatch):
    records, commits, plugin = two_play_plugin(tmp_path, monkeypatch)
    plugin.v2_playbook_on_play_start(object())
    plugin.v2_playbook_on_play_start(object())  # play 1 ended the host (meta: end_host)
    plugin.v2_playbook_on_no_hosts_matched()
    plugin.v2_playbook_on_stats(stats(False))
    assert commits == [0]
    assert [(r["role"], "no host left" in r["error"]) for r in read_records(records)] == [("b", True)]


def next_play(manager: VariableManager) -> Play:
    """Another play of the same run, as Ansible hands it to the callback (a copy, with the same identity)."""
    return Play.load({"hosts": "all", "gather_facts": False, "tasks": []}, variable_manager=manager,
                     loader=manager._loader).copy()


def test_plugin_starts_every_play_without_the_host_state_earlier_plays_left(tmp_path, monkeypatch):
    loader = DataLoader()
    monkeypatch.setenv("ANSIBLE_CACHE_PLUGIN", "jsonfile")  # as ansible-runner sets it
    monkeypatch.setenv("ANSIBLE_CACHE_PLUGIN_CONNECTION", str(tmp_path / "fact_cache"))
    monkeypatch.setattr(ansible_constants, "CACHE_PLUGIN", "jsonfile")
    manager = VariableManager(loader=loader, inventory=InventoryManager(loader=loader, sources="bakery_build,"))
    play = Play.load({"hosts": "bakery_build", "gather_facts": False, "tasks": []}, variable_manager=manager,
                     loader=loader)
    plugin = load_plugin(monkeypatch, tmp_path / "plan.json", [])
    plugin.v2_playbook_on_play_start(play)
    manager.set_host_facts("bakery_build", {"os_family": "Debian"})  # gathered facts
    manager.set_nonpersistent_facts("bakery_build", {"from_set_fact": 1, "registered": {"rc": 0}})
    manager.set_host_variable("bakery_build", "from_include_vars", 2)
    assert manager._fact_cache.contains("bakery_build")  # written to the jsonfile cache
    plugin.v2_playbook_on_play_start(next_play(manager))
    assert not manager._fact_cache.contains("bakery_build")
    assert not manager._nonpersistent_fact_cache.get("bakery_build")
    assert not manager._vars_cache.get("bakery_build")


def test_plugin_leaves_a_play_whose_hosts_all_failed_to_the_task_failure(tmp_path, monkeypatch):
    records, commits, plugin = two_play_plugin(tmp_path, monkeypatch)
    plugin.v2_playbook_on_play_start(object())
    plugin.v2_playbook_on_play_start(object())
    plugin.v2_playbook_on_no_hosts_remaining()  # max_fail_percentage, or the one host failed a task
    plugin.v2_playbook_on_stats(stats(False))
    assert commits == [0]
    assert read_records(records) == []  # no "commit failed" record to hide the failed task


def test_a_commit_that_raises_stops_all_commits_and_the_next_play_still_starts_clean(tmp_path, monkeypatch):
    loader = DataLoader()
    manager = VariableManager(loader=loader, inventory=InventoryManager(loader=loader, sources="bakery_build,"))
    play = Play.load({"hosts": "bakery_build", "gather_facts": False, "tasks": []}, variable_manager=manager,
                     loader=loader)
    commits: list[int] = []
    plugin = load_plugin(monkeypatch, tmp_path / "plan.json", commits)

    def disk_full(plan_path, index):
        commits.append(index)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(layer_commits, "commit_from_plan", disk_full)
    plugin.v2_playbook_on_play_start(play)
    manager.set_nonpersistent_facts("bakery_build", {"from_play_1": 1})
    with pytest.raises(OSError):  # Ansible only warns about it
        plugin.v2_playbook_on_play_start(next_play(manager))
    assert not manager._nonpersistent_fact_cache.get("bakery_build")
    plugin.v2_playbook_on_play_start(next_play(manager))
    plugin.v2_playbook_on_stats(stats(False))
    assert commits == [0]  # never again, and never play 1's state under another index


def first_play_started(tmp_path, monkeypatch) -> tuple[InventoryManager, VariableManager, object]:
    """One bake host's inventory and variables, and the plugin once the first play has started."""
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources="bakery_build,")
    manager = VariableManager(loader=loader, inventory=inventory)
    play = Play.load({"hosts": "bakery_build", "gather_facts": False, "tasks": []}, variable_manager=manager,
                     loader=loader)
    plugin = load_plugin(monkeypatch, tmp_path / "plan.json", [])
    plugin.v2_playbook_on_play_start(play)
    return inventory, manager, plugin


def test_plugin_undoes_group_by_and_add_host_of_earlier_plays(tmp_path, monkeypatch):
    inventory, manager, plugin = first_play_started(tmp_path, monkeypatch)
    inventory.add_group("os_linux")  # group_by
    inventory.add_host("bakery_build", group="os_linux")
    inventory.get_host("bakery_build").set_variable("from_add_host", 1)  # add_host with variables
    plugin.v2_playbook_on_play_start(next_play(manager))
    host = inventory.get_host("bakery_build")
    assert [g.name for g in host.get_groups()] == ["all", "ungrouped"]
    assert "from_add_host" not in host.get_vars()
    assert "os_linux" not in inventory.groups


def test_a_refresh_in_a_later_play_brings_back_nothing_earlier_plays_added(tmp_path, monkeypatch):
    """Ansible's refresh_inventory replays every group_by and add_host result of the run onto the inventory it reads
    back: a role's `meta: refresh_inventory` would bring back what an earlier role's play added."""
    inventory, manager, plugin = first_play_started(tmp_path, monkeypatch)
    host = inventory.get_host("bakery_build")
    inventory.add_dynamic_group(host, {"add_group": "os_linux", "parent_groups": ["all"]})  # group_by
    inventory.add_dynamic_host({"host_name": "bakery_build", "groups": ["extra"], "host_vars": {"x": 1}}, {})
    plugin.v2_playbook_on_play_start(next_play(manager))
    inventory.refresh_inventory()  # the later role's meta: refresh_inventory
    assert [g.name for g in inventory.get_host("bakery_build").get_groups()] == ["all", "ungrouped"]
    assert "os_linux" not in inventory.groups and "extra" not in inventory.groups
    assert "x" not in inventory.get_host("bakery_build").get_vars()


def test_each_play_reaches_the_container_booted_for_it_by_id(tmp_path, monkeypatch):
    """The containers of one bake share a name; mitogen keys connections by address, so by name the next play
    could be handed the removed container's dead connection."""
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources="bakery_build,")
    inventory.get_host("bakery_build").set_variable("ansible_host", "id-first")
    manager = VariableManager(loader=loader, inventory=inventory)
    play = Play.load({"hosts": "bakery_build", "gather_facts": False, "tasks": []}, variable_manager=manager,
                     loader=loader)
    plugin = load_plugin(monkeypatch, tmp_path / "plan.json", [])
    booted = iter([{"container": "id-second"}, {"container": "id-third"}, {"error": "layer commit failed: disk full"}])
    monkeypatch.setattr(layer_commits, "commit_from_plan", lambda plan, index: {"index": index, **next(booted)})

    def address() -> str:
        return manager.get_vars(play=play, host=inventory.get_host("bakery_build"))["ansible_host"]

    plugin.v2_playbook_on_play_start(play)
    assert address() == "id-first"
    plugin.v2_playbook_on_play_start(next_play(manager))
    assert address() == "id-second"
    plugin.v2_playbook_on_play_start(next_play(manager))
    assert address() == "id-third"  # not the first play's, which the plugin restores the inventory from
    plugin.v2_playbook_on_play_start(next_play(manager))  # no swap: the commit failed; the bake fails with it
    assert address() == "id-third"  # never the removed first container again


def test_plugin_refuses_a_play_with_hosts_an_earlier_role_added(tmp_path, monkeypatch):
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources="bakery_build,")
    manager = VariableManager(loader=loader, inventory=inventory)
    play = Play.load({"hosts": "all", "gather_facts": False, "tasks": []}, variable_manager=manager, loader=loader)
    records, commits, plugin = two_play_plugin(tmp_path, monkeypatch)
    plugin.v2_playbook_on_play_start(play)
    inventory.add_host("newhost", group="all")  # add_host in the first role
    inventory.clear_caches()  # as the add_host action does
    inventory.restrict_to_hosts(inventory.get_hosts("all"))  # Ansible picks the next play's hosts before the callback
    second = next_play(manager)
    plugin.v2_playbook_on_play_start(second)
    plugin.v2_playbook_on_play_start(second.copy())  # serial: the same play again for the next batch
    plugin.v2_playbook_on_stats(stats(False))
    assert commits == [0]
    assert [(r["role"], "added newhost" in r["error"]) for r in read_records(records)] == [("b", True)]


def test_plugin_fails_the_layer_when_it_cannot_clear_the_earlier_plays_state(tmp_path, monkeypatch):
    records, commits, plugin = two_play_plugin(tmp_path, monkeypatch)

    class Broken:
        def get_variable_manager(self):
            raise RuntimeError("no manager")

    plugin.v2_playbook_on_play_start(object())
    plugin.v2_playbook_on_play_start(Broken())
    plugin.v2_playbook_on_stats(stats(False))
    assert commits == [0]
    assert [(r["role"], "could not start it as a run of its own" in r["error"]) for r in read_records(records)] == \
        [("b", True)]


def test_plugin_does_nothing_outside_a_bake(monkeypatch, tmp_path):
    commits: list[int] = []
    plugin = load_plugin(monkeypatch, tmp_path / "plan.json", commits)
    assert "BAKERY_LAYER_PLAN" not in os.environ  # taken: an ansible-playbook a role runs must not commit the plan
    plugin.plan = ""
    plugin.v2_playbook_on_play_start(object())
    plugin.v2_playbook_on_stats(stats(False))
    assert commits == []


def event(kind: str, **data) -> dict:
    return {"event": kind, "event_data": data}


def test_layer_run_counts_per_play_and_records_each_commit_as_it_is_read(tmp_path):
    records = tmp_path / "commits.jsonl"
    layers = planned({"hosts": "all"}, "first", "second")
    recorded = []
    run = LayerRun(layers, 3, Progress(stream=open(tmp_path / "progress", "w")), records, recorded.append)
    run.observe(event("playbook_on_play_start"))
    assert run.step() == "[1/3] first"
    run.observe(event("runner_on_ok", task="Gathering Facts", res={}))
    run.observe(event("runner_on_ok", task="greet", res={"changed": True}))
    run.observe(event("runner_on_ok", task="Reset the connection for the next role",
                      task_action="ansible.builtin.meta", res={"changed": True}))  # bakery's, not the role's
    run.observe(event("playbook_on_play_start"))
    append_record(records, {"index": 0, "role": "first", "ref": "r1", "image_id": "i1", "seconds": 0.5})
    run.observe(event("runner_on_skipped", task="maybe"))  # the commit is read with the next event
    assert [r["ref"] for r in recorded] == ["r1"]
    assert run.step() == "[2/3] second"
    run.observe(event("playbook_on_stats", failures={}, dark={}))
    append_record(records, {"index": 1, "role": "second", "ref": "r2", "image_id": "i2", "seconds": 0.5})
    run.finish(ok=True)
    assert [r["ref"] for r in recorded] == ["r1", "r2"] and not run.broken
    assert (run.tasks, run.changed) == ([2, 1], [1, 0])
    assert run.seconds(1) == round(max(run.step_seconds[1] - 0.5, 0.0), 3)
    lines = (tmp_path / "progress").read_text().splitlines()
    assert lines == ["[1/3] first: running", lines[1], "[2/3] second: running", lines[3]]
    assert lines[1].startswith("[1/3] first: baked") and lines[3].startswith("[2/3] second: baked")


def test_layer_run_marks_the_failed_play_and_stops_on_a_commit_error(tmp_path):
    records = tmp_path / "commits.jsonl"
    out = tmp_path / "progress"
    run = LayerRun(planned({}, "first", "boom"), 2, Progress(stream=out.open("w")), records, lambda r: None)
    run.observe(event("playbook_on_play_start"))
    run.observe(event("playbook_on_play_start"))
    run.observe(event("runner_on_failed", task="Fail on purpose", res={"msg": "no"}))
    run.observe(event("playbook_on_stats", failures={"ctr": 1}, dark={}))
    run.finish(ok=False)
    assert run.current == 1 and "[2/2] boom: FAILED" in out.read_text()
    assert run.recap_failed  # said even when ansible-playbook exits 0 (a failure inside a rescued block)
    append_record(records, {"index": 0, "role": "first", "error": "disk full"})
    run.collect()
    assert run.broken
    assert json.loads(records.read_text())["error"] == "disk full"


def test_an_orphaned_run_commits_nothing_once_bakery_is_gone(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(layer_commits.podman, "run", lambda *args, **kw: calls.append(args))
    plan, records = tmp_path / "plan.json", tmp_path / "commits.jsonl"
    write_plan(plan, container=CONTAINER, apt_root=tmp_path / "apt", records=records, layers=[("first", "ref-1")])
    data = json.loads(plan.read_text())
    data["owner"] = dead_pid()
    plan.write_text(json.dumps(data))
    record = layer_commits.commit_from_plan(str(plan), 0)
    assert "is gone" in record["error"] and calls == []


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_what_a_cancelled_run_leaves_in_a_session_of_its_own_is_killed(tmp_path):
    """mitogen's multiplexer leaves ansible-runner's process group (setsid); its command line names the run."""
    from bakery.ansible import stop_leftovers

    run_dir = tmp_path / "runs" / "r1" / "ansible"
    # one process each, its command line naming the directory (a shell's forked child briefly would too)
    sleep = [sys.executable, "-c", "import time; time.sleep(300)"]
    mux = start_shown([*sleep, str(run_dir / "inventory" / "hosts.json")], start_new_session=True)
    other = start_shown([*sleep, str(tmp_path / "runs" / "r2" / "ansible")], start_new_session=True)
    try:
        assert stop_leftovers(run_dir) == [mux.pid]
        assert mux.wait(timeout=10) == -9 and other.poll() is None
    finally:
        for proc in (mux, other):
            proc.kill()
            proc.wait()
