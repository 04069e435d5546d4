"""A realistic validation report for the kernel-CI tests: the outputs of a real ``make validate``.

``tests/data/validate/<kernel>/`` holds, for ``stock`` and ``patched``, what
one cold ``make validate`` on the development machine (3 Dec 2026, TCG
guests) left in ``build/results/<kernel>/`` (``summary.json``,
``steps.json``, ``bench.json``, unchanged) and the kernel's ``build.json``.  :func:`outcomes` turns
them into the objects the verdict reads, as ``run.validate`` does after the guests exit.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from harness.validate.outcome import KernelOutcome

DATA = Path(__file__).parent / "data" / "validate"
KERNELS = ("stock", "patched")


def outcomes(tmp_path: Path, *, tcg: bool = True, errors: dict[str, str] | None = None) -> list[KernelOutcome]:
    """The two kernels' outcomes, loaded from copies under ``tmp_path``.

    ``tcg=False`` marks both bench documents as measured on hardware (as a
    KVM guest's would be), for the path where comparisons have verdicts.
    ``errors`` sets a kernel's error as a build failure or a panic would.
    """
    out = []
    for name in KERNELS:
        d = tmp_path / name
        shutil.copytree(DATA / name, d, dirs_exist_ok=True)
        o = KernelOutcome(name, "guest", d, accel="tcg")
        o.build = json.loads((d / "build.json").read_text())
        o.load()
        if not tcg and o.bench:
            o.bench = copy.deepcopy(o.bench)
            o.bench["calibration"].update(tcg=False, models_hardware_assists=True, hypervisor_vendor="KVM")
        if errors and name in errors:
            o.error = errors[name]
            if o.error.startswith("build failed"):
                o.build, o.summary, o.steps, o.bench = None, None, {}, None
        out.append(o)
    return out
