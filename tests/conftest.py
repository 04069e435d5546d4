"""Shared fixtures, and the rule that a CI run may not skip.

Under ``CI=true`` (or ``--no-skip``) every skipped test is reported as a
failure that names what was missing: in CI a missing capability is a broken
set-up, not a reason to pass.
"""

from __future__ import annotations

import os

import pytest

from harness import paths
from harness.memory import (
    KHUGEPAGED_SLEEP_MS,
    LARGE_FOLIO_SETTINGS,
    MemoryKind,
    Region,
    free_hugepages,
    large_folio_unavailable,
    sysfs_choice,
)

pytest_plugins = ["harness.pytest_plugin", "pytester"]


def pytest_addoption(parser):
    parser.addoption(
        "--no-skip", action="store_true", default=False, help="turn skips into failures (implied by CI=true)"
    )


def _no_skip(config) -> bool:
    return config.getoption("--no-skip") or os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and _no_skip(item.config):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in a run that must not skip (CI): {reason}"


def _in_harness_guest() -> bool:
    """Inside a guest booted by harness/vm/runner.py (it sets UFFD_HARNESS_KERNEL)."""
    from harness.vm.runner import ENV_KERNEL

    return bool(os.environ.get(ENV_KERNEL))


def pytest_collection_modifyitems(config, items):
    """``guest_kernel`` tests need one of our guest kernels (the pte channel, swap, /proc/config.gz):
    outside such a guest they are deselected, not skipped, so that a host run under CI=true
    neither fails on them nor pretends to have run them.  ``make vm-test`` runs them.

    Beside the kernel's selftests, the ``mm_settings`` tests run last (in their order): they
    wait for the selftests to end (:func:`harness.pytest_plugin.wait_for_the_selftests`), so run first they would
    hold the suite up, and run last the rest of the suite overlaps the selftests.
    """
    if os.environ.get(paths.ENV_SELFTESTS_RUNNING):
        settings = [item for item in items if item.get_closest_marker("mm_settings")]
        items[:] = [item for item in items if not item.get_closest_marker("mm_settings")] + settings
    if _in_harness_guest():
        return
    guest_only = [item for item in items if item.get_closest_marker("guest_kernel")]
    if guest_only:
        config.hook.pytest_deselected(items=guest_only)
        items[:] = [item for item in items if not item.get_closest_marker("guest_kernel")]


def pytest_report_header(config):
    import platform

    from harness import abi

    hints = abi.hint_abi()
    return [
        f"kernel: {platform.release()}  euid: {os.geteuid()}  "
        f"hint ABI: {hints.source}  no-skip: {_no_skip(config)}  "
        "guest_kernel tests: "
        + ("run (harness guest)" if _in_harness_guest() else "deselected (not in a harness guest)")
    ]


def require_kind(kind: MemoryKind) -> None:
    """Skip (naming what is missing) when this machine cannot make ``kind`` regions."""
    if kind.hugetlb and free_hugepages() < 4:
        pytest.skip(f"{kind.value}: fewer than 4 free huge pages (vm.nr_hugepages)")


#: huge pages a module that uses hugetlb reserves when it can (see :func:`hugepages_reserved`)
HUGEPAGES_WANTED = 16
_NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


@pytest.fixture(scope="module")
def hugepages_reserved():
    """Make sure the hugetlb cases find free huge pages.

    As root with fewer than ``HUGEPAGES_WANTED`` free, raise vm.nr_hugepages
    by that many for this module; afterwards take back what was added (which
    restores the old value, and leaves alone what another process added
    meanwhile).
    """
    free = free_hugepages()
    if free >= HUGEPAGES_WANTED:
        yield free
        return
    if os.geteuid() != 0:
        if free == 0:
            pytest.skip("not root: cannot reserve huge pages")
        yield free
        return
    old = _read_int(_NR_HUGEPAGES)
    added = 0
    try:
        with open(_NR_HUGEPAGES, "w") as f:
            f.write(str(old + HUGEPAGES_WANTED))
        added = _read_int(_NR_HUGEPAGES) - old  # the kernel may find fewer
        yield free_hugepages()
    finally:
        if added > 0:
            with open(_NR_HUGEPAGES, "w") as f:
                f.write(str(max(_read_int(_NR_HUGEPAGES) - added, 0)))


@pytest.fixture(scope="module")
def large_folios_enabled():
    """Let MADV_HUGEPAGE memory have large folios (64 KiB anon mTHP, shmem THP) for this module.

    As root, each setting of :data:`harness.memory.LARGE_FOLIO_SETTINGS` that
    is off is switched to what the harness asks, and put back afterwards (in a
    guest too: its kernel boots with them off).  Not root, or a kernel without the
    file: left as it is, and the checks say what is missing.
    """
    # imported here, not at the top: pytest must import its plugin first to rewrite its asserts
    from harness.pytest_plugin import wait_for_the_selftests

    restore = []
    try:
        for kind, (path, value) in LARGE_FOLIO_SETTINGS.items():
            if os.geteuid() != 0 or not os.path.exists(path) or large_folio_unavailable(kind) is None:
                continue
            wait_for_the_selftests()
            old = sysfs_choice(path)
            with open(path, "w") as f:
                f.write(value)
            restore.append((path, old))
        yield
    finally:
        for path, old in restore:
            with open(path, "w") as f:
                f.write(old)


#: how long khugepaged sleeps between scans while a module that needs it paused runs (an hour)
KHUGEPAGED_PAUSE_MS = 3_600_000


@pytest.fixture(scope="module")
def khugepaged_paused():
    """Keep khugepaged from collapsing a module's split THPs back into PMDs between two observations.

    A range that a test split on purpose, or un-protected without its uffd-wp
    bits, is a MADV_HUGEPAGE range khugepaged may collapse at any moment (a
    full validate once saw smaps say "split" and PAGEMAP_SCAN "huge" for one
    region).  As root, the scan period is made an hour for the module and put
    back after: writing it wakes khugepaged for one scan, done here before any
    test region exists.  Yields the pause in ms; None (not root, or no such
    file) when left as it is.
    """
    from harness.pytest_plugin import wait_for_the_selftests

    if os.geteuid() != 0 or not os.path.exists(KHUGEPAGED_SLEEP_MS):
        yield None
        return
    wait_for_the_selftests()
    old = _read_int(KHUGEPAGED_SLEEP_MS)
    with open(KHUGEPAGED_SLEEP_MS, "w") as f:
        f.write(str(KHUGEPAGED_PAUSE_MS))
    try:
        yield KHUGEPAGED_PAUSE_MS
    finally:
        with open(KHUGEPAGED_SLEEP_MS, "w") as f:
            f.write(str(old))


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read())


@pytest.fixture
def make_region():
    """``make_region(kind, npages)``: regions unmapped at the end of the test."""
    made: list[Region] = []

    def make(kind: MemoryKind = MemoryKind.ANON, npages: int = 1, **kwargs) -> Region:
        require_kind(kind)
        region = Region.create(kind, npages, **kwargs)
        made.append(region)
        return region

    yield make
    for region in made:
        region.close()
