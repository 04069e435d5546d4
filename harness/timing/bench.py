"""Run the scenarios, summarise, and write what was measured: table, JSON, plot.

Rounds are interleaved: every round runs one batch of every scenario, in an
order shuffled per round (seeded), so drift (frequency, a neighbour's
build, a migrated vCPU) hits every scenario alike instead of whichever ran
last.  The per-round medians are kept so drift can be seen, and intervals
come from a two-level bootstrap (batches, then samples within them): the
samples of one batch are not independent, and a one-level bootstrap over
thousands of them would call a few cycles of drift "significant".
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from harness import paths
from harness.errors import HarnessError
from harness.timing import stats
from harness.timing.calibrate import Calibration
from harness.timing.documents import (  # noqa: F401 - re-exported; bench --calibration uses the last
    BENCH_SCHEMA,
    CALIBRATION_SCHEMA,
    load_bench,
    load_previous_calibration,
)
from harness.timing.scenarios import RFC_COVER_LETTER_CYCLES, RFC_COVER_LETTER_CYCLES_TWO_THREADS, Context, Scenario

DEFAULT_JSON = paths.BENCH_JSON
DEFAULT_PLOT = paths.RESULTS_DIR / "bench.png"
DEFAULT_CALIBRATION = paths.CALIBRATION_JSON

#: the binding's goal: a toggle through Userfaultfd.writeprotect within this factor of the C loop
WP_TOGGLE_TARGET_RATIO = 1.5
#: the batched path: a toggle per range through Userfaultfd.writeprotect_many within this factor of the C loop
WP_BATCH_TARGET_RATIO = 1.1
#: the single call: Userfaultfd.writeprotect within this factor of the cheapest cffi call (cffi_floor)
WP_SINGLE_VS_FLOOR_TARGET_RATIO = 1.15

#: (key in derived, scenario, reference scenario, target): ratios of medians, each with its interval
TARGET_RATIOS = (
    ("wp_batch", "binding.wp_toggle.batch", "binding.wp_toggle.c", WP_BATCH_TARGET_RATIO),
    ("wp_batch_list", "binding.wp_toggle.batch_list", "binding.wp_toggle.c", None),
    ("wp_single_vs_floor", "binding.wp_toggle.python", "binding.wp_toggle.cffi_floor", WP_SINGLE_VS_FLOOR_TARGET_RATIO),
)

OK = "ok"


@dataclass
class ScenarioResult:
    name: str
    group: str
    describe: str
    unit: str
    #: "ok", "absent: <what is missing>", or "error: <what failed>"
    status: str = OK
    samples: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    #: samples per batch, in order (one batch per round): the units of the two-level bootstrap
    batch_sizes: list[int] = field(default_factory=list)
    faults: int = 0
    state_errors: list[str] = field(default_factory=list)
    summary: Optional[stats.Summary] = None
    fault_free: bool = False

    @property
    def ok(self) -> bool:
        return self.status == OK and len(self.samples) >= 2

    @property
    def median(self) -> float:
        """The median of an ok result (run() and from_dict() give it its summary)."""
        if self.summary is None:
            raise HarnessError(f"scenario {self.name}: no summary ({self.status})")
        return self.summary.median

    @property
    def batches(self) -> Optional[list[list[float]]]:
        return stats.split_batches(self.samples, self.batch_sizes)

    def to_dict(self) -> dict:
        return {
            "group": self.group,
            "describe": self.describe,
            "unit": self.unit,
            "status": self.status,
            "fault_free": self.fault_free,
            "summary": self.summary.to_dict() if self.summary else None,
            "round_medians": self.round_medians,
            "batch_sizes": self.batch_sizes,
            "faults": self.faults,
            "state_errors": self.state_errors,
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "ScenarioResult":
        return cls(
            name=name,
            group=d["group"],
            describe=d["describe"],
            unit=d["unit"],
            status=d["status"],
            samples=list(d["samples"]),
            round_medians=list(d["round_medians"]),
            batch_sizes=list(d.get("batch_sizes", [])),
            faults=d["faults"],
            fault_free=bool(d.get("fault_free", False)),
            state_errors=list(d["state_errors"]),
            summary=stats.Summary.from_dict(d["summary"]) if d.get("summary") else None,
        )


def run_scenarios(
    scenarios: Sequence[Scenario],
    ctx: Context,
    rounds: int,
    *,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict[str, ScenarioResult]:
    """``rounds`` interleaved rounds of one batch per scenario; results in table order."""
    if rounds < 1:
        raise ValueError("at least one round")
    results = {s.name: ScenarioResult(s.name, s.group, s.describe, s.unit, fault_free=s.fault_free) for s in scenarios}
    active = []
    for s in scenarios:
        why = s.absent(ctx)
        if why:
            results[s.name].status = why
        else:
            active.append(s)
    # One untimed batch per scenario first: it verifies the prepared PTE state through smaps
    # (whose page-table walk would disturb a timed batch) and warms code and allocator.
    for s in active:
        res = results[s.name]
        ctx.check_state = True
        try:
            batch = s.run(ctx)
        except (HarnessError, OSError) as exc:
            res.status = f"error: {exc}"
            continue
        if batch.state_error:
            res.state_errors.append(batch.state_error)
    ctx.check_state = False
    rng = random.Random(seed)
    for r in range(rounds):
        order = list(active)
        rng.shuffle(order)
        for s in order:
            res = results[s.name]
            if res.status != OK:
                continue  # failed in an earlier round
            try:
                batch = s.run(ctx)
            except (HarnessError, OSError) as exc:
                res.status = f"error: {exc}"
                continue
            res.samples.extend(batch.samples)
            res.batch_sizes.append(len(batch.samples))
            res.round_medians.append(stats.median(batch.samples))
            res.faults += batch.faults
        if progress:
            progress(r + 1, rounds)
    for i, res in enumerate(results.values()):
        if res.ok:
            res.summary = stats.summarize(res.samples, seed=seed + i, batches=res.batches)
    return results


def derived(results: dict[str, ScenarioResult], *, seed: int = 0) -> dict:
    """Figures computed from several scenarios: the binding ratio, the RFC comparison."""
    out: dict = {}
    c, py = results.get("binding.wp_toggle.c"), results.get("binding.wp_toggle.python")
    raw = results.get("binding.wp_toggle.cffi_raw")
    with_ws, ws_only = results.get("binding.wp_toggle.c_working_set"), results.get("binding.working_set.c")
    noop_c, noop_py = results.get("binding.wp_noop.c"), results.get("binding.wp_noop.python")
    noop_raw = results.get("binding.wp_noop.cffi_raw")
    if c and py and c.ok and py.ok:
        lo, hi = stats.bootstrap_ratio_ci(c.samples, py.samples, seed=seed, batches_a=c.batches, batches_b=py.batches)
        ratio = py.median / c.median
        entry = {
            "ratio": ratio,
            "ci95": [lo, hi],
            "target": WP_TOGGLE_TARGET_RATIO,
            "within_target": ratio <= WP_TOGGLE_TARGET_RATIO,
            "c_median_cycles": c.median,
            "python_median_cycles": py.median,
        }
        if raw and raw.ok:
            entry["cffi_raw_median_cycles"] = raw.median
            entry["cffi_raw_ratio"] = raw.median / c.median
            entry["method_overhead_cycles"] = py.median - raw.median
        # what no binding of this shape can beat: the cheapest cffi call, and Python's own ioctl
        for key, name in (("cffi_floor", "binding.wp_toggle.cffi_floor"), ("fcntl", "binding.wp_toggle.fcntl")):
            other = results.get(name)
            if other and other.ok:
                entry[f"{key}_median_cycles"] = other.median
                entry[f"{key}_ratio"] = other.median / c.median
        if with_ws and ws_only and with_ws.ok and ws_only.ok:
            # what the toggle costs a C caller that, like an interpreter, has a working set to find again
            cost = with_ws.median - ws_only.median
            entry["c_working_set_toggle_cycles"] = cost
            entry["c_working_set_ratio"] = cost / c.median
            entry["python_vs_c_working_set_ratio"] = py.median / cost if cost > 0 else None
        if noop_c and noop_py and noop_c.ok and noop_py.ok:
            entry["noop_ioctl_c_cycles"] = noop_c.median
            entry["noop_ioctl_python_cycles"] = noop_py.median
            entry["per_call_overhead_cycles"] = noop_py.median - noop_c.median
            if noop_raw and noop_raw.ok:
                entry["noop_ioctl_cffi_raw_cycles"] = noop_raw.median
                entry["per_call_method_cycles"] = noop_py.median - noop_raw.median
        out["wp_toggle"] = entry
    for key, name, ref_name, target in TARGET_RATIOS:
        res, ref = results.get(name), results.get(ref_name)
        if res and ref and res.ok and ref.ok:
            lo, hi = stats.bootstrap_ratio_ci(
                ref.samples, res.samples, seed=seed, batches_a=ref.batches, batches_b=res.batches
            )
            ratio = res.median / ref.median
            out[key] = {
                "scenario": name,
                "reference": ref_name,
                "ratio": ratio,
                "ci95": [lo, hi],
                "median_cycles": res.median,
                "reference_median_cycles": ref.median,
                "target": target,
                "within_target": None if target is None else ratio <= target,
            }
    for key, name, (before, after), threads in (
        ("rfc_loop", "rfc.mprotect_loop", RFC_COVER_LETTER_CYCLES, "one thread"),
        ("rfc_loop_two_threads", "rfc.mprotect_loop.two_threads", RFC_COVER_LETTER_CYCLES_TWO_THREADS, "two threads"),
    ):
        rfc = results.get(name)
        if rfc and rfc.ok:
            out[key] = {
                "median_cycles": rfc.median,
                "cover_letter_before": before,
                "cover_letter_after": after,
                "cover_letter_setup": f"Haswell, bare metal, {threads}",
            }
    return out


def _loadavg() -> list[float]:
    try:
        return list(os.getloadavg())
    except OSError:
        return []


def bench_document(results: dict[str, ScenarioResult], cal: Calibration, config: dict, extra: dict) -> dict:
    return {
        "schema": BENCH_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"node": platform.node(), "kernel": platform.release()},
        "config": config,
        "calibration": cal.to_dict(),
        "scenarios": {name: r.to_dict() for name, r in results.items()},
        "derived": derived(results, seed=config.get("seed", 0)),
        **extra,
    }


def calibration_document(results: dict[str, ScenarioResult], cal: Calibration, previous: Optional[dict] = None) -> dict:
    """The cost model the simulator reads (schema in :mod:`harness.timing`).

    With ``previous`` (the file as it was) from the same CPU and kernel, the
    medians of scenarios not run this time are kept, so ``bench --only``
    updates the model instead of truncating it.
    """
    medians: dict[str, float] = {}
    intervals: dict[str, list[float]] = {}
    absent: dict[str, str] = {}
    if (
        previous
        and previous.get("schema") == CALIBRATION_SCHEMA
        and all(previous.get(k) == getattr(cal, k) for k in ("cpu_model", "kernel", "hypervisor_vendor", "tcg"))
    ):
        medians.update(previous.get("medians", {}))
        intervals.update(previous.get("intervals", {}))
        absent.update(previous.get("absent", {}))
    for name, r in results.items():
        if r.ok:
            medians[name] = r.median
            assert r.summary is not None, "r.median has checked it"
            intervals[name] = [r.summary.ci_lo, r.summary.ci_hi]
            absent.pop(name, None)
        else:
            absent[name] = r.status
            medians.pop(name, None)
            intervals.pop(name, None)
    return {
        "schema": CALIBRATION_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **cal.to_dict(),
        "medians": medians,
        "net_medians": {n: m - cal.empty_cycles for n, m in medians.items()},
        # the 95% interval of each median, net: what a projection from this model carries
        "net_intervals": {n: [lo - cal.empty_cycles, hi - cal.empty_cycles] for n, (lo, hi) in intervals.items()},
        "intervals": intervals,
        "absent": absent,
    }


def load_document(path: os.PathLike | str) -> dict:
    """A bench JSON file, checked against the schema this module writes (:mod:`harness.timing.documents`)."""
    return load_bench(path)


def results_of(doc: dict) -> dict[str, ScenarioResult]:
    return {name: ScenarioResult.from_dict(name, d) for name, d in doc["scenarios"].items()}


def write_json(doc: dict, path: os.PathLike | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path


# -- presentation --------------------------------------------------------------------


def _fmt(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}"


def table_rows(results: dict[str, ScenarioResult], cal: Calibration) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, r in results.items():
        if not r.ok:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", "-", r.status])
            continue
        s = r.summary
        if s is None:
            raise HarnessError(f"scenario {name}: no summary ({r.status})")
        notes = [f"state mismatch: {e}" for e in sorted(set(r.state_errors))]
        if r.fault_free and r.faults:
            notes.append(f"{r.faults} faults in timed touches of present PTEs")
        rows.append(
            [
                name,
                s.n,
                _fmt(s.median),
                _fmt(s.p10),
                _fmt(s.p90),
                f"[{_fmt(s.ci_lo)}, {_fmt(s.ci_hi)}]",
                _fmt(s.median - cal.empty_cycles),
                f"{cal.cycles_to_ns(s.median):.0f}",
                f"{r.faults / s.n:.2f}",
                "; ".join(notes),
            ]
        )
    return rows


TABLE_HEADERS = ["scenario", "n", "median", "p10", "p90", "95% CI median", "net", "ns", "faults/n", "note"]


def calibration_lines(cal: Calibration, pinned: Optional[int] = None) -> list[str]:
    lines = [
        f"CPU: {cal.cpu_model}; kernel {cal.kernel}; clocksource {cal.clocksource}"
        + (f"; pinned to CPU {pinned}" if pinned is not None else ""),
        f"TSC: {cal.tsc_hz / 1e6:.1f} MHz against CLOCK_MONOTONIC; invariant: {'yes' if cal.invariant_tsc else 'NO'}; "
        f"resolution {cal.resolution_cycles} cycles; back-to-back read {cal.tsc_read_cycles} cycles",
        f"empty timed section: median {cal.empty_cycles:.0f} cycles "
        f"(p10 {cal.empty_p10:.0f}, p90 {cal.empty_p90:.0f}); "
        "'net' = median - empty",
        f"hypervisor: {cal.hypervisor_vendor or ('yes, unknown' if cal.hypervisor else 'none')}; "
        f"TCG: {'YES' if cal.tcg else 'no'} ({cal.tcg_evidence})",
        f"note: {cal.note}",
    ]
    if cal.tcg:
        lines.append("WARNING: under TCG these figures do not model hardware A/D assists.")
    return lines


def derived_lines(d: dict) -> list[str]:
    lines = []
    wp = d.get("wp_toggle")
    if wp:
        verdict = "within" if wp["within_target"] else "OVER"
        line = (
            f"wp toggle, Userfaultfd.writeprotect vs C loop: {wp['ratio']:.2f}x "
            f"(95% CI {wp['ci95'][0]:.2f}-{wp['ci95'][1]:.2f}), {verdict} the {wp['target']}x target; "
            f"C {wp['c_median_cycles']:.0f}, Python {wp['python_median_cycles']:.0f} cycles/toggle"
        )
        if "cffi_raw_ratio" in wp:
            extra = wp["method_overhead_cycles"]
            line += f"; the bare cffi call is {wp['cffi_raw_ratio']:.2f}x, the method " + (
                f"{extra:.0f} cycles/toggle more"
                if extra >= 0
                else f"{-extra:.0f} cycles/toggle less (it issues a prepared one-argument request)"
            )
        lines.append(line)
        if "per_call_overhead_cycles" in wp:
            lines.append(
                f"  why: a no-op ioctl costs {wp['noop_ioctl_c_cycles']:.0f} cycles from C and "
                f"{wp['noop_ioctl_python_cycles']:.0f} through the method, so the public API adds "
                f"{wp['per_call_overhead_cycles']:.0f} cycles per call "
                f"({2 * wp['per_call_overhead_cycles']:.0f} "
                "per toggle"
                + (
                    f", of which the method body {wp['per_call_method_cycles']:.0f} and the cffi call "
                    f"{wp['noop_ioctl_cffi_raw_cycles'] - wp['noop_ioctl_c_cycles']:.0f}"
                    if "per_call_method_cycles" in wp
                    else ""
                )
                + ")"
                + (
                    f"; a C caller that touches a working set after each ioctl pays "
                    f"{wp['c_working_set_toggle_cycles']:.0f} cycles per toggle "
                    f"({wp['c_working_set_ratio']:.2f}x the tight loop): after a PTE change "
                    "(which flushes) the caller's own translations must be refilled"
                    if "c_working_set_ratio" in wp
                    else ""
                )
            )
        if "cffi_floor_ratio" in wp:
            lines.append(
                f"  floor: two prepared requests, each a one-argument cffi call with no error check, "
                f"are {wp['cffi_floor_ratio']:.2f}x"
                + (
                    f"; Python's fcntl.ioctl on prepared buffers is {wp['fcntl_ratio']:.2f}x"
                    if "fcntl_ratio" in wp
                    else ""
                )
            )
        if wp.get("python_vs_c_working_set_ratio"):
            lines.append(
                f"  against that C caller, Userfaultfd.writeprotect is {wp['python_vs_c_working_set_ratio']:.2f}x"
            )
    for key, _, _, _ in TARGET_RATIOS:
        t = d.get(key)
        if t:
            verdict = (
                ""
                if t["target"] is None
                else f", {'within' if t['within_target'] else 'OVER'} the {t['target']}x target"
            )
            lines.append(
                f"{t['scenario']} vs {t['reference']}: {t['ratio']:.2f}x "
                f"(95% CI {t['ci95'][0]:.2f}-{t['ci95'][1]:.2f}){verdict}; "
                f"{t['median_cycles']:.0f} vs {t['reference_median_cycles']:.0f} cycles"
            )
    for key in ("rfc_loop", "rfc_loop_two_threads"):
        rfc = d.get(key)
        if rfc:
            lines.append(
                f"RFC loop (mprotect READ, READ|WRITE, store): {rfc['median_cycles']:.0f} cycles/iteration "
                f"here; cover letter {rfc['cover_letter_before']} -> {rfc['cover_letter_after']} "
                f"({rfc['cover_letter_setup']})"
            )
    return lines


def plot(
    results: dict[str, ScenarioResult], path: os.PathLike | str, title: str = "", empty_cycles: Optional[float] = None
) -> Optional[Path]:
    """Box plots (whiskers p10-p90) of every scenario's samples, log scale; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in results.values() if r.ok]
    if not ok:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(ok) + 1.5))
    data = [r.samples for r in ok]
    try:  # matplotlib >= 3.10 spells it orientation; vert= is deprecated there
        ax.boxplot(data, orientation="horizontal", whis=(10, 90), showfliers=False)
    except TypeError:
        ax.boxplot(data, vert=False, whis=(10, 90), showfliers=False)
    ax.set_yticks(range(1, len(ok) + 1))
    ax.set_yticklabels([r.name for r in ok], fontsize=8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    if empty_cycles:
        ax.axvline(empty_cycles, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            "empty timed section",
            (empty_cycles, 0.5),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            color="grey",
            ha="right",
            va="center",
        )
    ax.set_xlabel("cycles (log scale; box p25-p75, whiskers p10-p90)")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.set_title(title or "uffd-harness bench", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_document(doc: dict, path: os.PathLike | str) -> Optional[Path]:
    """plot() of a bench document, titled with the machine it ran on.

    A guest's document is drawn on the host: under TCG matplotlib's text
    rendering alone takes about a minute.
    """
    cal = doc["calibration"]
    title = f"{cal.get('cpu_model', '?')}, {cal.get('kernel', '?')} ({str(cal.get('note', '')).split(':')[0]})"
    return plot(results_of(doc), path, title=title, empty_cycles=cal.get("empty_cycles"))


# -- comparison ------------------------------------------------------------------------


def emulated_reason(a: dict, b: dict, labels: tuple[str, str] = ("A", "B")) -> str:
    """Why a comparison of two bench documents can have no verdict: either ran under TCG ("" when it can).

    TCG sets accessed/dirty bits in its own slow path at no extra cost, so a
    difference between two such runs is not a hardware effect.
    """
    sides = [
        name
        for name, doc in zip(labels, (a, b), strict=True)
        if (doc.get("calibration") or {}).get("tcg")
        or not (doc.get("calibration") or {}).get("models_hardware_assists", True)
    ]
    if not sides:
        return ""
    return (
        f"emulated: {' and '.join(sides)} ran under QEMU TCG, which does not model hardware accessed/dirty "
        "assists, so the timings give no verdict"
    )


@dataclass(frozen=True)
class Comparison:
    name: str
    median_a: float
    median_b: float
    diff: float
    ci_lo: float
    ci_hi: float
    verdict: str

    @property
    def ratio(self) -> Optional[float]:
        return self.median_b / self.median_a if self.median_a else None


def compare_results(
    a: dict[str, ScenarioResult], b: dict[str, ScenarioResult], *, seed: int = 0
) -> tuple[list[Comparison], list[str]]:
    """B against A, scenario by scenario; and the scenarios that could not be compared, with why."""
    rows, skipped = [], []
    for name in list(a) + [n for n in b if n not in a]:
        ra, rb = a.get(name), b.get(name)
        if ra is None or rb is None:
            skipped.append(f"{name}: only in {'A' if rb is None else 'B'}")
            continue
        if not (ra.ok and rb.ok):
            skipped.append(
                f"{name}: A {ra.status}, B {rb.status}"
                if ra.status != rb.status or ra.status != OK
                else f"{name}: too few samples"
            )
            continue
        lo, hi = stats.bootstrap_diff_ci(ra.samples, rb.samples, seed=seed, batches_a=ra.batches, batches_b=rb.batches)
        ma, mb = stats.median(ra.samples), stats.median(rb.samples)
        rows.append(Comparison(name, ma, mb, mb - ma, lo, hi, stats.verdict(lo, hi)))
    return rows, skipped
