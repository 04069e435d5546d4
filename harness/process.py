"""Forked children: run a check where it cannot hurt the caller, wait with a deadline, say what went wrong.

Some checks must run in another process: one that drops its privileges, one
whose userfaultfd faults would block the only thread that could serve them,
one that forks under ``UFFD_FEATURE_EVENT_FORK``.  A child that fails sends
its traceback back to the parent; a child that hangs is killed together with
its own children, and the error says where each of them was sleeping in the
kernel, which is what tells a lost wake-up from a slow machine.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from harness.errors import HarnessError

#: how much of a failed child's traceback comes back (the end of it)
MESSAGE_LIMIT = 4000


class ChildFailed(HarnessError):
    """The child's function raised, or the child died: its exit status and what it said."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        if status < 0 and not message:
            message = f"killed by {signal.Signals(-status).name}"
        super().__init__(f"child failed (exit status {status}): {message or 'no message'}")


def pin_to_one_cpu(pick: Callable[[set[int]], int] = min) -> tuple[Optional[int], Optional[set[int]]]:
    """Pin the calling thread to one CPU of its affinity, the one ``pick`` chooses.

    Returns that CPU and the affinity before (for :func:`restore_affinity`),
    or (None, None) where affinity cannot be set.  Why pin: per-CPU LRU
    batches (``lru_add_drain()`` drains only the local CPU's) and the TSC
    (a read on another CPU is another clock).
    """
    try:
        before = os.sched_getaffinity(0)
        cpu = pick(before)
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return None, None
    return cpu, before


def restore_affinity(before: Optional[set[int]]) -> None:
    """Give the calling thread back the affinity :func:`pin_to_one_cpu` returned (None: nothing to do)."""
    if before is not None:
        try:
            os.sched_setaffinity(0, before)
        except OSError:
            pass


@contextmanager
def pinned_to_one_cpu(pick: Callable[[set[int]], int] = min) -> Iterator[Optional[int]]:
    """:func:`pin_to_one_cpu` for a block; the CPU (None: not pinned)."""
    cpu, before = pin_to_one_cpu(pick)
    try:
        yield cpu
    finally:
        restore_affinity(before)


def run_in_child(fn: Callable[[], None], timeout: float = 10.0) -> None:
    """Run ``fn`` in a forked child and wait at most ``timeout`` seconds.

    Returns when ``fn`` returned.  Raises :class:`ChildFailed` with the
    child's traceback when it raised (or with the signal that killed it), and
    HarnessError when it was still running at the deadline (it is killed).
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller
        status = 1
        try:
            os.close(r)
            fn()
            status = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            report = "".join(traceback.format_exception(exc))
            os.write(w, report[-MESSAGE_LIMIT:].encode(errors="replace"))
        finally:
            os._exit(status)
    os.close(w)
    try:
        status = reap(pid, timeout)
        message = os.read(r, 2 * MESSAGE_LIMIT).decode(errors="replace").strip()
    finally:
        os.close(r)
    if status != 0:
        raise ChildFailed(status, message)


def reap(pid: int, timeout: float, context: Optional[Callable[[], str]] = None) -> int:
    """Wait for child ``pid`` at most ``timeout`` seconds; return its exit status (``-signum`` if killed).

    At the deadline the child and its children are killed and HarnessError
    says where they were sleeping, plus ``context()`` when given.
    """
    deadline = time.monotonic() + timeout
    while True:
        done, wstatus = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(wstatus)
        if time.monotonic() > deadline:
            where = sleeping_in(pid)
            kill_tree(pid)
            raise HarnessError(
                f"child {pid} still running after {timeout} s: killed; "
                f"it and its children were at: {where}" + (f"; {context()}" if context else "")
            )
        time.sleep(0.002)


def kill_tree(pid: int) -> None:
    """SIGKILL child ``pid`` and its own children (which would otherwise outlive it), and reap it."""
    for grandchild in children(pid):
        try:
            os.kill(grandchild, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def children(pid: int) -> list[int]:
    """The children of ``pid`` (its main thread's), from /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def sleeping_in(pid: int) -> str:
    """Where ``pid`` and its children sleep in the kernel: the first stack frames (root), else wchan."""

    def describe(p: int) -> str:
        try:
            with open(f"/proc/{p}/stack") as f:
                frames = [line.split()[-1] for line in f.read().splitlines()[:4]]
            return f"{p}: {' < '.join(frames)}"
        except OSError:
            try:
                with open(f"/proc/{p}/wchan") as f:
                    return f"{p}: {f.read() or '?'}"
            except OSError:
                return f"{p}: gone"

    return "; ".join(describe(p) for p in [pid, *children(pid)])
