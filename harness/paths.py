"""Where things are, and the environment variables that move them: one place for each.

``build/`` (git-ignored) holds the kernel builds (``build/kernels``), caches
(``build/cache``) and every result (``build/results``); ``UFFD_HARNESS_BUILD_DIR``
moves all three together (tests use it to stay out of the real cache).  Paths
are absolute, from the repository, never from the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the environment variables the harness reads, by what they do
ENV_BUILD_DIR = "UFFD_HARNESS_BUILD_DIR"  #: moves build/ (kernels, caches, results)
ENV_BUILD_TIMEOUT = "UFFD_HARNESS_BUILD_TIMEOUT"  #: seconds for one kernel's make
ENV_KERNEL = "UFFD_HARNESS_KERNEL"  #: set in a guest: the name of the kernel it booted
ENV_UAPI_HEADER = "UFFD_HARNESS_UAPI_HEADER"  #: the userfaultfd.h whose hint bits to use
ENV_ACCEL = "UFFD_HARNESS_ACCEL"  #: force QEMU's accelerator (kvm or tcg)
ENV_VNG = "UFFD_HARNESS_VNG"  #: the vng executable (tests use a stand-in)
ENV_RWDIR = "UFFD_HARNESS_RWDIR"  #: set in a guest: its writable results directory
#: set for a suite that runs beside the kernel's selftests: a file that exists while they run; tests
#: that change global mm settings (large folios, khugepaged) wait until it is gone
#: (harness.pytest_plugin.wait_for_the_selftests, called by tests/conftest.py's fixtures)
ENV_SELFTESTS_RUNNING = "UFFD_HARNESS_SELFTESTS_RUNNING"
ENV_SIM_PROFILES = "UFFD_HARNESS_SIM_PROFILES"  #: extra simulator profiles (module:NAME, comma-separated)
ENV_KEEP_CANDIDATES = "UFFD_HARNESS_KEEP_CANDIDATES"  #: candidate-* kernel builds kept (default 3)
ENV_CANDIDATES_MAX_MB = "UFFD_HARNESS_CANDIDATES_MAX_MB"  #: MB the kept candidate-* builds may take (default: no limit)
ENV_KCIDB_ORIGIN = "UFFD_HARNESS_KCIDB_ORIGIN"  #: the KCIDB origin of report.kcidb.json (default uffd_harness)
ENV_LAVA_RAMDISK_URL = "UFFD_HARNESS_LAVA_RAMDISK_URL"  #: the ramdisk of the LAVA jobs validate writes
ENV_DIFF_EXAMPLES = "UFFD_DIFF_EXAMPLES"  #: sequences per differential test (host 500, guest 100)

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = Path(os.environ.get(ENV_BUILD_DIR) or REPO_ROOT / "build").resolve()
RESULTS_DIR = BUILD_DIR / "results"
#: `make bench`'s results and the host's calibration (the cost model's input, validate's projection)
BENCH_JSON = RESULTS_DIR / "bench.json"
CALIBRATION_JSON = RESULTS_DIR / "calibration.json"
KERNELS_DIR = BUILD_DIR / "kernels"
CACHE_DIR = BUILD_DIR / "cache"


def in_guest() -> bool:
    """Whether this process runs inside a guest the harness booted (the runner sets the kernel's name)."""
    return ENV_KERNEL in os.environ
