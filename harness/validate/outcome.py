"""What one kernel's validation produced: the data between the run, the verdict and the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from harness.errors import DocumentError
from harness.selftests import CaseResult, SelftestRun


@dataclass
class KernelOutcome:
    """Everything one kernel's validation produced (or why it could not)."""

    name: str
    where: str  #: "guest" or "host"
    out: Path
    build: Optional[dict] = None  #: build.json
    error: str = ""  #: build or boot failure, with context
    accel: str = ""
    seconds: float = 0.0
    steps: dict = field(default_factory=dict)
    summary: Optional[dict] = None  #: the pytest plugin's summary.json
    bench: Optional[dict] = None
    #: set when these are a control's stored guest results given again (control_cache): when made, key, where
    reused: Optional[dict] = None
    #: host wall-clock seconds of the guest's phases (phases.json; boot, suite, selftests, benchmarks)
    host_phases: dict = field(default_factory=dict)

    def load(self) -> None:
        """Read what the guest wrote, each document checked against its schema; a bad one is this
        kernel's error (naming the file), never a half-read verdict."""
        from harness.reports import load_summary
        from harness.timing.documents import load_bench

        for attr, filename, reader in (
            ("steps", "steps.json", _load_json),
            ("summary", "summary.json", load_summary),
            ("bench", "bench.json", load_bench),
            ("host_phases", "phases.json", _load_json),
        ):
            path = self.out / filename
            if path.exists():
                try:
                    setattr(self, attr, reader(path))
                except (DocumentError, OSError, ValueError) as exc:
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
            run = SelftestRun(
                d["name"],
                d["returncode"],
                d["seconds"],
                [CaseResult(**c) for c in d["cases"]],
                d.get("error", ""),
                flaky=list(d.get("flaky", [])),
            )
            runs[name] = run
        return runs


def _load_json(path: Path) -> dict:
    """steps.json: written by harness.validate.guest in the same run (no schema of its own yet)."""
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc
