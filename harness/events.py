"""userfaultfd events as Python objects, decoded from what ``Userfaultfd.read_events`` reads.

Data only: the thread that serves a userfaultfd's events is :mod:`harness.handler`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

from harness.abi import Event, PagefaultFlag
from harness.errors import HarnessError

if TYPE_CHECKING:
    # The type of ForkEvent.uffd, nothing more: no code here uses a Userfaultfd (the binding decodes its
    # events into these types, so it is the one that imports this module)
    from harness.uffd import Userfaultfd


@dataclass(frozen=True)
class PageFault:
    address: int
    flags: PagefaultFlag
    #: id of the faulting thread (0 unless THREAD_ID was negotiated)
    ptid: int

    @property
    def write(self) -> bool:
        return bool(self.flags & PagefaultFlag.WRITE)

    @property
    def wp(self) -> bool:
        return bool(self.flags & PagefaultFlag.WP)

    @property
    def minor(self) -> bool:
        return bool(self.flags & PagefaultFlag.MINOR)


@dataclass(frozen=True)
class ForkEvent:
    #: the child's userfaultfd, already open in this process (close it)
    uffd: "Userfaultfd"


@dataclass(frozen=True)
class RemapEvent:
    old: int
    new: int
    length: int


@dataclass(frozen=True)
class RemoveEvent:
    start: int
    end: int


@dataclass(frozen=True)
class UnmapEvent:
    start: int
    end: int


UffdEvent = Union[PageFault, ForkEvent, RemapEvent, RemoveEvent, UnmapEvent]


def decode_events(buf, count: int, adopt_fd: Callable[[int], "Userfaultfd"]) -> list[UffdEvent]:
    events: list[UffdEvent] = []
    for i in range(count):
        e = buf[i]
        kind = e.event
        if kind == Event.PAGEFAULT:
            events.append(PageFault(e.address, PagefaultFlag(e.flags), e.ptid))
        elif kind == Event.FORK:
            events.append(ForkEvent(adopt_fd(e.fork_ufd)))
        elif kind == Event.REMAP:
            events.append(RemapEvent(getattr(e, "from"), e.to, e.len))
        elif kind == Event.REMOVE:
            events.append(RemoveEvent(e.start, e.end))
        elif kind == Event.UNMAP:
            events.append(UnmapEvent(e.start, e.end))
        else:
            raise HarnessError(f"userfaultfd read: unknown event type {kind:#x}")
    return events
