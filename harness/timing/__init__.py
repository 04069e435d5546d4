"""Timing: what a first touch costs, in TSC cycles, measured in C.

Rooms:

``calibrate``   TSC rate against CLOCK_MONOTONIC, resolution, the cost of an
                empty timed section, invariant TSC, CPU, hypervisor, TCG.
``scenarios``   the declarative table of what is timed (``bench --list``).
``stats``       median, quantiles, bootstrap intervals, verdicts.
``bench``       interleaved rounds, table, JSON, plot, comparison.
``selftest``    ``bench --self-test``: does the benchmark see what it claims?
``cli``         the ``bench`` and ``compare`` verbs.

The timed loops are in ``cbits/timing.c``; no Python runs inside a timed
section.  Under QEMU TCG the figures do not model hardware accessed/dirty
assists (an emulated access costs the same whatever the PTE bits), and the
calibration says so (``tcg``, ``models_hardware_assists``).

Schema of ``build/results/calibration.json`` (``"schema": "uffd-harness/calibration/1"``),
the cost model a simulator reads; every number is in TSC cycles unless named otherwise:

``tsc_hz``                  float, TSC ticks per second of CLOCK_MONOTONIC
``resolution_cycles``       int, the TSC's step (gcd of back-to-back deltas; 1 = exact)
``tsc_read_cycles``         int, smallest delta of two consecutive reads
``empty_cycles``            float, median cost of an empty timed section (subtract it for "net")
``empty_p10``, ``empty_p90`` floats
``invariant_tsc``           bool, constant_tsc and nonstop_tsc (or CPUID 0x80000007 EDX[8])
``cpu_model``, ``kernel``, ``clocksource``  strings
``hypervisor``              bool; ``hypervisor_vendor``: "KVM", "QEMU TCG", "Hyper-V", ... or null
``tcg``                     bool; ``tcg_evidence``: how it was decided
``models_hardware_assists`` bool, false under TCG: then the medians say nothing about A/D assists
``note``                    string, one line for a human
``medians``                 object: scenario name -> median cycles per access or operation, e.g.
                            ``"first_touch.young_dirty.read"``, ``"first_touch.old_clean.write"``,
                            ``"uffd.unprotect.old_clean.write"``, ``"binding.wp_toggle.c"``,
                            ``"rfc.mprotect_loop"`` (names as ``uffd-harness bench --list`` prints them;
                            ``first_touch.<young|old>_<dirty|clean>.<read|write>`` with a cold TLB,
                            ``...warm_tlb`` with a warm one)
``net_medians``             object: the same keys, ``median - empty_cycles``
``intervals``, ``net_intervals``  object: the same keys -> ``[lo, hi]``, the 95% interval of the median
                            (raw, and net); a projection from the cost model carries it
``absent``                  object: scenario name -> why it has no figure ("absent: kernel lacks ...")

``bench.json`` (``"schema": "uffd-harness/bench/1"``) holds ``config``, ``calibration`` (the
fields above, without medians), ``scenarios`` (name -> ``status``, ``summary`` {n, median, p10,
p90, ci_lo, ci_hi, min, max}, ``round_medians``, ``batch_sizes``, ``faults``, ``state_errors``,
raw ``samples`` in batch order;
``ci_lo``/``ci_hi`` come from a two-level bootstrap over batches, then samples)
and ``derived`` (``wp_toggle`` ratio, ``rfc_loop`` beside the cover letter).
``uffd-harness compare A.json B.json`` reads two of them.
"""

from harness.timing.stats import Summary, bootstrap_diff_ci, bootstrap_median_ci, summarize, verdict

__all__ = ["Summary", "bootstrap_diff_ci", "bootstrap_median_ci", "summarize", "verdict"]
