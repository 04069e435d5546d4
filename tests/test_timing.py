"""Tests of harness.timing: statistics, the C loops, the JSON schema, compare verdicts.

No assertion here depends on how fast anything is: timing claims are the
job of ``uffd-harness bench --self-test``, which runs on a quiet machine.
"""

from __future__ import annotations

import errno
import json
import random

import pytest

from harness import abi
from harness._native import ffi, lib
from harness.memory import Region
from harness.timing import bench, calibrate, scenarios, selftest, stats
from harness.timing.bench import ScenarioResult
from harness.timing.scenarios import BY_NAME, Context

#: Statistics on synthetic data: the same answer on any kernel, and seconds
#: of pure-Python resampling under TCG, so guest runs leave them to the host.
synthetic_data = pytest.mark.host_only


# -- statistics ---------------------------------------------------------------------------


def test_quantile_matches_linear_interpolation():
    xs = [10, 1, 4, 7, 2]  # sorted: 1 2 4 7 10
    assert stats.median(xs) == 4
    assert stats.quantile(xs, 0.0) == 1 and stats.quantile(xs, 1.0) == 10
    assert stats.quantile(xs, 0.25) == 2
    assert stats.quantile(xs, 0.9) == pytest.approx(7 + 0.6 * 3), "p90 interpolates between 7 and 10"
    assert stats.median([1, 2, 3, 4]) == 2.5


def test_quantile_rejects_empty_and_out_of_range():
    with pytest.raises(ValueError):
        stats.quantile([], 0.5)
    with pytest.raises(ValueError):
        stats.quantile([1], 1.5)


@synthetic_data
@pytest.mark.parametrize("use_numpy", [True, False], ids=["numpy", "pure-python"])
def test_bootstrap_interval_covers_the_median_of_known_data(monkeypatch, use_numpy):
    if not use_numpy:
        monkeypatch.setattr(stats, "_numpy", lambda: None)
    elif stats._numpy() is None:
        pytest.skip("numpy not installed (it comes with the bench extra)")
    rng = random.Random(1)
    data = [rng.gauss(700, 40) for _ in range(801)]
    lo, hi = stats.bootstrap_median_ci(data, resamples=400, seed=3)
    med = stats.median(data)
    assert lo <= med <= hi, f"interval [{lo:.1f}, {hi:.1f}] misses the sample median {med:.1f}"
    assert 690 < lo and hi < 710, f"interval [{lo:.1f}, {hi:.1f}] not around the true median 700"
    assert hi - lo < 20, "801 samples of sd 40 should pin the median within a few cycles"


@synthetic_data
def test_bootstrap_interval_of_a_constant_is_a_point():
    assert stats.bootstrap_median_ci([52] * 100, resamples=200) == (52, 52)


@synthetic_data
def test_bootstrap_interval_narrows_with_more_samples():
    rng = random.Random(2)
    small = [rng.expovariate(1 / 100) for _ in range(50)]
    large = [rng.expovariate(1 / 100) for _ in range(5000)]
    ws = stats.bootstrap_median_ci(small, resamples=300)
    wl = stats.bootstrap_median_ci(large, resamples=300)
    assert wl[1] - wl[0] < ws[1] - ws[0]


@synthetic_data
@pytest.mark.parametrize("use_numpy", [True, False], ids=["numpy", "pure-python"])
def test_two_level_bootstrap_carries_batch_drift(monkeypatch, use_numpy):
    if not use_numpy:
        monkeypatch.setattr(stats, "_numpy", lambda: None)
    elif stats._numpy() is None:
        pytest.skip("numpy not installed")
    rng = random.Random(6)
    # eight batches whose centres drift by +-5%: samples within a batch are tight
    batches = [[rng.gauss(centre, 5) for _ in range(100)] for centre in (700, 735, 680, 720, 665, 710, 690, 730)]
    flat = [x for b in batches for x in b]
    plain = stats.bootstrap_median_ci(flat, resamples=300)
    nested = stats.bootstrap_median_ci(flat, resamples=300, batches=batches)
    med = stats.median(flat)
    assert nested[0] <= med <= nested[1]
    assert nested[1] - nested[0] > 3 * (plain[1] - plain[0]), (
        f"drift between batches must widen the interval: plain {plain}, two-level {nested}"
    )


def test_split_batches():
    assert stats.split_batches([1, 2, 3, 4, 5], [2, 3]) == [[1, 2], [3, 4, 5]]
    assert stats.split_batches([1, 2, 3], [2, 2]) is None, "sizes that do not add up give no batches"
    assert stats.split_batches([1, 2], []) is None


def test_bootstrap_needs_two_samples():
    with pytest.raises(ValueError):
        stats.bootstrap_median_ci([1.0])
    with pytest.raises(ValueError):
        stats.summarize([1.0])


@synthetic_data
def test_bootstrap_diff_interval_finds_a_shift_and_not_a_non_shift():
    rng = random.Random(4)
    a = [rng.gauss(100, 10) for _ in range(500)]
    b = [x + 50 for x in a]
    lo, hi = stats.bootstrap_diff_ci(a, b, resamples=300)
    assert 40 < lo <= 50 <= hi < 60, f"[{lo}, {hi}] should contain the shift of 50"
    c = [rng.gauss(100, 10) for _ in range(500)]
    lo, hi = stats.bootstrap_diff_ci(a, c, resamples=300)
    assert lo <= 0 <= hi, "two samples of one distribution: the interval must contain 0"


@synthetic_data
def test_ratio_interval():
    assert stats.bootstrap_ratio_ci([100.0] * 50, [200.0] * 50, resamples=100) == (2.0, 2.0)
    rng = random.Random(5)
    a = [rng.gauss(1000, 50) for _ in range(500)]
    b = [2 * rng.gauss(1000, 50) for _ in range(500)]
    lo, hi = stats.bootstrap_ratio_ci(a, b, resamples=300)
    assert lo <= 2.0 <= hi and hi - lo < 0.1, f"[{lo}, {hi}] should hold the true ratio 2"


@pytest.mark.parametrize(
    "lo, hi, expected",
    [
        (-50, -1, stats.FASTER),
        (1, 50, stats.SLOWER),
        (-5, 5, stats.NO_DIFFERENCE),
        (0, 26, stats.NO_DIFFERENCE),  # touching zero detects nothing
        (-26, 0, stats.NO_DIFFERENCE),
        (0, 0, stats.NO_DIFFERENCE),
    ],
)
def test_verdict(lo, hi, expected):
    assert stats.verdict(lo, hi) == expected


def test_verdict_rejects_an_inverted_interval():
    with pytest.raises(ValueError):
        stats.verdict(5, -5)


@synthetic_data
def test_summary_fields():
    s = stats.summarize(list(range(1, 101)), resamples=200)
    assert (s.n, s.median, s.min, s.max) == (100, 50.5, 1, 100)
    assert s.p10 == pytest.approx(10.9) and s.p90 == pytest.approx(90.1)
    assert s.ci_lo <= s.median <= s.ci_hi
    assert stats.Summary.from_dict(s.to_dict()) == s


# -- calibration ----------------------------------------------------------------------------


def test_tsc_resolution_is_the_step_not_the_smallest_delta():
    assert calibrate.tsc_resolution([52, 78, 104, 52]) == 26
    assert calibrate.tsc_resolution([56, 58, 60]) == 2
    assert calibrate.tsc_resolution([57, 58]) == 1


@pytest.mark.parametrize(
    "signature, model, tcg",
    [
        ("TCGTCGTCGTCG", "QEMU Virtual CPU version 2.5+", True),
        ("KVMKVMKVM\0\0\0", "QEMU Virtual CPU version 2.5+", False),  # KVM with the qemu64 model
        ("\0" * 12, "QEMU TCG CPU version 2.5+", True),  # TCG without the CPUID leaf
        ("GenuineIntel", "Intel(R) Xeon(R) Processor", False),  # bare metal: leaf is garbage
        ("Microsoft Hv", "Intel(R) Xeon(R) Platinum", False),
    ],
)
def test_detect_tcg(signature, model, tcg):
    got, evidence = calibrate.detect_tcg(signature, model)
    assert got is tcg, evidence
    assert evidence


def test_calibration_measures_this_machine():
    cal = calibrate.calibrate(window_ns=10_000_000)
    assert cal.tsc_hz > 1e8, "a TSC slower than 100 MHz is not a TSC"
    assert cal.resolution_cycles >= 1
    assert cal.empty_cycles > 0 and cal.empty_p10 <= cal.empty_cycles <= cal.empty_p90
    assert cal.models_hardware_assists is (not cal.tcg)
    assert cal.cpu_model and cal.note
    if cal.tcg:
        assert "do not model hardware A/D assists" in cal.note


# -- the C loops ----------------------------------------------------------------------------

SENTINEL = 0xDEADBEEF


def _buffer(n: int):
    buf = ffi.new("uint64_t[]", n + 1)
    buf[n] = SENTINEL
    return buf


@pytest.mark.parametrize("write", [0, 1], ids=["read", "write"])
def test_touch_loop_times_every_page_and_no_more(write):
    with Region.create(npages=16) as region:
        region.write()
        buf = _buffer(16)
        order = ffi.new("uint32_t[]", [5, 3])
        assert lib.harness_time_touch(region.addr, 16, region.page_size, write, ffi.NULL, buf) == 16
        samples = list(buf)[:16]
        assert all(0 < s < 10**9 for s in samples), f"implausible cycle counts {samples}"
        assert buf[16] == SENTINEL, "the loop wrote past the samples it was asked for"
        if write:
            assert region.data(3, 1) == bytes([3]), "the write loop stores the page index"
        region.write(value=0)
        buf = _buffer(2)
        assert lib.harness_time_touch(region.addr, 2, region.page_size, write, order, buf) == 2
        assert buf[2] == SENTINEL and buf[0] > 0 and buf[1] > 0
        if write:
            touched = [p for p in range(16) if region.data(p, 1) != b"\0"]
            assert touched == [3, 5], f"an ordered loop must touch exactly pages 5 and 3, touched {touched}"


def test_empty_section_and_tsc_rate():
    buf = _buffer(100)
    assert lib.harness_time_empty(buf, 100) == 100
    assert all(0 < x < 10**6 for x in list(buf)[:100]) and buf[100] == SENTINEL
    hz = ffi.new("double *")
    assert lib.harness_tsc_hz(5_000_000, hz) == 0 and hz[0] > 1e8
    assert lib.harness_tsc_resolution(1000) > 0
    assert lib.harness_rdtsc() < lib.harness_rdtsc()


def _run(name: str, pages: int = 8):
    ctx = Context.probe(pages)
    why = BY_NAME[name].absent(ctx)
    assert why is None, f"{name} cannot run here: {why}"
    return BY_NAME[name].run(ctx)


@pytest.mark.parametrize(
    "name",
    [
        "first_touch.young_dirty.read",
        "first_touch.old_clean.write",
        "first_touch.old_dirty.read",
        "first_touch.young_clean.write.warm_tlb",
        "uffd.unprotect.old_clean.write",
    ],
)
def test_first_touch_batches_are_plausible_and_fault_free(name):
    # A page migrated under us (compaction for another test's huge pages) faults once: allow a
    # second and third batch, but a preparation that leaves PTEs non-present faults every time.
    faults = []
    for _ in range(3):
        batch = _run(name)
        assert len(batch.samples) == 8
        assert all(s > 0 for s in batch.samples)
        assert batch.state_error is None, f"{name}: the prepared PTE state is wrong: {batch.state_error}"
        faults.append(batch.faults)
        if batch.faults == 0:
            break
    assert 0 in faults, f"{name}: first touches of present PTEs faulted in every batch: {faults}"


@pytest.mark.parametrize("state", scenarios.STATES)
def test_prepared_states_are_what_smaps_reports_and_the_check_can_fail(state):
    with Region.create(npages=4) as region:
        scenarios.prepare_state(region, state)
        scenarios.flush_tlb(region)
        assert scenarios.check_state(region, state) is None, f"{state} was not prepared as named"
        others = [s for s in scenarios.STATES if s != state]
        for other in others:
            assert scenarios.check_state(region, other) is not None, f"check_state accepted a {state} region as {other}"


@pytest.mark.parametrize("name", ["uffd.missing_roundtrip.c_handler", "uffd.missing_roundtrip.py_handler"])
def test_missing_roundtrip_serves_every_page(name):
    batch = _run(name, pages=8)
    assert len(batch.samples) in (4, 8)
    assert all(s > 0 for s in batch.samples)
    assert batch.faults >= len(batch.samples), "every touch must have faulted into the handler"


@pytest.mark.parametrize(
    "name",
    [
        "binding.wp_toggle.c",
        "binding.wp_toggle.python",
        "binding.wp_toggle.cffi_raw",
        "binding.wp_toggle.cffi_floor",
        "binding.wp_toggle.fcntl",
        "binding.wp_toggle.c_working_set",
        "binding.working_set.c",
        "binding.wp_noop.c",
        "binding.wp_noop.python",
        "binding.wp_noop.cffi_raw",
        "binding.wp_noop.cffi_floor",
        "rfc.mprotect_loop",
        "rfc.mprotect_loop.two_threads",
    ],
)
def test_operation_loops_return_samples(name):
    batch = _run(name, pages=16)
    assert len(batch.samples) >= 2
    assert all(s > 0 for s in batch.samples)


@pytest.mark.parametrize("maker", ["_loop_method", "_loop_cffi_raw", "_loop_cffi_floor", "_loop_fcntl"])
def test_python_toggle_loops_really_toggle(maker):
    """Each timed Python loop issues its ioctls: its second mode decides where the uffd-wp bit ends."""
    from harness import pte
    from harness.abi import RegisterMode
    from harness.uffd import open_any

    make_loop = getattr(scenarios, maker)
    with Region.create() as region, open_any([]) as uffd:
        region.write()
        uffd.register(region.addr, region.length, RegisterMode.WP)
        for second, protected in ((abi.WRITEPROTECT_MODE_WP, True), (0, False), (abi.WRITEPROTECT_MODE_WP, True)):
            make_loop(uffd, region, second)(range(2))
            assert pte.observe(region, 0).uffd_wp is protected, f"{maker}: second mode {second:#x}"


def test_prepared_request_reports_the_errno():
    request = ffi.new("struct harness_wp_request *", {"fd": -1, "start": 0, "len": 4096, "mode": 0})
    assert lib.harness_wp_request_issue(request) == -errno.EBADF


def test_missing_roundtrip_copies_the_source_page():
    with Region.create(npages=4) as region, Region.create(npages=1) as src:
        from harness.abi import RegisterMode
        from harness.uffd import open_any

        src.write(value=0xA5)
        with open_any([]) as uffd:
            uffd.register(region.addr, region.length, RegisterMode.MISSING)
            buf = _buffer(4)
            assert (
                lib.harness_time_missing_roundtrip(uffd.fileno(), region.addr, 4, region.page_size, src.addr, 0, buf)
                == 4
            )
        assert buf[4] == SENTINEL
        assert all(region.data(p, 1) == b"\xa5" for p in range(4)), "UFFDIO_COPY did not install the source"


def test_hint_scenarios_say_why_they_are_absent():
    ctx = Context.probe(8)
    for name in ("uffd.unprotect_access_likely.old_clean.read", "uffd.unprotect_write_likely.old_clean.write"):
        why = BY_NAME[name].absent(ctx)
        if ctx.hints_absent:
            assert why and why.startswith("absent:") and "ACCESS_HINTS" in why
        else:
            assert why is None


def test_without_userfaultfd_the_uffd_rows_are_absent_not_errors():
    ctx = Context(pages=8, uffd_absent="absent: cannot open a userfaultfd (EPERM)", hints_absent="absent: same")
    for s in scenarios.SCENARIOS:
        why = s.absent(ctx)
        needs_uffd = s.name.startswith(("uffd.", "binding.wp_"))
        assert bool(why) is needs_uffd, f"{s.name}: absent={why!r}"


def test_every_scenario_is_named_and_unique():
    names = [s.name for s in scenarios.SCENARIOS]
    assert len(names) == len(set(names))
    for state in scenarios.STATES:
        for access in scenarios.ACCESSES:
            assert f"first_touch.{state}.{access}" in names
    assert scenarios.select(["binding.wp_toggle.c"])[0].name == "binding.wp_toggle.c"
    with pytest.raises(Exception, match="no scenario matches"):
        scenarios.select(["nonsense"])


# -- the runner and the JSON schema -----------------------------------------------------------


def _synthetic(name: str, center: float, n: int = 400, seed: int = 0, status: str = bench.OK) -> ScenarioResult:
    rng = random.Random(seed)
    r = ScenarioResult(name, "first_touch", "synthetic", "cycles", status=status)
    if status == bench.OK:
        r.samples = [round(rng.gauss(center, center / 20)) for _ in range(n)]
        r.round_medians = [stats.median(r.samples)]
        r.summary = stats.summarize(r.samples, resamples=200)
    return r


@pytest.fixture(scope="module")
def small_run():
    chosen = scenarios.select(
        [
            "first_touch.young_dirty.write",
            "first_touch.old_clean.write",
            "uffd.unprotect_write_likely",
            "binding.wp_toggle.c",
            "binding.wp_toggle.python",
        ]
    )
    ctx = Context.probe(8)
    results = bench.run_scenarios(chosen, ctx, rounds=2, seed=1)
    return results, calibrate.calibrate(window_ns=5_000_000)


def test_run_interleaves_rounds_and_summarises(small_run):
    results, _ = small_run
    r = results["first_touch.old_clean.write"]
    assert r.ok and len(r.samples) == 16 and len(r.round_medians) == 2 and r.batch_sizes == [8, 8]
    assert r.batches == [r.samples[:8], r.samples[8:]]
    assert not r.state_errors, f"the untimed verification batch found {r.state_errors}"
    assert r.summary.n == 16
    wl = results["uffd.unprotect_write_likely.old_clean.write"]
    assert wl.ok or wl.status.startswith("absent:")


def test_bench_json_round_trip(small_run, tmp_path):
    results, cal = small_run
    doc = bench.bench_document(results, cal, {"rounds": 2, "pages": 8, "seed": 1}, {})
    path = bench.write_json(doc, tmp_path / "sub" / "bench.json")
    loaded = bench.load_document(path)
    assert loaded["schema"] == bench.BENCH_SCHEMA
    back = bench.results_of(loaded)
    assert list(back) == list(results)
    for name, r in results.items():
        assert back[name].status == r.status
        assert back[name].samples == r.samples
        assert back[name].summary == r.summary
    assert "wp_toggle" in loaded["derived"] and loaded["derived"]["wp_toggle"]["ratio"] > 0


def test_load_document_rejects_other_schemas(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"schema": "something/else"}))
    with pytest.raises(Exception, match="schema"):
        bench.load_document(p)


def test_calibration_document_keys(small_run, tmp_path):
    results, cal = small_run
    doc = bench.calibration_document(results, cal)
    for key in (
        "schema",
        "tsc_hz",
        "resolution_cycles",
        "empty_cycles",
        "medians",
        "net_medians",
        "invariant_tsc",
        "hypervisor",
        "tcg",
        "models_hardware_assists",
    ):
        assert key in doc, f"calibration.json lacks {key}"
    assert doc["medians"]["first_touch.old_clean.write"] == results["first_touch.old_clean.write"].summary.median
    assert doc["net_medians"]["first_touch.old_clean.write"] == pytest.approx(
        doc["medians"]["first_touch.old_clean.write"] - doc["empty_cycles"]
    )
    summary = results["first_touch.old_clean.write"].summary
    assert doc["net_intervals"]["first_touch.old_clean.write"] == pytest.approx(
        [summary.ci_lo - doc["empty_cycles"], summary.ci_hi - doc["empty_cycles"]]
    ), "a projection from the cost model needs each median's interval"
    path = bench.write_json(doc, tmp_path / "calibration.json")
    assert json.loads(path.read_text())["tsc_hz"] == cal.tsc_hz


def test_calibration_document_merges_a_partial_run(small_run):
    results, cal = small_run
    previous = {
        "schema": bench.CALIBRATION_SCHEMA,
        **cal.to_dict(),
        "medians": {"rfc.mprotect_loop": 5000.0, "first_touch.old_clean.write": 1.0},
        "absent": {},
    }
    doc = bench.calibration_document(results, cal, previous)
    assert doc["medians"]["rfc.mprotect_loop"] == 5000.0, "a scenario not run this time must keep its median"
    assert doc["medians"]["first_touch.old_clean.write"] == results["first_touch.old_clean.write"].summary.median
    other_host = dict(previous, cpu_model="some other CPU")
    assert "rfc.mprotect_loop" not in bench.calibration_document(results, cal, other_host)["medians"], (
        "medians from another CPU must not leak into this one's cost model"
    )


def test_bench_cli_writes_json_and_calibration(tmp_path, capsys):
    from harness.cli import main

    paths = {k: tmp_path / f"{k}" for k in ("bench.json", "calibration.json")}
    # Not the RFC loops: their two-thread variant spins, which TCG guests emulate very slowly.
    rc = main(
        [
            "bench",
            "--rounds",
            "1",
            "--pages",
            "4",
            "--only",
            "first_touch.old",
            "--json-out",
            str(paths["bench.json"]),
            "--calibration",
            str(paths["calibration.json"]),
            "--plot",
            "",
            "--no-pin",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "first_touch.old_clean.write" in out and "empty timed section" in out and "TSC:" in out
    assert "plot:" not in out and not list(tmp_path.glob("*.png")), "--plot '' must draw nothing"
    doc = bench.load_document(paths["bench.json"])
    assert set(doc["scenarios"]) == {
        "first_touch.old_dirty.read",
        "first_touch.old_dirty.write",
        "first_touch.old_clean.read",
        "first_touch.old_clean.write",
    }
    cal = json.loads(paths["calibration.json"].read_text())
    assert "first_touch.old_clean.write" in cal["medians"] and cal["tsc_hz"] > 0


@pytest.mark.host_only
def test_bench_cli_plots_next_to_its_json_and_calibration(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the bench extra) is not installed")
    from harness.cli import main

    png = tmp_path / "bench.png"
    rc = main(
        [
            "bench",
            "--rounds",
            "1",
            "--pages",
            "4",
            "--only",
            "first_touch.old_clean",
            "--json-out",
            str(tmp_path / "bench.json"),
            "--calibration",
            str(tmp_path / "calibration.json"),
            "--plot",
            str(png),
            "--no-pin",
        ]
    )
    assert rc == 0
    assert f"plot: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.host_only
def test_plot_of_a_saved_document_is_a_png(tmp_path):
    """What validate does on the host with a guest's bench.json."""
    pytest.importorskip("matplotlib", reason="matplotlib (the bench extra) is not installed")
    results = {
        name: _synthetic(name, center, seed=i)
        for i, (name, center) in enumerate(
            (("first_touch.old_clean.write", 700), ("first_touch.young_dirty.write", 150))
        )
    }
    cal = calibrate.calibrate(window_ns=5_000_000)
    saved = bench.write_json(bench.bench_document(results, cal, {"rounds": 1}, {}), tmp_path / "bench.json")
    png = bench.plot_document(bench.load_document(saved), tmp_path / "bench.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- compare -------------------------------------------------------------------------------------


@synthetic_data
def test_compare_verdicts_on_synthetic_data():
    a = {
        "same": _synthetic("same", 700, seed=1),
        "worse": _synthetic("worse", 100, seed=2),
        "better": _synthetic("better", 800, seed=3),
        "gone": _synthetic("gone", 0, status="absent: no hints"),
        "only_a": _synthetic("only_a", 50),
    }
    b = {
        "same": _synthetic("same", 700, seed=11),
        "worse": _synthetic("worse", 150, seed=12),
        "better": _synthetic("better", 400, seed=13),
        "gone": _synthetic("gone", 0, status="absent: no hints"),
    }
    rows, skipped = bench.compare_results(a, b)
    by = {r.name: r for r in rows}
    assert by["same"].verdict == stats.NO_DIFFERENCE
    assert by["worse"].verdict == stats.SLOWER and by["worse"].ci_lo > 0
    assert by["better"].verdict == stats.FASTER and by["better"].ci_hi < 0
    assert by["better"].ratio == pytest.approx(0.5, rel=0.05)
    assert any(s.startswith("gone:") for s in skipped) and any(s.startswith("only_a: only in A") for s in skipped)


@pytest.mark.host_only  # compares timings: under TCG (a guest) compare gives no verdict, by design
def test_compare_cli(tmp_path, capsys):
    from harness.cli import main

    cal = calibrate.calibrate(window_ns=5_000_000)
    for fname, center in (("a.json", 100), ("b.json", 200)):
        results = {"first_touch.old_clean.write": _synthetic("first_touch.old_clean.write", center, seed=center)}
        bench.write_json(bench.bench_document(results, cal, {"seed": 0}, {}), tmp_path / fname)
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "first_touch.old_clean.write" in out and "B slower" in out


def test_bench_list_cli(capsys):
    from harness.cli import main

    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(s.name in out for s in scenarios.SCENARIOS)


def test_selftest_verdict_logic():
    ok = selftest.SelfTest(
        [selftest.Separation("a", "b", 60, (58, 62), 700, (690, 710), 256, 0.1, True)],
        [selftest.Agreement("b", 700, 710, 10 / 700, True)],
    )
    assert ok.passed and "self-test passed" in selftest.report_lines(ok)[-1]
    bad = selftest.SelfTest(ok.separations, [selftest.Agreement("b", 700, 800, 100 / 700, False)])
    assert not bad.passed and "FAILED" in selftest.report_lines(bad)[-1]
    assert not selftest.SelfTest().passed, "a self-test that checked nothing must not pass"


def test_bench_json_prints_the_document_and_the_old_spelling_still_writes_a_file(tmp_path, capsys):
    from harness.cli import main

    common = [
        "bench",
        "--rounds",
        "1",
        "--pages",
        "4",
        "--only",
        "first_touch.old_clean",
        "--calibration",
        "",
        "--plot",
        "",
        "--no-pin",
    ]
    assert main(common + ["--json", "--json-out", ""]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout is JSON and nothing else
    assert doc["schema"] == bench.BENCH_SCHEMA and "first_touch.old_clean.write" in doc["scenarios"]
    assert "TSC:" in captured.err, "with --json the tables go to stderr"
    assert not list(tmp_path.iterdir()), "--json-out '' writes nothing"

    old = tmp_path / "old.json"
    assert main(common + ["--json", str(old)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "deprecated" in line]
    assert len(warnings) == 1 and f"--json-out {old}" in warnings[0], "one line naming the new spelling"
    assert bench.load_document(old)["scenarios"] and "TSC:" in captured.out


@pytest.mark.host_only  # its first half wants a verdict, which only a run outside TCG gives
def test_compare_json_and_no_verdict_under_tcg(tmp_path, capsys):
    from harness.cli import main

    a = tmp_path / "a.json"
    assert (
        main(
            [
                "bench",
                "--rounds",
                "2",
                "--pages",
                "4",
                "--only",
                "first_touch.old_clean.write",
                "--json-out",
                str(a),
                "--calibration",
                "",
                "--plot",
                "",
                "--no-pin",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["compare", str(a), str(a), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["emulated"] == "" and doc["rows"][0]["name"] == "first_touch.old_clean.write"
    tcg = json.loads(a.read_text())
    tcg["calibration"].update(tcg=True, models_hardware_assists=False)
    b = tmp_path / "b.json"
    b.write_text(json.dumps(tcg))
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "emulated: B ran under QEMU TCG" in out and "faster" not in out and "slower" not in out
    assert "no difference detected" not in out, "under TCG no verdict at all is printed"


@synthetic_data
def test_target_ratios_are_derived_side_by_side_with_intervals_and_verdicts():
    """The batch and single-call targets come out of one run as ratios of medians, each with its interval."""
    results = {
        name: _synthetic(name, center, seed=i)
        for i, (name, center) in enumerate(
            (
                ("binding.wp_toggle.c", 4000),
                ("binding.wp_toggle.batch", 4200),
                ("binding.wp_toggle.cffi_floor", 5000),
                ("binding.wp_toggle.python", 6000),
            )
        )
    }
    d = bench.derived(results)
    batch, single = d["wp_batch"], d["wp_single_vs_floor"]
    assert batch["reference"] == "binding.wp_toggle.c" and batch["target"] == bench.WP_BATCH_TARGET_RATIO
    assert batch["ci95"][0] <= batch["ratio"] <= batch["ci95"][1] and 1.0 < batch["ratio"] < 1.1
    assert batch["within_target"] is True
    assert single["reference"] == "binding.wp_toggle.cffi_floor" and single["within_target"] is False, (
        "6000 against 5000 is 1.2x, over the 1.15x target"
    )
    assert "wp_batch_list" not in d, "a scenario that did not run has no ratio"
    lines = "\n".join(bench.derived_lines(d))
    assert f"binding.wp_toggle.batch vs binding.wp_toggle.c: {batch['ratio']:.2f}x (95% CI" in lines
    assert "within the 1.1x target" in lines
    assert "OVER the 1.15x target" in lines


def test_batch_scenarios_are_in_the_table_with_their_reason_when_absent():
    for name in ("binding.wp_toggle.batch", "binding.wp_toggle.batch_list"):
        s = scenarios.BY_NAME[name]
        assert s.group == "binding" and s.absent(Context(uffd_absent="absent: no uffd")) == "absent: no uffd"
