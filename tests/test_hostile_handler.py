"""A FaultHandler whose serve loop fails: no traceback on stderr, stop() and wait_for() say why, nobody hangs."""

from __future__ import annotations

import threading
import time

import pytest

from harness.abi import Feature, RegisterMode
from harness.errors import UffdClosedError
from harness.handler import FaultHandler, HandlerError
from harness.memory import MemoryKind, Region
from harness.process import run_in_child
from harness.uffd import Userfaultfd


def test_closing_the_uffd_under_the_handler_is_reported_by_stop(capfd):
    uffd = Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP])
    handler = FaultHandler(uffd, lambda u, e: None, poll_interval=0.01).start()
    uffd.close()
    time.sleep(0.3)  # the loop polls the closed fd and fails
    with pytest.raises(HandlerError, match="stopped serving") as info:
        handler.stop(timeout=5)
    assert isinstance(info.value.__cause__, (UffdClosedError, OSError))
    assert "Traceback" not in capfd.readouterr().err, "the serve loop's failure went to stderr"


def test_wait_for_raises_at_once_when_the_loop_has_died():
    uffd = Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP])
    handler = FaultHandler(uffd, lambda u, e: None, poll_interval=0.01).start()
    uffd.close()
    t0 = time.monotonic()
    with pytest.raises(HandlerError, match="stopped serving after 0 of 1 events"):
        handler.wait_for(1, timeout=30)
    assert time.monotonic() - t0 < 5, "wait_for waited for its timeout although nothing serves any more"
    handler.stop(raise_errors=False)


def test_a_thread_blocked_on_a_fault_is_released_when_the_loop_fails():
    """Reading events fails: the handler closes the uffd, which wakes the faulting thread."""

    def body():
        region = Region.create(MemoryKind.ANON, 1)
        uffd = Userfaultfd.open([])
        uffd.register(region.addr, region.length, RegisterMode.MISSING)

        def broken_read(self, max_events=16):
            raise OSError("simulated read failure")

        Userfaultfd.read_events = broken_read  # in the child only (Userfaultfd has slots, no instance dict)
        handler = FaultHandler(uffd, lambda u, e: None, poll_interval=0.01).start()
        toucher = threading.Thread(target=region.read, daemon=True)
        toucher.start()
        toucher.join(5)
        assert not toucher.is_alive(), "the faulting thread is still blocked 5 s after the handler died"
        with pytest.raises(HandlerError, match="simulated read failure"):
            handler.stop(timeout=5)

    run_in_child(body, timeout=20)
