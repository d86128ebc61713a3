import time

import pytest

from bakery.signals import TimeLimitExceeded, time_limit

pytestmark = pytest.mark.unit


def test_a_cpu_bound_step_is_stopped_when_its_time_is_up_and_the_timer_is_cleared():
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="did not finish within 0.2 s"), time_limit(0.2):
        while True:
            sum(range(1000))
    assert time.monotonic() - started < 2
    with time_limit(5):
        pass
    time.sleep(0.1)  # no alarm left behind


def test_the_limit_stops_a_layer_scan_in_the_middle_of_a_file_and_is_not_taken_for_a_rule_failure():
    import io
    import tarfile

    from bakery.verify.secrets import scan_layer

    slow = "".join(f"pass = x{n} y{n}\n" for n in range(300_000)).encode()  # all different: no cache helps
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("etc/app/slow.conf")
        info.size = len(slow)
        tar.addfile(info, io.BytesIO(slow))
    layer.seek(0)
    with pytest.raises(TimeLimitExceeded), time_limit(0.3):
        scan_layer(layer, "L", [])
