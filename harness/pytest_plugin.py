"""pytest plugin: the ``backend`` fixture, its automatic fallback, and result reporting.

Register it from a conftest.py with ``pytest_plugins = ["harness.pytest_plugin"]``.

Options
-------
``--backend kernel|sim|auto`` (default auto)
    *auto*: a test runs on the kernel when the kernel offers every feature
    the test needs (``@pytest.mark.needs(Feature.ACCESS_HINTS)``), else on
    the simulator; *kernel*: always the kernel (a missing feature is a skip
    naming it); *sim*: always the simulator.
``--sim-profile NAME`` (default ``access-hints``)
    The simulator profile used for fallback and for ``--backend sim``.
``--channels smaps,idle-page,kpageflags``
    The kernel backend's observation channels (default: each one that works here).
``--summary-json PATH``
    Write the run's summary (schema in :func:`build_summary`).

Markers
-------
``@pytest.mark.clause(N)``  the BRIEF 2.2 contract clause (1..8) the test checks
``@pytest.mark.needs(*features)``  :class:`~harness.abi.Feature` members the test needs
``@pytest.mark.backend(name)``  pin a test to "kernel" or "sim"

Every test that uses the ``backend`` fixture records JUnit properties
``backend``, ``profile``, ``kernel_release``, ``channels`` (and ``clause``,
``fallback`` when they apply); the terminal summary counts tests by backend.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter, defaultdict
from typing import Optional

import pytest

from harness import paths
from harness.abi import Feature
from harness.backends.contract import CONTRACT, SOFT_DIRTY, SWAP

CLAUSES = tuple(sorted(CONTRACT))
#: what each clause needs from the kernel (BRIEF 2.2: on a stock kernel 2-4 and 6-8 cannot run)
CLAUSE_NEEDS = {n: clause.needs for n, clause in CONTRACT.items()}

_BACKEND_KEY = "backend"


#: how long a test that changes global mm settings waits for the selftests beside the suite to end
SELFTESTS_WAIT_SECONDS = 900


def wait_for_the_selftests() -> None:
    """Return once no selftest runs beside this suite: they must see the kernel's default mm settings.

    For fixtures that change such settings (tests/conftest.py): validate's guest
    (``harness.validate.guest.run_steps``) names, in ``paths.ENV_SELFTESTS_RUNNING``,
    a file that exists while the selftests run.
    """
    flag = os.environ.get(paths.ENV_SELFTESTS_RUNNING)
    deadline = time.monotonic() + SELFTESTS_WAIT_SECONDS
    while flag and os.path.exists(flag):
        if time.monotonic() > deadline:
            pytest.fail(f"the selftests beside the suite still run after {SELFTESTS_WAIT_SECONDS} s ({flag} exists)")
        time.sleep(0.2)


def pytest_addoption(parser):
    group = parser.getgroup("uffd-harness backends")
    group.addoption(
        "--backend",
        choices=("kernel", "sim", "auto"),
        default="auto",
        help="where tests run: the kernel, the simulator, or auto (kernel when it has the features)",
    )
    group.addoption(
        "--sim-profile", default=None, help="simulator profile for fallback and --backend sim (default: access-hints)"
    )
    group.addoption(
        "--channels",
        default=None,
        help="comma-separated observation channels for the kernel backend (default: all available)",
    )
    group.addoption(
        "--summary-json",
        default=None,
        metavar="PATH",
        help="write a JSON summary: kernel, features, counts, per-clause results",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "clause(n): the BRIEF 2.2 contract clause (1..8) this test checks")
    config.addinivalue_line("markers", "needs(*features): harness.abi.Feature members the test needs")
    config.addinivalue_line("markers", "backend(name): run this test only on 'kernel' or 'sim'")
    config._uffd_results = _Results()
    config.pluginmanager.register(config._uffd_results, "uffd-harness-results")


# -- choosing a backend ------------------------------------------------------------


def _kernel_features() -> frozenset:
    from harness.backends.kernel import offered_features

    return offered_features()


def _kernel_has_uffd() -> Optional[str]:
    """None when userfaultfd works here, else why not."""
    from harness.uffd import open_any

    try:
        open_any(features=None).close()
    except OSError as exc:
        return f"userfaultfd unavailable: {exc}"
    return None


def _kernel_capabilities() -> dict:
    from harness.backends.kernel import kernel_soft_dirty, kernel_swap

    return {SOFT_DIRTY: kernel_soft_dirty(), SWAP: kernel_swap()}


_CAPABILITY_NAMES = {SOFT_DIRTY: "CONFIG_MEM_SOFT_DIRTY (soft-dirty tracking)", SWAP: "an active swap device"}


def _need_name(need) -> str:
    return "UFFD_FEATURE_" + need.name if isinstance(need, Feature) else _CAPABILITY_NAMES.get(need, str(need))


def choose_backend(option: str, needs: tuple, pinned: Optional[str], sim_profile: Optional[str]):
    """(backend name, profile name or None, why it fell back or None, skip reason or None).

    ``needs`` holds :class:`Feature` members and the capability names
    ``"soft-dirty"`` and ``"swap"`` (the simulator models both).
    """
    from harness.sim import profiles

    profile = profiles.default_profile(sim_profile)
    choice = pinned or option
    if choice == "sim":
        missing = [f for f in needs if isinstance(f, Feature) and f not in profile.features]
        if missing:
            return (
                "sim",
                profile.name,
                None,
                (f"simulator profile {profile.name} lacks " + ", ".join(_need_name(f) for f in missing)),
            )
        return "sim", profile.name, None, None
    no_uffd = _kernel_has_uffd()
    offered = _kernel_features()
    caps = _kernel_capabilities() if any(not isinstance(f, Feature) for f in needs) else {}
    missing = [f for f in needs if (f not in offered if isinstance(f, Feature) else not caps.get(f))]
    release = platform.release()
    if choice == "kernel":
        if no_uffd:
            return "kernel", None, None, no_uffd
        if missing:
            return (
                "kernel",
                None,
                None,
                (
                    f"kernel {release} lacks "
                    + ", ".join(_need_name(f) for f in missing)
                    + " (--backend auto runs this on the simulator)"
                ),
            )
        return "kernel", None, None, None
    # auto
    if no_uffd or missing:
        why = no_uffd or f"kernel {release} lacks " + ", ".join(_need_name(f) for f in missing)
        if any(isinstance(f, Feature) and f not in profile.features for f in needs):
            return "sim", profile.name, why, f"{why}, and simulator profile {profile.name} lacks it too"
        return "sim", profile.name, why, None
    return "kernel", None, None, None


def kernel_only_clauses(option: str, clauses: tuple, kernel: Optional[tuple] = None) -> tuple:
    """The contract clauses whose kernel-only cases (THP, hugetlb) exist in this run.

    The simulator models neither THP nor hugetlb, so such a case is only ever
    a kernel result: it exists when the run may use the kernel (``--backend``
    is not ``sim``), userfaultfd works, and the kernel itself has everything
    the clause needs (``CLAUSE_NEEDS``).  On a kernel without ACCESS_HINTS the
    hint clauses simply have no such case (their 4 KiB cases fall back to the
    simulator and the clause stays ``absent``): nothing is skipped, and no
    simulator result stands for a THP or hugetlb one.

    ``kernel``: (why userfaultfd cannot be used or None, offered features,
    capabilities such as {"soft-dirty": bool}); default: this kernel's.
    """
    if option == "sim":
        return ()
    if kernel is None:
        no_uffd = _kernel_has_uffd()
        kernel = (no_uffd, frozenset() if no_uffd else _kernel_features(), {} if no_uffd else _kernel_capabilities())
    no_uffd, offered, caps = kernel
    if no_uffd:
        return ()
    return tuple(
        n
        for n in clauses
        if all((f in offered) if isinstance(f, Feature) else caps.get(f, False) for f in CLAUSE_NEEDS[n])
    )


def _marker_needs(item) -> tuple:
    needs = []
    for mark in item.iter_markers("needs"):
        needs.extend(mark.args)
    return tuple(needs)


def _marker_clause(item) -> Optional[int]:
    mark = item.get_closest_marker("clause")
    return int(mark.args[0]) if mark else None


def _marker_backend(item) -> Optional[str]:
    mark = item.get_closest_marker("backend")
    return mark.args[0] if mark else None


@pytest.fixture
def backend(request):
    """A :class:`~harness.backends.base.Backend` chosen by ``--backend`` and the test's markers."""
    from harness.backends import make_backend

    item = request.node
    config = request.config
    name, profile, fallback, skip = choose_backend(
        config.getoption("--backend"), _marker_needs(item), _marker_backend(item), config.getoption("--sim-profile")
    )
    if skip:
        pytest.skip(skip)
    if name == "kernel":
        channels = config.getoption("--channels")
        b = make_backend("kernel", channels=channels.split(",") if channels else None)
    else:
        b = make_backend("sim", profile)
    used: set = set()
    real_observe = b.observe

    def observe(r, page=0, channel=None):
        channel = channel or b.channels()[0]
        used.add(channel)
        return real_observe(r, page, channel)

    b.observe = observe  # type: ignore[method-assign]  # this backend, for this test: record the channels read
    item.user_properties.extend([(_BACKEND_KEY, b.name), ("profile", b.profile), ("kernel_release", b.kernel_release)])
    if fallback:
        item.user_properties.append(("fallback", fallback))
    try:
        yield b
    finally:
        item.user_properties.append(("channels", ",".join(sorted(used))))
        if b.name == "kernel":
            item.user_properties.append(("features", ",".join(sorted(f.name for f in b.enabled_features))))
        b.close()


@pytest.fixture
def make_sim(request):
    """``make_sim(profile, soft_dirty=True, swap=True)``: a simulator backend on a named profile."""
    from harness.backends.sim import SimBackend

    made = []

    def make(profile="access-hints", **kwargs):
        b = SimBackend(profile, **kwargs)
        made.append(b)
        if (_BACKEND_KEY, "sim") not in request.node.user_properties:
            request.node.user_properties.append((_BACKEND_KEY, "sim"))
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def kernel_backend(request):
    """The kernel backend, or a skip naming why userfaultfd cannot be used here."""
    from harness.backends.kernel import KernelBackend

    reason = _kernel_has_uffd()
    if reason:
        pytest.skip(reason)
    channels = request.config.getoption("--channels")
    b = KernelBackend(channels=channels.split(",") if channels else None)
    request.node.user_properties.extend(
        [(_BACKEND_KEY, "kernel"), ("profile", b.profile), ("kernel_release", b.kernel_release)]
    )
    yield b
    b.close()


# -- reporting ----------------------------------------------------------------------


def _uptime() -> float:
    """Seconds since this kernel booted (/proc/uptime)."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _uptime_at_process_start() -> float:
    """When this Python process started, in seconds since the kernel booted
    (field 22 of /proc/self/stat, in clock ticks).  Not psutil: its boot
    time is in whole seconds, too coarse for a guest that boots in five."""
    with open("/proc/self/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


class _Results:
    """Collects each test's outcome with its backend, clause and channels,
    and when the run reached its milestones (the timeline)."""

    def __init__(self):
        self.tests: dict[str, dict] = {}
        self.process_start = _uptime_at_process_start()
        self.first_test: Optional[float] = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        if self.first_test is None:
            self.first_test = _uptime()
        clause = _marker_clause(item)
        if clause is not None:
            item.user_properties.append(("clause", clause))

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report):
        entry = self.tests.setdefault(report.nodeid, {"outcome": None, "props": {}, "nodeid": report.nodeid})
        for key, value in report.user_properties:
            entry["props"][key] = value
        if report.when == "call" or (report.when == "setup" and not report.passed):
            entry["outcome"] = "passed" if report.passed else "skipped" if report.skipped else "failed"
        elif report.when == "teardown" and report.failed:
            entry["outcome"] = "failed"
        if report.skipped and isinstance(report.longrepr, tuple):
            entry["skip"] = report.longrepr[2]

    def by_backend(self) -> Counter:
        return Counter(
            e["props"].get(_BACKEND_KEY)
            for e in self.tests.values()
            if e["props"].get(_BACKEND_KEY) and e["outcome"] in ("passed", "failed")
        )


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    results: _Results = config._uffd_results
    counts = results.by_backend()
    if counts:
        text = ", ".join(f"{name} {counts[name]}" for name in sorted(counts))
        terminalreporter.write_line(f"backends: {text}")
    path = config.getoption("--summary-json")
    if path:
        summary = build_summary(results, config)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
            f.write("\n")
        terminalreporter.write_line(f"summary written to {path}")
        clauses = " ".join(f"{n}:{c['result']}" for n, c in summary["clauses"].items())
        terminalreporter.write_line(f"contract clauses: {clauses}")


#: clause results: the kernel keeps it / breaks it / lacks what it needs / had it but did not show it
PASS, FAIL, ABSENT, NOT_SHOWN = "pass", "fail", "absent", "not shown"


def clause_result(entries: list[dict], kernel_has: bool = False) -> str:
    """pass / fail / absent / not shown for one clause, from the results of its tests.

    fail: any test of the clause failed, on either backend.  absent: the
    kernel lacks what the clause needs (``kernel_has`` false): its tests ran on
    the simulator, or not at all.  pass: the kernel has what the clause needs,
    and *every* test of the clause ran on the kernel and passed.  not shown:
    the kernel has what it needs but some test was skipped, ran on the
    simulator, or none ran: a clause is never ``pass`` on partial evidence.
    """
    if any(e["outcome"] == "failed" for e in entries):
        return FAIL
    if not kernel_has:
        return ABSENT
    if entries and all(e["outcome"] == "passed" and e["props"].get(_BACKEND_KEY) == "kernel" for e in entries):
        return PASS
    return NOT_SHOWN


def _clause_gaps(entries: list[dict]) -> list[str]:
    """What kept a clause from being shown: each test that did not pass on the kernel, and why."""
    gaps = []
    for e in entries:
        where = e["props"].get("memory") or e.get("nodeid", "?")
        if e["outcome"] == "skipped":
            gaps.append(f"{where}: skipped ({e.get('skip', 'no reason given')})")
        elif e["outcome"] == "passed" and e["props"].get(_BACKEND_KEY) != "kernel":
            gaps.append(f"{where}: ran on the {e['props'].get(_BACKEND_KEY) or 'no'} backend, not the kernel")
        elif e["outcome"] is None:
            gaps.append(f"{where}: did not run")
    return gaps


def build_summary(results: _Results, config) -> dict:
    """The ``--summary-json`` document::

        {
          "kernel_release": "6.18.44-...",
          "patched": false,                       # the kernel offers UFFD_FEATURE_ACCESS_HINTS
          "features": {"offered": [names], "negotiated": [names enabled by kernel-backend tests]},
          "hint_abi": {"feature": int, "access_likely": int, "write_likely": int, "source": str},
          "backend_option": "auto", "sim_profile": "access-hints",
          "tests": {"passed": n, "failed": n, "skipped": n, "total": n},
          "backends": {"kernel": n, "sim": n},    # tests that ran (passed or failed) on each
          "clauses": {"1": {"result": "pass|fail|absent", "needs": [names],
                            "tests": {"passed": n, "failed": n, "skipped": n},
                            "backends": {"kernel": n, "sim": n},
                            "channels": {"kernel": [..], "sim": [..]},
                            "memory": {"kernel": ["anon", "anon-thp", ..], "sim": [..]}}, ... "8": {...}},
          "timeline": {"process_start": s, "first_test": s, "summary": s}
        }

    ``memory`` lists the memory each clause's tests ran on, per backend (from
    the tests' ``memory`` property; "anon-thp" is a PMD-mapped THP).

    ``timeline``: seconds since the kernel booted (/proc/uptime) when Python
    started, when the first test started (null if none ran) and when this
    summary was written.  In a guest that is the time from boot, QEMU's own
    start and the firmware not included.
    """
    from harness import abi

    offered = _kernel_features()
    negotiated: set = set()
    outcomes: Counter[str] = Counter()
    clause_entries = defaultdict(list)
    for entry in results.tests.values():
        if entry["outcome"]:
            outcomes[entry["outcome"]] += 1
        props = entry["props"]
        if props.get("features"):
            negotiated.update(props["features"].split(","))
        if "clause" in props:
            clause_entries[int(props["clause"])].append(entry)
    clauses = {}
    for n in CLAUSES:
        entries = clause_entries.get(n, [])
        caps = _kernel_capabilities()
        kernel_has = all((f in offered) if isinstance(f, Feature) else caps.get(f, False) for f in CLAUSE_NEEDS[n])
        channels: defaultdict[str, set[str]] = defaultdict(set)
        memory: defaultdict[str, set[str]] = defaultdict(set)
        backends: Counter[str] = Counter()
        for e in entries:
            name = e["props"].get(_BACKEND_KEY)
            if name and e["outcome"] in ("passed", "failed"):
                backends[name] += 1
                channels[name].update(c for c in e["props"].get("channels", "").split(",") if c)
                if e["props"].get("memory"):
                    memory[name].add(e["props"]["memory"])
        result = clause_result(entries, kernel_has)
        coverage = {}
        for e in entries:
            props = e["props"]
            label = props.get("memory")
            if label:
                coverage[label] = {
                    "outcome": e["outcome"],
                    "backend": props.get(_BACKEND_KEY),
                    "shape": props.get("shape", "page"),
                    "channels": sorted(c for c in props.get("channels", "").split(",") if c),
                }
        clauses[str(n)] = {
            "result": result,
            "gaps": _clause_gaps(entries) if result == NOT_SHOWN or not entries else [],
            "coverage": coverage,
            "needs": [_need_name(f) for f in CLAUSE_NEEDS[n]],
            "kernel_has_needs": kernel_has,
            "tests": {k: sum(1 for e in entries if e["outcome"] == k) for k in ("passed", "failed", "skipped")},
            "backends": dict(backends),
            "channels": {name: sorted(chs) for name, chs in channels.items()},
            "memory": {name: sorted(kinds) for name, kinds in memory.items()},
        }
    hints = abi.hint_abi()
    from harness.reports import SUMMARY_SCHEMA
    from harness.sim import profiles

    return {
        "schema": SUMMARY_SCHEMA,
        "kernel_release": platform.release(),
        "patched": Feature.ACCESS_HINTS in offered,
        "features": {"offered": sorted(f.name for f in offered), "negotiated": sorted(negotiated)},
        "hint_abi": {
            "feature": hints.feature,
            "access_likely": hints.access_likely,
            "write_likely": hints.write_likely,
            "source": hints.source,
        },
        "backend_option": config.getoption("--backend"),
        "sim_profile": profiles.default_profile(config.getoption("--sim-profile")).name,
        "tests": {
            "passed": outcomes["passed"],
            "failed": outcomes["failed"],
            "skipped": outcomes["skipped"],
            "total": sum(outcomes.values()),
        },
        "backends": dict(results.by_backend()),
        "clauses": clauses,
        "timeline": {
            "process_start": round(results.process_start, 2),
            "first_test": None if results.first_test is None else round(results.first_test, 2),
            "summary": round(_uptime(), 2),
        },
    }
