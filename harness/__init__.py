"""uffd-harness: drive userfaultfd and observe the page-table bits it leaves.

The public facade.  The rooms behind it:

- :mod:`harness.abi`     the ABI by name (features, ioctls, modes, pagemap bits)
- :mod:`harness.uffd`    the userfaultfd object and its ioctls
- :mod:`harness.events`  events as Python objects
- :mod:`harness.handler` the fault-handler thread
- :mod:`harness.memory`  memory regions, one VMA each
- :mod:`harness.pte`     PTE observation (pagemap, smaps, idle pages, kpageflags)
- :mod:`harness.sim`, :mod:`harness.backends`  the simulator and the backend interface
- :mod:`harness.timing`  first-touch benchmarks
- :mod:`harness.vm`      kernel builds and the QEMU guest
"""

from harness.abi import Feature, Ioctl, RegisterMode, hint_abi, use_uapi_header
from harness.errors import (
    FeatureUnavailable,
    HarnessError,
    InvalidRanges,
    UffdClosedError,
    UffdError,
    WriteProtectBatchError,
)
from harness.events import PageFault
from harness.handler import FaultHandler
from harness.memory import MemoryKind, Region
from harness.pte import PteState, clear_refs, observe
from harness.uffd import PreparedRanges, Userfaultfd, open_any, probe_features

__all__ = [
    "Feature",
    "Ioctl",
    "RegisterMode",
    "hint_abi",
    "use_uapi_header",
    "FeatureUnavailable",
    "HarnessError",
    "InvalidRanges",
    "UffdClosedError",
    "UffdError",
    "WriteProtectBatchError",
    "FaultHandler",
    "PageFault",
    "MemoryKind",
    "Region",
    "PteState",
    "clear_refs",
    "observe",
    "PreparedRanges",
    "Userfaultfd",
    "open_any",
    "probe_features",
]
