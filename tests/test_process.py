"""Forked children: success, a failure's traceback, a signal, a hang (killed with its children)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness import process
from harness.errors import HarnessError
from harness.process import ChildFailed, run_in_child


def test_a_child_that_returns_is_a_success(tmp_path):
    marker = tmp_path / "ran"
    run_in_child(lambda: marker.write_text(str(os.getpid())), timeout=10)
    assert int(marker.read_text()) != os.getpid(), "the function ran in this process, not a child"


def test_a_child_that_raises_sends_its_traceback():
    def fails():
        raise ValueError("the PTE was old")

    with pytest.raises(ChildFailed) as caught:
        run_in_child(fails, timeout=10)
    assert caught.value.status == 1
    assert "ValueError: the PTE was old" in str(caught.value)
    assert "in fails" in caught.value.message, "the traceback names the failing function"


def test_a_child_killed_by_a_signal_says_which():
    with pytest.raises(ChildFailed, match="killed by SIGTERM") as caught:
        run_in_child(lambda: os.kill(os.getpid(), signal.SIGTERM), timeout=10)
    assert caught.value.status == -signal.SIGTERM


def test_a_hung_child_is_killed_with_its_children(tmp_path):
    pidfile = tmp_path / "grandchild"

    def hangs():
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        pidfile.write_text(str(pid))
        time.sleep(60)

    t0 = time.monotonic()
    with pytest.raises(HarnessError, match="still running after 1.0 s: killed; it and its children were at"):
        run_in_child(hangs, timeout=1.0)
    assert time.monotonic() - t0 < 10
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 2  # SIGKILL lands when it is next scheduled
    while not _dead(grandchild) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _dead(grandchild), f"grandchild {grandchild} outlived the hung child"


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever adopted it to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, possibly while /proc was being read
        return True


def test_pinning_to_one_cpu_takes_the_cpu_asked_for_and_gives_the_affinity_back():
    before = os.sched_getaffinity(0)
    cpu, saved = process.pin_to_one_cpu(max)
    try:
        assert cpu == max(before) and saved == before and os.sched_getaffinity(0) == {cpu}
    finally:
        process.restore_affinity(saved)
    assert os.sched_getaffinity(0) == before
    with pytest.raises(RuntimeError), process.pinned_to_one_cpu() as pinned:
        assert pinned == min(before) and os.sched_getaffinity(0) == {pinned}
        raise RuntimeError("the block fails")
    assert os.sched_getaffinity(0) == before, "the affinity comes back when the block raises"
