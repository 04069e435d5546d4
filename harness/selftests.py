"""The kernel's own mm selftests: run them with a timeout, parse what they print.

``uffd-unit-tests`` prints one line per case ("Testing zeropage on anon...
done" / "skipped [reason: ...]" / "failed [reason: ...]") and a count line;
``mkdirty`` and ``pagemap_ioctl`` print KTAP ("ok 3 desc", "not ok 4 desc",
"ok 5 desc # SKIP why").  6.1's monolithic ``userfaultfd`` (split into
``uffd-stress`` and ``uffd-unit-tests`` in 6.4) takes a memory type and prints
"testing UFFDIO_ZEROPAGE: done." / "bounces: 3, mode: rnd poll, userfaults: ..."
and stops at the first "ERROR: ..." line.  All become the same list of
:class:`CaseResult`.

Which selftests a tree has is found in the tree (:func:`selftests_of_tree`):
tools/testing/selftests/mm, or vm before 6.3.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

#: the selftests the validation runs on 6.12, in order; each is built from the kernel's own tree
SELFTESTS = ("uffd-unit-tests", "mkdirty", "pagemap_ioctl")
#: every selftest the harness can run and parse, in the order it runs them; a tree gets those it has
KNOWN_SELFTESTS = ("uffd-unit-tests", "userfaultfd", "mkdirty", "pagemap_ioctl")
#: where a tree keeps its mm selftests (renamed from vm/ to mm/ in 6.3)
SELFTEST_DIRS = ("tools/testing/selftests/mm", "tools/testing/selftests/vm")
#: 6.1's userfaultfd: one run per memory type ("<type> <MiB> <bounces>"); run_vmtests.sh uses 20 MiB
#: and 16 bounces, which under TCG takes minutes per type: fewer here, every test function still runs
USERFAULTFD_RUNS = (("anon", "4", "4"), ("shmem", "4", "4"), ("hugetlb", "8", "4"))
#: kselftest's exit code for "skipped"
KSFT_SKIP = 4

_UFFD_START = re.compile(r"Testing (?P<name>.+?)\.\.\. ")
_UFFD_RESULT = re.compile(r"(?P<word>done|skipped|failed)(?: \[reason: (?P<reason>.*)\])?$")
_TAP = re.compile(
    r"^(?P<not>not )?ok (?P<num>\d+) ?-? ?(?P<desc>[^#]*?)\s*"
    r"(?:#\s*(?P<directive>SKIP|TODO|XFAIL)\S*\s*(?P<reason>.*))?$",
    re.IGNORECASE,
)


@dataclass
class CaseResult:
    name: str
    result: str  #: pass, fail or skip
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
    #: cases that failed in a first run which, run again, passed (see harness.validate.guest)
    flaky: list[str] = field(default_factory=list)

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
            rest = line[start.end() :]
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


_LEGACY_START = re.compile(r"^(?:testing (?P<what>[^:]+):|bounces: (?P<bounce>\d+), mode:(?P<mode>[^,]*),)")


def parse_userfaultfd(text: str, prefix: str = "") -> list[CaseResult]:
    """Cases from 6.1's monolithic userfaultfd: each "testing X:" or bounce line starts one.

    A case passes when the next one starts or the run ends; an "ERROR:" line
    fails the case it interrupts (the program exits there), and a run that
    ends without a clean exit is the caller's to judge (the return code).
    """
    cases: list[CaseResult] = []
    pending: Optional[str] = None
    for line in text.splitlines():
        for part in re.split(r"(?=testing |bounces: )", line):
            m = _LEGACY_START.match(part)
            if m:
                if pending is not None:
                    cases.append(CaseResult(pending, "pass"))
                if m.group("what"):
                    pending = prefix + m.group("what").strip()
                else:
                    mode = "-".join(m.group("mode").split()) or "plain"
                    pending = f"{prefix}bounce {m.group('bounce')} ({mode})"
        if line.startswith("ERROR:") or "ERROR: " in line:
            reason = line[line.index("ERROR:") + 6 :].strip()
            cases.append(CaseResult(pending or f"{prefix}setup", "fail", reason))
            pending = None
    if pending is not None:
        cases.append(CaseResult(pending, "pass"))
    return cases


def selftests_of_tree(tree: Path) -> tuple[Path, list[str]]:
    """(the tree's mm selftest directory, the known selftests it has a source file for)."""
    for rel in SELFTEST_DIRS:
        d = Path(tree) / rel
        if d.is_dir():
            return d, [t for t in KNOWN_SELFTESTS if (d / f"{t}.c").exists()]
    raise FileNotFoundError(f"{tree}: no {' or '.join(SELFTEST_DIRS)}")


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
    if name == "uffd-unit-tests":
        return parse_uffd_unit_tests(text)
    if name == "userfaultfd":
        return parse_userfaultfd(text)
    return parse_ktap(text)


def run_userfaultfd(
    binary: Path, timeout: float = 300.0, runs: Sequence[Sequence[str]] = USERFAULTFD_RUNS, cwd: Optional[Path] = None
) -> SelftestRun:
    """6.1's monolithic ``userfaultfd``, once per memory type; one run whose cases are named "<type>: <case>".

    A memory type whose run fails without naming a case (usage, no huge
    pages) gets a failed "<type>" case with the last line it printed.
    """
    binary = Path(binary).resolve()
    if not binary.exists():
        return SelftestRun(binary.name, None, 0.0, error=f"{binary} not built")
    t0 = time.monotonic()
    total = SelftestRun(binary.name, 0, 0.0)
    logs = []
    per_run = timeout / max(1, len(runs))
    for args in runs:
        one = run_selftest(binary, per_run, args, cwd)
        kind = args[0]
        cases = parse_userfaultfd(one.log, prefix=f"{kind}: ")
        if one.returncode == KSFT_SKIP:
            reason = (one.log.strip().splitlines() or ["exit 4"])[-1]
            cases = cases or [CaseResult(kind, "skip", reason)]
        elif one.returncode != 0 and not any(c.result == "fail" for c in cases):
            cases.append(
                CaseResult(
                    kind,
                    "fail",
                    one.error or f"exited {one.returncode}: " + (one.log.strip().splitlines() or [""])[-1][:200],
                )
            )
        total.cases += cases
        logs.append(f"$ {binary.name} {' '.join(args)}  (exit {one.returncode})\n{one.log}")
        if one.error and not total.error:
            total.error = f"{' '.join(args)}: {one.error}"
        if one.returncode not in (0, KSFT_SKIP) and total.returncode == 0:
            total.returncode = one.returncode
    total.seconds = time.monotonic() - t0
    total.log = "\n".join(logs)
    return total


def run_selftest(
    binary: Path, timeout: float = 300.0, args: Sequence[str] = (), cwd: Optional[Path] = None
) -> SelftestRun:
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
        proc = subprocess.run(
            [str(binary), *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
        text = proc.stdout.decode(errors="replace")
        run = SelftestRun(name, proc.returncode, time.monotonic() - t0, parse_output(name, text), log=text)
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode(errors="replace")
        run = SelftestRun(
            name,
            None,
            time.monotonic() - t0,
            parse_output(name, text),
            error=f"timed out after {timeout:.0f} s (killed)",
            log=text,
        )
    return run


def regressions(stock: SelftestRun, patched: SelftestRun) -> list[str]:
    """Cases that pass on stock and do not pass on patched.

    Like with like: the caller compares only same-named selftests of kernels
    built from the same source (a 6.1 run is never the control of a 6.12 one).
    """
    before = {c.name: c.result for c in stock.cases}
    return [c.name for c in patched.cases if before.get(c.name) == "pass" and c.result == "fail"]
