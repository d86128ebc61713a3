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
