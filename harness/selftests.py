"""The kernel's own mm selftests: run them with a timeout, parse what they print.

``uffd-unit-tests`` prints one line per case ("Testing zeropage on anon...
done" / "skipped [reason: ...]" / "failed [reason: ...]") and a count line;
``mkdirty`` and ``pagemap_ioctl`` print KTAP ("ok 3 desc", "not ok 4 desc",
"ok 5 desc # SKIP why").  Both become the same list of :class:`CaseResult`.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

#: the selftests the validation runs, in order; each is built from the kernel's own tree
SELFTESTS = ("uffd-unit-tests", "mkdirty", "pagemap_ioctl")
#: kselftest's exit code for "skipped"
KSFT_SKIP = 4

_UFFD_START = re.compile(r"Testing (?P<name>.+?)\.\.\. ")
_UFFD_RESULT = re.compile(r"(?P<word>done|skipped|failed)(?: \[reason: (?P<reason>.*)\])?$")
_TAP = re.compile(r"^(?P<not>not )?ok (?P<num>\d+) ?-? ?(?P<desc>[^#]*?)\s*"
                  r"(?:#\s*(?P<directive>SKIP|TODO|XFAIL)\S*\s*(?P<reason>.*))?$",
                  re.IGNORECASE)


@dataclass
class CaseResult:
    name: str
    result: str          #: pass, fail or skip
    reason: str = ""


@dataclass
class SelftestRun:
    name: str
    returncode: Optional[int]
    seconds: float
    cases: list[CaseResult] = field(default_factory=list)
    #: why the run as a whole failed (timeout, missing binary), else ""
    error: str = ""
    log: str = ""

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "skip": 0}
        for case in self.cases:
            out[case.result] += 1
        return out

    @property
    def result(self) -> str:
        if self.error or self.counts()["fail"] or (self.returncode not in (0, KSFT_SKIP)):
            return "fail"
        if self.cases and all(c.result == "skip" for c in self.cases):
            return "skip"
        return "pass"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(counts=self.counts(), result=self.result)
        d.pop("log")
        return d


def parse_uffd_unit_tests(text: str) -> list[CaseResult]:
    """Cases from uffd-unit-tests output, even when other output interleaves."""
    cases: list[CaseResult] = []
    pending: Optional[str] = None
    for line in text.splitlines():
        rest = line
        start = _UFFD_START.match(line)
        if start:
            pending = start.group("name")
            rest = line[start.end():]
        if pending is None:
            continue
        result = _UFFD_RESULT.match(rest.strip())
        if result:
            word = {"done": "pass", "skipped": "skip", "failed": "fail"}[result.group("word")]
            cases.append(CaseResult(pending, word, result.group("reason") or ""))
            pending = None
    if pending is not None:
        cases.append(CaseResult(pending, "fail", "no result printed (crashed or timed out)"))
    return cases


def parse_ktap(text: str) -> list[CaseResult]:
    cases = []
    for line in text.splitlines():
        m = _TAP.match(line.strip())
        if not m:
            continue
        desc = m.group("desc").strip() or f"test {m.group('num')}"
        directive = (m.group("directive") or "").upper()
        if directive == "SKIP":
            cases.append(CaseResult(desc, "skip", m.group("reason").strip()))
        elif m.group("not") and directive not in ("TODO", "XFAIL"):
            cases.append(CaseResult(desc, "fail"))
        else:
            cases.append(CaseResult(desc, "pass"))
    return cases


def parse_output(name: str, text: str) -> list[CaseResult]:
    return parse_uffd_unit_tests(text) if name == "uffd-unit-tests" else parse_ktap(text)


def run_selftest(binary: Path, timeout: float = 300.0, args: Sequence[str] = (),
                 cwd: Optional[Path] = None) -> SelftestRun:
    """Run one selftest binary; a hang is killed after ``timeout`` s and reported as such.

    ``cwd`` must be writable (pagemap_ioctl creates its test file there);
    the default is a fresh temporary directory.
    """
    binary = Path(binary).resolve()
    name = binary.name
    if not binary.exists():
        return SelftestRun(name, None, 0.0, error=f"{binary} not built")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as scratch:
        return _run(binary, name, args, Path(cwd) if cwd else Path(scratch), timeout, t0)


def _run(binary: Path, name: str, args: Sequence[str], cwd: Path, timeout: float, t0: float) -> SelftestRun:
    try:
        proc = subprocess.run([str(binary), *args], cwd=cwd, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        text = proc.stdout.decode(errors="replace")
        run = SelftestRun(name, proc.returncode, time.monotonic() - t0, parse_output(name, text), log=text)
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode(errors="replace")
        run = SelftestRun(name, None, time.monotonic() - t0, parse_output(name, text),
                          error=f"timed out after {timeout:.0f} s (killed)", log=text)
    return run


def regressions(stock: SelftestRun, patched: SelftestRun) -> list[str]:
    """Cases that pass on stock and do not pass on patched."""
    before = {c.name: c.result for c in stock.cases}
    return [c.name for c in patched.cases if before.get(c.name) == "pass" and c.result == "fail"]
