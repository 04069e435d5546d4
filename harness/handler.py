"""A thread that serves a userfaultfd's events for tests, and resolves a fault whose callback failed."""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Callable, Optional

from harness.errors import HarnessError
from harness.events import PageFault, UffdEvent
from harness.memory import PAGE_SIZE, default_hugepage_size
from harness.uffd import Userfaultfd


class HandlerError(HarnessError):
    """The fault handler's callback raised, or its serve loop failed; the original exception is the cause."""


class FaultHandler:
    """Serve a userfaultfd's events on a background thread.

    ``callback(uffd, event)`` runs once per event.  If it raises, the handler
    resolves that fault the simplest way it can (un-protect, continue, or
    map a zero page) so the faulting thread does not hang, keeps serving,
    and :meth:`stop` re-raises the first exception in the calling thread.
    If the serve loop itself fails (reading events, e.g. because the
    userfaultfd was closed under it), the handler closes the userfaultfd,
    which wakes every thread blocked on one of its faults
    (``userfaultfd_release()`` in fs/userfaultfd.c), and :meth:`wait_for`
    and :meth:`stop` raise :class:`HandlerError` saying why::

        with FaultHandler(uffd, lambda u, ev: u.zeropage(page_of(ev), PAGE)):
            region.read()
    """

    def __init__(
        self, uffd: Userfaultfd, callback: Callable[[Userfaultfd, UffdEvent], None], *, poll_interval: float = 0.05
    ):
        self.uffd = uffd
        self.callback = callback
        self.events: list[UffdEvent] = []
        self._poll_interval = poll_interval
        self._error: Optional[BaseException] = None
        #: why the serve loop ended other than by stop() (None while it serves)
        self._serve_failure: Optional[BaseException] = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="uffd-fault-handler", daemon=True)

    def start(self) -> "FaultHandler":
        self._thread.start()
        return self

    def __enter__(self) -> "FaultHandler":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(raise_errors=exc_type is None)

    def stop(self, timeout: float = 10.0, raise_errors: bool = True) -> None:
        """Stop serving; wait at most ``timeout`` s; re-raise the callback's error."""
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise HarnessError(f"fault handler did not stop within {timeout} s")
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1
        if raise_errors and self._serve_failure is not None:
            raise HandlerError(f"fault handler stopped serving: {self._serve_failure!r}") from self._serve_failure
        if raise_errors and self._error is not None:
            raise HandlerError(f"fault handler callback failed: {self._error!r}") from self._error

    def wait_for(self, count: int, timeout: float = 5.0) -> list[UffdEvent]:
        """Wait until ``count`` events have been handled; raise after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            if self._serve_failure is not None:
                raise HandlerError(
                    f"fault handler stopped serving after {len(self.events)} of {count} events: {self._serve_failure!r}"
                ) from self._serve_failure
            if time.monotonic() > deadline:
                raise HarnessError(f"expected {count} userfaultfd events within {timeout} s, got {len(self.events)}")
            time.sleep(0.005)
        return list(self.events)

    def _serve(self) -> None:
        try:
            self._serve_loop()
        except BaseException as exc:  # noqa: BLE001 - reported by stop() and wait_for(), not on stderr
            self._serve_failure = exc
            # Nobody reads this fd's faults any more: closing it wakes the threads blocked on them.
            try:
                self.uffd.close()
            except OSError:
                pass

    def _serve_loop(self) -> None:
        poller = select.poll()
        poller.register(self.uffd.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = dict(poller.poll(int(self._poll_interval * 1000)))
            if self._stop_r in ready:
                return
            if not ready:
                continue
            for event in self.uffd.read_events():
                self.events.append(event)
                try:
                    self.callback(self.uffd, event)
                except BaseException as exc:  # noqa: BLE001 - re-raised by stop()
                    if self._error is None:
                        self._error = exc
                    self._rescue(event)

    def _rescue(self, event: UffdEvent) -> None:
        if not isinstance(event, PageFault):
            return
        # hugetlb ranges take only whole huge pages, and have no ZEROPAGE: a bare
        # wake would make the thread fault again at once, for ever.  So try both
        # page sizes, and as a last resort unregister the page (the retried
        # fault is then an ordinary one).
        spans = [(event.address & ~(size - 1), size) for size in (PAGE_SIZE, default_hugepage_size())]
        attempts: list[Callable[..., object]] = []  # called with no arguments
        for start, size in spans:
            if event.wp:
                attempts.append(lambda s=start, n=size: self.uffd.writeprotect(s, n, protect=False))
            if event.minor:
                attempts.append(lambda s=start, n=size: self.uffd.continue_(s, n))
            attempts.append(lambda s=start, n=size: self.uffd.zeropage(s, n))
        attempts += [lambda s=start, n=size: self.uffd.unregister(s, n) for start, size in spans]
        attempts.append(lambda: self.uffd.wake(*spans[0]))
        for resolve in attempts:
            try:
                resolve()
                return
            except OSError:
                continue
