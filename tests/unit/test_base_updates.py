"""`base --if-updates`: apt's simulated upgrade read into updates (security ones first and marked), bakery.yml's
`base:` settings validated, bad input refused in one line with exit 2 before podman is asked anything, and a
version's package changes against the version it replaced, as `show` prints them."""

from __future__ import annotations

import pytest
import yaml

from bakery.base_image import BaseImage
from bakery.base_settings import BaseSettings, parse_base_settings
from bakery.base_updates import images_on_base, parse_simulation
from bakery.catalog import SqliteCatalog
from bakery.catalog_packages import diff_packages
from bakery.cli import main
from bakery.cli.images import package_change_lines
from bakery.errors import ConfigError

pytestmark = pytest.mark.unit

SIMULATION = """@@checked 146
NOTE: This is only a simulation!
Reading package lists...
Calculating upgrade...
The following packages will be upgraded:
  bakery-patch-probe libssl3
Inst bakery-patch-probe [1.0] (1.1 bakery-tests:stable [all])
Inst libssl3 [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst libnew1 (2.0-1 Debian:12.11/stable, Debian:12-updates/stable-updates [amd64])
Conf bakery-patch-probe (1.1 bakery-tests:stable [all])
Conf libssl3 (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
"""


def test_the_simulated_upgrade_becomes_updates_security_first():
    checked, updates = parse_simulation(SIMULATION)
    assert checked == 146
    assert [(u.name, u.installed, u.candidate, u.security) for u in updates] == [
        ("libssl3", "3.0.15-1~deb12u1", "3.0.16-1~deb12u1", True),
        ("bakery-patch-probe", "1.0", "1.1", False),
        ("libnew1", None, "2.0-1", False),
    ]
    assert updates[0].origin == "Debian-Security:12/stable-security"
    assert updates[0].text() == "libssl3 3.0.15-1~deb12u1 -> 3.0.16-1~deb12u1 [security]"
    assert updates[2].text() == "libnew1 (new) -> 2.0-1"


def test_nothing_to_upgrade_is_no_update():
    assert parse_simulation("@@checked 12\n0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n") == (
        12, [])


# Real apt output: the base's own simulation, then one per newest image on it (its dpkg status, --ignore-hold).
WITH_IMAGES = """@@checked 146
Reading package lists...
Calculating upgrade...
The following packages will be upgraded:
  libssl3
Inst libssl3 [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Conf libssl3 (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
@@image 0
Reading package lists...
Calculating upgrade...
The following packages will be upgraded:
  libssl3 python3-botocore
Inst libssl3 [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst python3-botocore [1.29.27+repack-1] (1.29.27+repack-1+deb12u1 Debian-Security:12/stable-security [all])
Conf libssl3 (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Conf python3-botocore (1.29.27+repack-1+deb12u1 Debian-Security:12/stable-security [all])
@@image 1
Reading package lists...
Calculating upgrade...
The following packages will be upgraded:
  python3-botocore
Inst python3-botocore [1.29.27+repack-1] (1.29.27+repack-1+deb12u1 Debian-Security:12/stable-security [all])
Inst iproute2 [6.1.0-2] (6.1.0-3 Debian:12.15/oldstable [amd64])
"""

HELD = """@@checked 120
Reading package lists...
Building dependency tree...
Reading state information...
Calculating upgrade...
The following held packages will be changed:
  tzdata
The following packages will be upgraded:
  iproute2 tzdata
2 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.
Inst tzdata [2024a-0+deb12u1] (2026f-0+deb12u1 Debian-Security:12/oldstable-security [all])
Inst iproute2 [6.1.0-2] (6.1.0-3 Debian:12.15/oldstable [amd64])
Conf tzdata (2026f-0+deb12u1 Debian-Security:12/oldstable-security [all])
Conf iproute2 (6.1.0-3 Debian:12.15/oldstable [amd64])
"""


def test_a_package_a_role_installed_is_an_update_named_with_the_images_that_have_it():
    checked, updates = parse_simulation(WITH_IMAGES, ["webapp:20261203.004", "worker:20261203.002"])
    assert checked == 146
    assert [(u.name, u.installed, u.candidate, u.security, u.images) for u in updates] == [
        ("libssl3", "3.0.15-1~deb12u1", "3.0.16-1~deb12u1", True, []),  # the base's: a new base carries it
        ("python3-botocore", "1.29.27+repack-1", "1.29.27+repack-1+deb12u1", True,
         ["webapp:20261203.004", "worker:20261203.002"]),
        ("iproute2", "6.1.0-2", "6.1.0-3", False, ["worker:20261203.002"]),
    ]
    assert updates[1].text() == ("python3-botocore 1.29.27+repack-1 -> 1.29.27+repack-1+deb12u1 [security] "
                                 "(in webapp:20261203.004, worker:20261203.002)")


def test_a_held_package_does_not_hide_its_update():
    _, updates = parse_simulation(HELD)
    assert [(u.name, u.held) for u in updates] == [("tzdata", True), ("iproute2", False)]
    assert updates[0].text() == "tzdata 2024a-0+deb12u1 -> 2026f-0+deb12u1 [security] [held]"


def test_the_check_script_ignores_holds_and_simulates_each_image_with_its_own_dpkg_status():
    from bakery.base_updates import CHECK_SCRIPT
    assert CHECK_SCRIPT.count("--ignore-hold") == 2
    assert "Dir::State::status=" in CHECK_SCRIPT


def test_the_images_checked_are_the_newest_version_of_each_image_on_this_base(tmp_path):
    catalog = SqliteCatalog(tmp_path / "catalog.db")
    base = BaseImage(ref="localhost/bakery/base:bookworm-2", digest="sha256:b2", release="bookworm", created="")
    try:
        for image, digest in [("webapp", "sha256:b1"), ("webapp", "b2"), ("worker", "sha256:b2"),
                              ("old", "sha256:b1"), ("custom", "sha256:other")]:
            version = catalog.reserve_version(image, "r", 1)
            catalog.complete_version(image, version, image_ref=f"localhost/bakery/{image}:{version}",
                                     image_id="sha256:i", input_digest=f"sha256:{image}{version}",
                                     provenance={"base_digest": digest, "base_image": "x"}, layers=[])
        found = images_on_base(catalog, base)
        assert [label.split(":")[0] for label, _ in found] == ["webapp", "worker"]
        assert all(ref == f"localhost/bakery/{label}" for label, ref in found)
    finally:
        catalog.close()


def test_base_settings_are_validated_and_make_a_flavour():
    assert BaseSettings().flavour == ""
    settings = parse_base_settings({"extra_sources": ["deb [trusted=yes] copy:/srv/repo ./"],
                                    "extra_packages": ["bakery-patch-probe"]})
    assert len(settings.flavour) == 12 and settings.file_paths() == ["/srv/repo"]
    assert parse_base_settings({"extra_packages": ["other"]}).flavour != settings.flavour
    with pytest.raises(ConfigError, match=r"bakery.yml: base: unknown key 'sources'; known keys: extra_packages"):
        parse_base_settings({"sources": []})
    with pytest.raises(ConfigError, match=r"entry 'deb file:/srv/r ./': name a local directory as copy:/PATH"):
        parse_base_settings({"extra_sources": ["deb file:/srv/r ./"]})
    with pytest.raises(ConfigError, match=r"base.extra_sources entry 'http://x' is not a one-line apt source"):
        parse_base_settings({"extra_sources": ["http://x"]})
    with pytest.raises(ConfigError, match=r"base.extra_sources entry .* is not a one-line apt source"):
        parse_base_settings({"extra_sources": ["deb http://a bookworm main\ndeb http://b bookworm main"]})
    with pytest.raises(ConfigError, match=r"base.extra_packages entry 'Bad Name' is not a Debian package name"):
        parse_base_settings({"extra_packages": ["Bad Name"]})
    with pytest.raises(ConfigError, match=r"base.extra_packages must be a list of non-empty strings"):
        parse_base_settings({"extra_packages": "curl"})


def run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_if_updates_with_rebuild_is_refused_in_one_line_and_writes_nothing(proj, capsys):
    rc, out, err = run(capsys, "--project", str(proj), "base", "--if-updates", "--rebuild")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == ["bake.py: error: --if-updates and --rebuild exclude each other: --rebuild "
                                        "always makes a new base, --if-updates only when apt has updates for the "
                                        "current one"]
    assert not (proj / ".bakery").exists()


def test_if_updates_with_an_unknown_release_is_refused(proj, capsys):
    rc, _, err = run(capsys, "--project", str(proj), "base", "--if-updates", "--release", "sid")
    assert rc == 2 and "--release 'sid' is not a Debian release bakery knows" in err
    assert len(err.strip().splitlines()) == 1 and not (proj / ".bakery").exists()


def test_a_bad_base_setting_in_bakery_yml_is_refused_before_podman(proj, capsys):
    settings = yaml.safe_load((proj / "bakery.yml").read_text())
    settings["base"] = {"extra_packages": ["UPPER"]}
    (proj / "bakery.yml").write_text(yaml.safe_dump(settings))
    rc, _, err = run(capsys, "--project", str(proj), "base", "--if-updates")
    assert rc == 2 and "bakery.yml: base.extra_packages entry 'UPPER' is not a Debian package name" in err
    assert not (proj / ".bakery").exists()


def ready(catalog, version_packages):
    versions = []
    for packages in version_packages:
        version = catalog.reserve_version("webapp", "r", 1)
        catalog.complete_version("webapp", version, image_ref=f"ref-{version}", image_id="sha256:i",
                                 input_digest=f"sha256:{version}", provenance={}, layers=[])
        if packages is not None:
            catalog.record_packages("webapp", version, packages)
        versions.append(version)
    return versions


def test_package_changes_against_the_version_replaced_mark_security_updates_a_base_was_made_for(tmp_path):
    catalog = SqliteCatalog(tmp_path / "catalog.db")
    try:
        v1, v2, v3 = ready(catalog, [None, {"libssl3": "3.0.15", "probe": "1.0", "gone": "1"},
                                     {"libssl3": "3.0.16", "probe": "1.1", "curl": "7.88"}])
        catalog.record_base("localhost/bakery/base:bookworm-1", "bookworm", "sha256:b1", updates=[
            {"name": "libssl3", "installed": "3.0.15", "candidate": "3.0.16", "security": True, "origin": "x"},
            {"name": "probe", "installed": "1.0", "candidate": "1.1", "security": False, "origin": "y"}])
        catalog.record_base("localhost/bakery/base:bookworm-1", "bookworm", "sha256:b1")  # a bake: updates kept
        changes = catalog.package_changes("webapp", v3)
        assert changes["previous"] == v2 and changes["note"] == ""
        assert changes["changed"] == {"libssl3": {"old": "3.0.15", "new": "3.0.16", "security": True},
                                      "probe": {"old": "1.0", "new": "1.1", "security": False}}
        assert changes["added"] == {"curl": {"version": "7.88", "security": False}}
        assert changes["removed"] == {"gone": "1"}
        assert package_change_lines(changes) == ["libssl3 3.0.15 -> 3.0.16 [security]", "probe 1.0 -> 1.1",
                                                 "curl (new) 7.88", "gone 1 (removed)"]
        assert catalog.package_changes("webapp", v2)["note"] == f"no package list recorded for {v1}"
        assert catalog.package_changes("webapp", v1)["note"] == "no package list recorded for this version"
        catalog.discard_version("webapp", v2)  # its packages go with it
        assert catalog.packages("webapp", v2) is None and catalog.previous_version("webapp", v3) == v1
    finally:
        catalog.close()


def test_a_first_version_has_nothing_to_compare(tmp_path):
    catalog = SqliteCatalog(tmp_path / "catalog.db")
    try:
        [v1] = ready(catalog, [{"probe": "1.0"}])
        assert catalog.package_changes("webapp", v1)["note"] == "first version of the image: nothing to compare"
        assert catalog.packages("webapp", v1) == {"probe": "1.0"}
    finally:
        catalog.close()


def test_diff_marks_only_the_security_version_itself():
    diff = diff_packages({"a": "1"}, {"a": "2"}, {("a", "3")})
    assert diff["changed"] == {"a": {"old": "1", "new": "2", "security": False}}
