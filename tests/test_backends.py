"""The backend interface, the automatic fallback, and the reporting of the pytest plugin."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from harness import pytest_plugin
from harness.abi import Feature, RegisterMode
from harness.backends import make_backend
from harness.memory import MemoryKind


def _kernel_reason():
    return pytest_plugin._kernel_has_uffd()


@pytest.fixture(params=["kernel", "sim"])
def any_backend(request):
    if request.param == "kernel" and _kernel_reason():
        pytest.skip(_kernel_reason())
    b = make_backend(request.param, "linux-6.12") if request.param == "sim" else make_backend("kernel")
    yield b
    b.close()


def test_both_backends_answer_the_same_questions_the_same_way(any_backend):
    b = any_backend
    b.api(())
    r = b.create(MemoryKind.ANON, 1, RegisterMode.WP)
    assert not b.observe(r, 0, "smaps").present
    assert b.write(r) == 0
    st = b.observe(r, 0, "smaps")
    assert (st.present, st.young, st.dirty, st.uffd_wp) == (True, True, True, False)
    b.protect(r)
    assert b.observe(r, 0, "smaps").uffd_wp
    assert b.write(r) == 0
    assert [(e.kind, e.region, e.page, e.write) for e in b.events()] == [("wp", 0, 0, True)]
    assert b.name in ("kernel", "sim") and b.kernel_release and b.profile


def test_sim_observation_sources_and_writable(make_sim):
    b = make_sim("linux-6.12")
    b.api(())
    r = b.create(MemoryKind.ANON)
    b.write(r)
    raw, smaps = b.observe(r, 0, "sim"), b.observe(r, 0, "smaps")
    assert raw.source == "sim" and raw.writable is True
    assert smaps.source == "sim/smaps"


def test_kernel_observe_pages_matches_observe():
    if _kernel_reason():
        pytest.skip(_kernel_reason())
    b = make_backend("kernel")
    try:
        b.api(())
        refs = [b.create(kind, 1) for kind in (MemoryKind.ANON, MemoryKind.SHMEM, MemoryKind.SHMEM_PRIVATE)]
        b.write(refs[0])
        b.read(refs[1])
        batch = b.observe_pages([(r, 0) for r in refs])
        single = [b.observe(r, 0, "smaps") for r in refs]
        assert [s.bits() for s in batch] == [s.bits() for s in single]
    finally:
        b.close()


# -- choosing a backend ---------------------------------------------------------------


@pytest.fixture
def stock_kernel(monkeypatch):
    monkeypatch.setattr(pytest_plugin, "_kernel_has_uffd", lambda: None)
    monkeypatch.setattr(pytest_plugin, "_kernel_features", lambda: frozenset({Feature.WP_UNPOPULATED}))
    monkeypatch.setattr(pytest_plugin, "_kernel_capabilities", lambda: {"soft-dirty": False, "swap": False})


def test_auto_runs_on_kernel_when_it_has_what_the_test_needs(stock_kernel):
    assert pytest_plugin.choose_backend("auto", (Feature.WP_UNPOPULATED,), None, None) == ("kernel", None, None, None)


def test_auto_falls_back_to_access_hints_profile(stock_kernel):
    name, profile, why, skip = pytest_plugin.choose_backend("auto", (Feature.ACCESS_HINTS,), None, None)
    assert (name, profile, skip) == ("sim", "access-hints", None)
    assert "lacks UFFD_FEATURE_ACCESS_HINTS" in why


def test_auto_falls_back_for_soft_dirty(stock_kernel):
    name, _, why, _ = pytest_plugin.choose_backend("auto", ("soft-dirty",), None, None)
    assert name == "sim" and "CONFIG_MEM_SOFT_DIRTY" in why


def test_kernel_option_skips_naming_the_missing_feature(stock_kernel):
    name, _, _, skip = pytest_plugin.choose_backend("kernel", (Feature.ACCESS_HINTS,), None, None)
    assert name == "kernel" and "lacks UFFD_FEATURE_ACCESS_HINTS" in skip


def test_sim_option_and_pin(stock_kernel):
    assert pytest_plugin.choose_backend("sim", (), None, "linux-6.12")[:2] == ("sim", "linux-6.12")
    assert pytest_plugin.choose_backend("auto", (), "sim", None)[:2] == ("sim", "access-hints")
    skip = pytest_plugin.choose_backend("sim", (Feature.ACCESS_HINTS,), None, "linux-6.12")[3]
    assert "linux-6.12 lacks UFFD_FEATURE_ACCESS_HINTS" in skip


def test_clause_result_rules():
    k_pass = {"outcome": "passed", "props": {"backend": "kernel"}}
    s_pass = {"outcome": "passed", "props": {"backend": "sim"}}
    s_fail = {"outcome": "failed", "props": {"backend": "sim"}}
    skipped = {"outcome": "skipped", "props": {}}
    k_skip = {"outcome": "skipped", "props": {"backend": "kernel"}}
    assert pytest_plugin.clause_result([k_pass, k_pass], True) == "pass"
    assert pytest_plugin.clause_result([k_pass, s_pass], True) == "not shown", (
        "a case that fell back to the simulator on a kernel that has the feature leaves the clause unshown"
    )
    assert pytest_plugin.clause_result([k_pass, k_skip], True) == "not shown", "a skipped case is not a pass"
    assert pytest_plugin.clause_result([s_pass], False) == "absent", "simulator-only is not a pass"
    assert pytest_plugin.clause_result([skipped], False) == "absent"
    assert pytest_plugin.clause_result([k_pass, s_fail], True) == "fail"
    assert pytest_plugin.clause_result([], True) == "not shown", "no test at all shows nothing"
    assert pytest_plugin.clause_result([], False) == "absent"


# -- reporting, end to end --------------------------------------------------------------


def test_summary_json_and_terminal_counts(tmp_path, pytester):
    if _kernel_reason():
        pytest.skip(_kernel_reason())
    (tmp_path / "test_demo.py").write_text(
        textwrap.dedent("""
        import pytest
        from harness.abi import Feature

        @pytest.mark.clause(1)
        def test_on_kernel(backend, request):
            request.node.user_properties.append(("memory", "anon-thp"))
            backend.api(())
            r = backend.create()
            backend.observe(r)

        @pytest.mark.clause(2)
        @pytest.mark.needs(Feature.ACCESS_HINTS)
        def test_needs_hints(backend):
            backend.api((Feature.ACCESS_HINTS,))

        @pytest.mark.clause(3)
        @pytest.mark.needs(Feature.ACCESS_HINTS)
        def test_fails(backend):
            assert False, "deliberately"

        @pytest.mark.clause(4)
        @pytest.mark.needs(Feature.ACCESS_HINTS)
        @pytest.mark.backend("kernel")
        def test_pinned_to_kernel(backend):
            pass
    """)
    )
    out = tmp_path / "summary.json"
    junit = tmp_path / "junit.xml"
    # In-process (a second interpreter costs ~30 s in a TCG guest); the plugin keeps its state per config.
    result = pytester.runpytest_inprocess(
        "-p",
        "harness.pytest_plugin",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(tmp_path),
        "-c",
        os.devnull,
        str(tmp_path / "test_demo.py"),
        "--summary-json",
        str(out),
        "--junitxml",
        str(junit),
    )
    stdout = result.stdout.str()
    summary = json.loads(out.read_text())
    from harness.backends.kernel import offered_features

    patched = Feature.ACCESS_HINTS in offered_features()
    assert summary["patched"] is patched
    assert summary["clauses"]["1"]["result"] == "pass"
    from harness.backends.kernel import available_channels

    # the kernel backend's first channel: pte in our guests (vm/instrumentation), smaps elsewhere
    assert summary["clauses"]["1"]["channels"] == {"kernel": [available_channels()[0]]}
    assert summary["clauses"]["1"]["memory"] == {"kernel": ["anon-thp"]}
    assert summary["clauses"]["2"]["memory"] == {}  # no test of clause 2 says what memory it ran on
    assert summary["clauses"]["3"]["result"] == "fail"
    if not patched:
        assert "backends: kernel 1, sim 2" in stdout, stdout
        assert summary["clauses"]["2"]["result"] == "absent"
        assert summary["clauses"]["4"]["result"] == "absent" and summary["clauses"]["4"]["tests"]["skipped"] == 1
        assert summary["backends"] == {"kernel": 1, "sim": 2}
    # the kernel has what clause 5 needs, and no test of it ran: not shown, never pass or absent
    assert summary["clauses"]["5"]["result"] == "not shown" and summary["clauses"]["5"]["tests"]["passed"] == 0
    assert summary["clauses"]["1"]["coverage"]["anon-thp"]["backend"] == "kernel"
    assert summary["tests"]["failed"] == 1 and summary["tests"]["total"] == 4
    assert set(summary) >= {
        "kernel_release",
        "patched",
        "features",
        "tests",
        "backends",
        "clauses",
        "hint_abi",
        "timeline",
    }
    timeline = summary["timeline"]  # seconds since boot; in-process, Python started with the outer pytest
    assert 0 < timeline["process_start"] <= timeline["first_test"] <= timeline["summary"]
    import psutil

    assert abs(timeline["process_start"] - (psutil.Process().create_time() - psutil.boot_time())) < 1.5
    assert "WP_UNPOPULATED" in summary["features"]["offered"] or not summary["features"]["offered"]
    xml = junit.read_text()
    assert 'name="backend" value="kernel"' in xml and 'name="clause" value="1"' in xml
    assert 'name="fallback"' in xml or patched
