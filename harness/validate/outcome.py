"""What one kernel's validation produced: the data between the run, the verdict and the report."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from harness.selftests import CaseResult, SelftestRun


@dataclass
class KernelOutcome:
    """Everything one kernel's validation produced (or why it could not)."""

    name: str
    where: str                         #: "guest" or "host"
    out: Path
    build: Optional[dict] = None       #: build.json
    error: str = ""                    #: build or boot failure, with context
    accel: str = ""
    seconds: float = 0.0
    steps: dict = field(default_factory=dict)
    summary: Optional[dict] = None     #: the pytest plugin's summary.json
    bench: Optional[dict] = None

    def load(self) -> None:
        for attr, filename in (("steps", "steps.json"), ("summary", "summary.json"), ("bench", "bench.json")):
            path = self.out / filename
            if path.exists():
                try:
                    setattr(self, attr, json.loads(path.read_text()))
                except json.JSONDecodeError as exc:
                    self.error = self.error or f"{path}: unreadable ({exc})"

    @property
    def clauses(self) -> dict[int, str]:
        if not self.summary:
            return {}
        return {int(n): c["result"] for n, c in self.summary.get("clauses", {}).items()}

    def clause_gaps(self) -> dict[int, list[str]]:
        """{clause: what kept it from being shown} from the summary (empty lists where nothing did)."""
        if not self.summary:
            return {}
        return {int(n): list(c.get("gaps", [])) for n, c in self.summary.get("clauses", {}).items()}

    def selftest_runs(self) -> dict[str, SelftestRun]:
        runs = {}
        for name, d in self.steps.get("selftests", {}).items():
            run = SelftestRun(d["name"], d["returncode"], d["seconds"], [CaseResult(**c) for c in d["cases"]],
                              d.get("error", ""))
            runs[name] = run
        return runs
