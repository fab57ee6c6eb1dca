"""The toolkit's processes (support.spawn, stop_group): started with default SIGINT and SIGTERM
whatever the test run inherited, and stopped for good, their whole group gone, before the next
server takes the port."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from capacity_pipeline_tests.support import live_members, spawn, stop_group, wait_until

SHOW_SIGNALS = "import signal; print(*(signal.getsignal(n) == signal.SIG_IGN for n in (signal.SIGINT, signal.SIGTERM)))"


@pytest.fixture
def run_started_as_a_background_job() -> Iterator[None]:
    """This process as `pytest &` from a script starts it: SIGINT ignored (and SIGTERM, for good measure)."""
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def test_a_spawned_process_gets_default_sigint_and_sigterm_whatever_the_run_inherited(
    run_started_as_a_background_job,
):
    unset = subprocess.run([sys.executable, "-c", SHOW_SIGNALS], capture_output=True, text=True, check=True)
    assert unset.stdout == "True True\n"  # ignored: what a plain Popen passes on
    process = spawn([sys.executable, "-c", SHOW_SIGNALS], stdout=subprocess.PIPE, text=True)
    assert process.communicate(timeout=30)[0] == "False False\n"


def test_stopping_a_group_returns_once_every_process_of_it_is_gone(run_started_as_a_background_job):
    # Three sleeps in one group: the leader and one child ignore SIGTERM, another child does not.
    script = "trap '' TERM; sleep 600 & (trap - TERM; exec sleep 600) & exec sleep 600"
    group = spawn(["sh", "-c", script])
    wait_until(lambda: len(live_members(group.pid)) == 3, 10, "the three sleeps running")
    stop_group(group, sig=signal.SIGTERM, grace=1)
    assert live_members(group.pid) == []  # SIGKILL took the two that ignored SIGTERM
