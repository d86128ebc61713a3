"""The local gc plan: which versions and artifacts go, and why each one that stays is kept."""

from __future__ import annotations

import pytest

from bakery.gc.plan import ArtifactRow, InUse, LayerRow, ReleaseRow, VersionRow, plan_local

pytestmark = pytest.mark.unit


def versions(image: str, count: int, artifacts=None) -> list[VersionRow]:
    return [VersionRow(image, f"20260101.{n:03d}", n, f"localhost/bakery/{image}:20260101.{n:03d}",
                       f"sha256:{image}{n:03d}", (artifacts or {}).get(n, {})) for n in range(1, count + 1)]


def release(id_, env, version, kind="deploy", status="succeeded", previous=None, image="webapp") -> ReleaseRow:
    return ReleaseRow(id=id_, env=env, image=image, version=version, previous_version=previous, kind=kind,
                      status=status)


def deleted(plan) -> list[str]:
    return sorted(f"{d['image']}:{d['version']}" for d in plan.delete)


def reasons(plan, image, version) -> list[str]:
    return next(k["reasons"] for k in plan.kept if (k["image"], k["version"]) == (image, version))


def test_keeps_the_newest_n_of_each_image_and_deletes_the_rest():
    plan = plan_local(versions("webapp", 4) + versions("api", 2), [], InUse(), keep=2)
    assert deleted(plan) == ["webapp:20260101.001", "webapp:20260101.002"]
    assert reasons(plan, "webapp", "20260101.004") == ["one of the newest 2"]
    assert {(k["image"], k["version"]) for k in plan.kept} == {("webapp", "20260101.003"), ("webapp", "20260101.004"),
                                                               ("api", "20260101.001"), ("api", "20260101.002")}
    assert all(d["reason"] == "older than the newest 2 and not in use" for d in plan.delete)


def test_what_an_environment_runs_and_its_rollback_target_stay():
    history = [
        release(1, "qa", "20260101.001"),
        release(2, "qa", "20260101.002"),
        release(3, "qa", "20260101.002", kind="config"),  # same version, new config: not a new rollback target
        release(4, "qa", "20260101.003"),
        release(5, "prod", "20260101.001", kind="promote"),
        release(6, "prod", "20260101.001", kind="down"),  # a down is no rollout: prod's release stays what it was
    ]
    plan = plan_local(versions("webapp", 6), history, InUse(), keep=1)
    assert deleted(plan) == ["webapp:20260101.004", "webapp:20260101.005"]
    assert reasons(plan, "webapp", "20260101.003") == ["qa runs it (release #4)"]
    assert reasons(plan, "webapp", "20260101.002") == ["rollback target of qa (release #3)"]
    assert reasons(plan, "webapp", "20260101.001") == ["prod runs it (release #5)"]


def test_failed_releases_protect_nothing_but_one_in_progress_protects_both_ends():
    history = [
        release(1, "qa", "20260101.001"),
        release(2, "qa", "20260101.002", status="rolled_back", previous="20260101.001"),
        release(3, "qa", "20260101.003", status="failed"),
        release(4, "dev", "20260101.004", status="in_progress", previous="20260101.005"),
    ]
    plan = plan_local(versions("webapp", 6), history, InUse(), keep=1)
    assert deleted(plan) == ["webapp:20260101.002", "webapp:20260101.003"]
    assert reasons(plan, "webapp", "20260101.004") == ["release #4 to dev is in progress"]
    assert reasons(plan, "webapp", "20260101.005") == ["release #4 to dev may roll back to it"]


def test_a_version_a_container_uses_stays_whether_found_by_reference_or_by_id():
    rows = versions("webapp", 4)
    in_use = InUse(refs={rows[0].image_ref: ["bakery-qa-1a2b3c"]}, ids={"webapp002": ["adhoc"]})
    plan = plan_local(rows, [], in_use, keep=1)
    assert deleted(plan) == ["webapp:20260101.003"]
    assert reasons(plan, "webapp", "20260101.001") == ["container bakery-qa-1a2b3c uses it"]
    assert reasons(plan, "webapp", "20260101.002") == ["container adhoc uses it"]


def test_only_artifacts_no_remaining_version_bakes_in_and_not_the_newest_go():
    rows = versions("webapp", 3,
                    artifacts={1: {"webapp": "1.0+aaa"}, 2: {"webapp": "1.0+bbb"}, 3: {"webapp": "1.0+ccc"}})
    store = [ArtifactRow("webapp", "1.0+aaa", "a" * 64, False), ArtifactRow("webapp", "1.0+bbb", "b" * 64, False),
             ArtifactRow("webapp", "1.0+ccc", "c" * 64, False), ArtifactRow("webapp", "1.0+ddd", "d" * 64, True),
             ArtifactRow("webapp", "1.0+eee", "e" * 64, False)]
    plan = plan_local(rows, [release(1, "qa", "20260101.002")], InUse(), keep=1, artifacts=store)
    assert deleted(plan) == ["webapp:20260101.001"]
    # bbb: qa runs it; ccc: newest; ddd: latest
    assert sorted(a["version"] for a in plan.artifacts) == ["1.0+aaa", "1.0+eee"]


def test_keep_must_be_positive():
    with pytest.raises(ValueError):
        plan_local(versions("webapp", 1), [], InUse(), keep=0)


def built(image: str, n: int, layers: list[str], created: str) -> VersionRow:
    return VersionRow(image, f"20260101.{n:03d}", n, f"localhost/bakery/{image}:20260101.{n:03d}",
                      f"sha256:{image}{n:03d}", {}, created, frozenset(layers))


def layer(key: str, created: str, image: str = "webapp", image_id: str | None = None) -> LayerRow:
    return LayerRow(key, image, f"role-{key}", image_id if image_id is not None else f"sha256:id-{key}", created)


def test_cached_layers_go_with_the_versions_built_on_them_but_never_under_one_that_stays():
    # v1 on base+app1, v2 on base+app2, v3 on base+app3; --keep 1 keeps v3 only
    rows = [built("webapp", 1, ["base", "app1"], "2026-01-01T00:01:00Z"),
            built("webapp", 2, ["base", "app2"], "2026-01-01T00:02:00Z"),
            built("webapp", 3, ["base", "app3"], "2026-01-01T00:03:00Z")]
    layers = [layer("base", "2026-01-01T00:00:30Z"), layer("app1", "2026-01-01T00:00:50Z"),
              layer("app2", "2026-01-01T00:01:50Z"), layer("app3", "2026-01-01T00:02:50Z"),
              layer("failed", "2026-01-01T00:02:10Z"),  # a bake that failed between v2 and v3: superseded
              layer("since", "2026-01-01T00:04:00Z"),  # a bake after v3 (running, or failed): the next one reuses it
              layer("used", "2026-01-01T00:00:40Z"),  # a build container started from it
              layer("noid", "2026-01-01T00:00:40Z", image_id=""),  # no id: never removed by a tag that may have moved
              layer("other", "2026-01-01T00:00:40Z", image="api")]  # an image with no version: nothing supersedes it
    plan = plan_local(rows, [], InUse(ids={"id-used": ["bakery-build-webapp-1"]}), keep=1, layers=layers)
    assert deleted(plan) == ["webapp:20260101.001", "webapp:20260101.002"]
    # newest first: a child before its parent
    assert [entry["key"] for entry in plan.layers] == ["failed", "app2", "app1"]
    assert plan.layers[0] == {"image": "webapp", "role": "role-failed", "key": "failed", "image_id": "sha256:id-failed",
                              "reason": "no version that stays is built on it and a newer version exists"}


def test_a_layer_under_a_version_an_environment_runs_stays():
    rows = [built("webapp", 1, ["base", "app1"], "2026-01-01T00:01:00Z"),
            built("webapp", 2, ["base", "app2"], "2026-01-01T00:02:00Z")]
    layers = [layer("base", "2026-01-01T00:00:30Z"), layer("app1", "2026-01-01T00:00:50Z"),
              layer("app2", "2026-01-01T00:01:50Z")]
    plan = plan_local(rows, [release(1, "prod", "20260101.001")], InUse(), keep=1, layers=layers)
    assert deleted(plan) == [] and plan.layers == []
