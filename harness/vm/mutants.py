"""Mutants: deliberately broken variants of the hint series, kept as substitution lists.

A validator that has never failed proves nothing.  Each mutant is ``vm/patches/``
with a few exact text substitutions (``vm/mutants/mutants.py`` holds the table),
made to break named clauses of the contract (BRIEF 2.2).  The series of a mutant
is generated under ``build/mutants/<name>/`` when it is needed, never committed::

    from harness.vm import mutants
    m = mutants.get("young-only")
    series = mutants.generate(m)          # build/mutants/young-only/{series,0001-...}
    run = mutants.run(m)                  # build it (seeded from patched), boot it, run tests/contract

Command line: ``uffd-harness vm mutant --list``, ``uffd-harness vm mutant NAME``
(``make mutant NAME=...``), and ``uffd-harness validate --patches build/mutants/NAME``
after ``uffd-harness vm mutant NAME --series``.

A substitution must match its patch exactly once, and every hunk of the result
must still have the line counts its ``@@`` header says, so that a change to
``vm/patches/`` that a mutant no longer fits is an error naming the mutant,
not a mutant that silently tests an old series.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

from harness.errors import DocumentError, HarnessError
from harness.paths import BUILD_DIR, REPO_ROOT
from harness.reports import load_summary
from harness.vm.errors import VmError

MUTANTS_DIR = REPO_ROOT / "vm" / "mutants"
TABLE = MUTANTS_DIR / "mutants.py"
PATCHES = REPO_ROOT / "vm" / "patches"
#: where generated series go: build/mutants/<name>/
SERIES_ROOT = BUILD_DIR / "mutants"
#: the built kernel of a mutant is build/kernels/mutant-<name>/
KERNEL_PREFIX = "mutant-"
#: the kernel whose objects a mutant's first build is seeded from (only the changed objects rebuild)
SEED = "patched"
#: boot + tests/contract under TCG on a loaded 2-core machine
GUEST_TIMEOUT = 900.0

#: the keys ``exposed_by`` may use, and what each says
EXPOSURE_KEYS = {
    "kind": "memory labels whose cases show it (anon, shmem, shmem-private, file, anon-thp, hugetlb, ...)",
    "shape": "range shape: page, span (several pages across a PMD boundary and two VMAs), thp",
    "hints": "the hints that show it: ACCESS_LIKELY, WRITE_LIKELY, both, none",
    "start": "starting PTE states that show it (old+clean, old+dirty, young+clean, young+dirty, "
    "empty, uffd-wp marker, COW after fork, soft-dirty armed)",
    "negotiation": "ACCESS_HINTS negotiated or not",
    "mode": "other mode bits: DONTWAKE, MODE_WP",
    "channel": "the observation channel needed: pte (the instrumentation's PTE view), smaps, idle-page, "
    "write probe, errno",
}


class MutantError(VmError):
    """A mutant does not fit the current vm/patches, or the table is malformed."""


@dataclasses.dataclass(frozen=True)
class Sub:
    """One exact substitution in one patch of the series.

    ``patch`` is the file name (or a unique prefix of it, e.g. "0001") in
    ``vm/patches/``; ``function`` names the kernel function whose code the
    substitution changes, for people reading the table.
    """

    patch: str
    function: str
    old: str
    new: str


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A broken variant of the series and what must catch it.

    ``clauses``: the clauses that must come out ``fail`` in a guest booted on
    it.  ``also``: clauses it may break as a side effect (allowed to fail,
    not required); every other clause must not fail.  ``pending``: set when
    the contract cannot catch it yet, saying what it lacks ("not caught until
    ..."); the guest test is then an expected failure, strictly.
    """

    name: str
    breaks: str
    clauses: tuple[int, ...]
    exposed_by: Mapping[str, object]
    exposure: str
    subs: tuple[Sub, ...]
    also: tuple[int, ...] = ()
    keeps_abi: bool = True
    pending: Optional[str] = None

    @property
    def kernel_name(self) -> str:
        return KERNEL_PREFIX + self.name

    @property
    def series_dir(self) -> Path:
        return SERIES_ROOT / self.name

    @property
    def functions(self) -> tuple[str, ...]:
        """The kernel functions it changes, in table order, each once."""
        return tuple(dict.fromkeys(s.function for s in self.subs))


# -- the table --------------------------------------------------------------------


def _load_table(path: Path = TABLE) -> tuple[Mutant, ...]:
    spec = importlib.util.spec_from_file_location("uffd_harness_mutant_table", path)
    if spec is None or spec.loader is None:
        raise MutantError(f"{path}: cannot load the mutant table")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = tuple(module.MUTANTS)
    _check_table(table, path)
    return table


def _check_table(table: Sequence[Mutant], path: Path) -> None:
    seen = set()
    for m in table:
        where = f"{path.name}: mutant {m.name!r}"
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", m.name):
            raise MutantError(f"{where}: name must be lower-case letters, digits and '-'")
        if m.name in seen:
            raise MutantError(f"{where}: listed twice")
        seen.add(m.name)
        if not m.clauses or not all(1 <= n <= 8 for n in m.clauses + m.also):
            raise MutantError(f"{where}: clauses {m.clauses} / also {m.also}: each must be 1..8, at least one")
        if set(m.clauses) & set(m.also):
            raise MutantError(f"{where}: {sorted(set(m.clauses) & set(m.also))} both required and 'also'")
        unknown = set(m.exposed_by) - set(EXPOSURE_KEYS)
        if unknown:
            raise MutantError(f"{where}: exposed_by keys {sorted(unknown)} unknown (known: {sorted(EXPOSURE_KEYS)})")
        if not m.subs:
            raise MutantError(f"{where}: no substitutions")


_TABLE: Optional[tuple[Mutant, ...]] = None


def all_mutants() -> tuple[Mutant, ...]:
    """Every mutant of vm/mutants/mutants.py, in table order."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _load_table()
    return _TABLE


def get(name: str) -> Mutant:
    for m in all_mutants():
        if m.name == name:
            return m
    raise MutantError(
        f"no mutant {name!r} in {TABLE.relative_to(REPO_ROOT)}; known: {', '.join(m.name for m in all_mutants())}"
    )


def markdown_table(table: Optional[Sequence[Mutant]] = None) -> str:
    """The table of mutants as Markdown (vm/mutants/README.md shows it; a test keeps it current)."""
    rows = [
        "| mutant | what it breaks | changes | clause(s) that must fail | exposed by | status |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m in table if table is not None else all_mutants():
        clauses = ", ".join(map(str, m.clauses)) + (f" (may also: {', '.join(map(str, m.also))})" if m.also else "")
        status = f"expected failure: {m.pending}" if m.pending else "caught"
        cells = (f"`{m.name}`", m.breaks, ", ".join(f"`{f}`" for f in m.functions), clauses, m.exposure, status)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


# -- rendering the series ---------------------------------------------------------

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def hunk_problems(text: str) -> list[str]:
    """Hunks of a unified diff whose body does not have the line counts of its ``@@`` header."""
    lines = text.splitlines()
    problems = []
    i = 0
    while i < len(lines):
        m = _HUNK.match(lines[i])
        if not m:
            i += 1
            continue
        header, want_old, want_new = lines[i], int(m.group(2) or 1), int(m.group(4) or 1)
        old = new = 0
        i += 1
        while i < len(lines) and (old < want_old or new < want_new):
            line = lines[i]
            if line.startswith("\\"):  # "\ No newline at end of file"
                i += 1
                continue
            tag = line[:1]
            if tag in (" ", ""):
                old, new = old + 1, new + 1
            elif tag == "-":
                old += 1
            elif tag == "+":
                new += 1
            else:
                break
            i += 1
        following = lines[i] if i < len(lines) else ""
        if (
            (old, new) != (want_old, want_new)
            or following[:1] in ("+", "-", " ")
            and not following.startswith(("--- ", "-- "))
        ):
            problems.append(
                f"{header!r}: the body has {old} old / {new} new lines"
                f"{' and more after them' if following[:1] in '+- ' and following else ''}, "
                f"the header says {want_old} / {want_new}"
            )
    return problems


def _series_files(patches_dir: Path) -> list[str]:
    from harness.vm.build import read_series

    return [p.name for p in read_series(patches_dir)]


def render(m: Mutant, patches_dir: Path = PATCHES) -> dict[str, str]:
    """{file name: text} of the mutant's series: ``patches_dir`` with ``m``'s substitutions.

    Raises MutantError naming the mutant and the substitution when one does
    not match exactly once, or leaves a hunk whose counts are wrong.
    """
    names = _series_files(patches_dir)
    texts = {n: (patches_dir / n).read_text() for n in names}
    for k, sub in enumerate(m.subs, 1):
        targets = [n for n in names if n == sub.patch or n.startswith(sub.patch)]
        if len(targets) != 1:
            raise MutantError(
                f"mutant {m.name}: substitution {k} ({sub.function}): patch {sub.patch!r} "
                f"names {len(targets)} files of {patches_dir} ({', '.join(names)})"
            )
        name = targets[0]
        count = texts[name].count(sub.old)
        if count != 1:
            first = sub.old.strip().splitlines()[0] if sub.old.strip() else repr(sub.old)
            raise MutantError(
                f"mutant {m.name}: substitution {k} ({sub.function}) matches {count} times in "
                f"{name}, expected once: {first!r}...; vm/patches changed, update "
                f"{TABLE.relative_to(REPO_ROOT)}"
            )
        texts[name] = texts[name].replace(sub.old, sub.new)
    for name in {s.patch for s in m.subs}:
        name = next(n for n in names if n == name or n.startswith(name))
        bad = hunk_problems(texts[name])
        if bad:
            raise MutantError(f"mutant {m.name}: {name}: " + "; ".join(bad))
    header = (
        f"# uffd-harness MUTANT {m.name}, generated from vm/patches by harness/vm/mutants.py: do not edit.\n"
        f"# Breaks clause(s) {', '.join(map(str, m.clauses))} on purpose: {m.breaks}\n"
    )
    series = (
        (patches_dir / "series").read_text() if (patches_dir / "series").exists() else "".join(n + "\n" for n in names)
    )
    body = "".join(line for line in series.splitlines(keepends=True) if not line.startswith("#"))
    return {"series": header + body, **texts}


def generate(m: Mutant, out: Optional[Path] = None, patches_dir: Path = PATCHES) -> Path:
    """Write ``m``'s series to ``out`` (default build/mutants/<name>/) and return it.

    Files whose text is unchanged are not rewritten; files of an earlier
    series that this one lacks are removed.
    """
    files = render(m, patches_dir)
    out = Path(out) if out is not None else m.series_dir
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if stale.is_file() and stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        path = out / name
        if not (path.exists() and path.read_text() == text):
            path.write_text(text)
    return out


# -- building and running one ------------------------------------------------------


@dataclasses.dataclass
class MutantRun:
    """What one guest run of a mutant gave: the kernel, the guest's pytest, its summary."""

    mutant: Mutant
    kernel: object  # harness.vm.build.KernelBuild
    returncode: int
    output: str
    summary: Optional[dict]
    rwdir: Path
    build_seconds: float
    guest_seconds: float
    console_tail: Sequence[str] = ()
    error: Optional[str] = None  # the build or the guest failed: why (then ``summary`` is None)
    full: bool = True  # the whole contract ran (else only the mutant's clauses)

    def results(self) -> dict[str, str]:
        """{clause number: pass / fail / ...} from the guest's summary.json ({} without one)."""
        if not self.summary:
            return {}
        return {n: c["result"] for n, c in self.summary["clauses"].items()}

    def caught(self) -> list[int]:
        """The mutant's clauses that came out ``fail``."""
        res = self.results()
        return [n for n in self.mutant.clauses if res.get(str(n)) == "fail"]

    def unexpected(self) -> list[int]:
        """Clauses that failed although the mutant neither must nor may break them."""
        allowed = set(self.mutant.clauses) | set(self.mutant.also)
        return sorted(int(n) for n, r in self.results().items() if r == "fail" and int(n) not in allowed)


def build(m: Mutant, *, log=None, progress: bool = False):
    """Generate ``m``'s series and build its kernel, seeded from ``patched``'s objects."""
    from harness.vm.build import build_kernel

    kwargs = {"log": log} if log is not None else {}
    return build_kernel(m.kernel_name, generate(m), seed_from=SEED, progress=progress, **kwargs)


def contract_argv(summary: Path, clauses: Optional[Sequence[int]] = None) -> list[str]:
    """The guest command: the contract suite, with its per-clause summary written to ``summary``.

    ``clauses``: run only those clauses' cases (``test_contract_clause[clauseN-...]``); the others
    then come out "not shown" in the summary, so only the full suite says a mutant breaks nothing else.
    """
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "tests/contract",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfE",
        "--summary-json",
        str(summary),
    ]
    if clauses:
        argv += ["-k", "test_contract_clause and (" + " or ".join(f"clause{n}-" for n in sorted(set(clauses))) + ")"]
    return argv


def run_guest(
    m: Mutant,
    kernel,
    rwdir: Path,
    *,
    timeout: float = GUEST_TIMEOUT,
    build_seconds: float = 0.0,
    cpus: int = 2,
    its_clauses: bool = False,
    log=None,
) -> MutantRun:
    """Boot ``kernel`` (``m``'s build) and run the contract suite in it; results land in ``rwdir``.

    ``its_clauses``: only the clauses the mutant must or may break (a third of the guest time or
    less), instead of the whole contract.
    """
    from harness.vm.runner import run_in_guest

    rwdir = Path(rwdir)
    rwdir.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "console.log", "pytest-output.txt"):
        (rwdir / stale).unlink(missing_ok=True)
    summary_path = rwdir / "summary.json"
    t0 = time.monotonic()
    kwargs = {"log": log} if log is not None else {}
    clauses = tuple(m.clauses) + tuple(m.also) if its_clauses else None
    res = run_in_guest(
        kernel,
        contract_argv(summary_path, clauses),
        timeout=timeout,
        rwdir=rwdir,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
        capture=True,
        cpus=cpus,
        console_log=rwdir / "console.log",
        **kwargs,
    )
    (rwdir / "pytest-output.txt").write_text(res.output)
    summary, error = None, None
    if summary_path.exists():
        try:
            summary = load_summary(summary_path)
        except DocumentError as exc:  # a guest that died while writing it, say: not shown, and why
            error = f"the guest's summary is damaged: {exc}"
    return MutantRun(
        m,
        kernel,
        res.returncode,
        res.output,
        summary,
        rwdir,
        build_seconds,
        time.monotonic() - t0,
        tuple(res.console_tail or ()),
        error=error,
        full=not its_clauses,
    )


def results_dir(m: Mutant) -> Path:
    """build/results/mutant-<name>/: the guest's summary.json, console.log, pytest-output.txt."""
    return BUILD_DIR / "results" / m.kernel_name


def run_many(
    ms: Sequence[Mutant],
    *,
    workers: int = 2,
    timeout: float = GUEST_TIMEOUT,
    its_clauses: bool = False,
    rwdir_of: Callable[[Mutant], Path] = results_dir,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> Iterator[MutantRun]:
    """Build each mutant (one build at a time) and run its guest, ``workers`` guests at a time.

    Builds go on while earlier mutants' guests run, so a seeded build (tens of
    seconds) hides behind a guest run (minutes).  Yields each mutant's
    MutantRun in table order; a build or guest failure is a MutantRun with
    ``error`` set, and the other mutants still run.
    """
    from harness.validate.run import compile_for_guests
    from harness.vm.runner import guests_stopped

    compile_for_guests(log)  # bytecode and rewritten tests: saves each guest ~40 s of TCG time
    cpus = max(1, (os.cpu_count() or 1) // max(1, workers))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers))
    futures: list[concurrent.futures.Future] = []
    try:
        for m in ms:
            t0 = time.monotonic()
            try:
                kernel = build(m, log=log)
            except (HarnessError, OSError, subprocess.SubprocessError) as exc:  # this mutant's error; others go on
                fut: concurrent.futures.Future = concurrent.futures.Future()
                fut.set_result(
                    MutantRun(
                        m, None, -1, "", None, rwdir_of(m), time.monotonic() - t0, 0.0, error=f"build failed: {exc}"
                    )
                )
                futures.append(fut)
                continue
            build_secs = time.monotonic() - t0
            log(
                f"[mutant] {m.name}: kernel {'reused' if kernel.cached else 'built'} in {build_secs:.0f} s; "
                "guest queued"
            )
            futures.append(
                pool.submit(_guarded_guest, m, kernel, rwdir_of(m), timeout, build_secs, cpus, its_clauses, log)
            )
        for fut in futures:
            yield fut.result()
    except (KeyboardInterrupt, GeneratorExit):
        for fut in futures:
            fut.cancel()
        # no queued guest starts when a killed one's worker comes free, nor one that was starting
        with guests_stopped() as killed:
            log(f"[mutant] stopped: killed {killed} guest(s)")
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _guarded_guest(
    m: Mutant, kernel, rwdir: Path, timeout: float, build_secs: float, cpus: int, its_clauses: bool, log
) -> MutantRun:
    t0 = time.monotonic()
    try:
        r = run_guest(
            m, kernel, rwdir, timeout=timeout, build_seconds=build_secs, cpus=cpus, its_clauses=its_clauses, log=log
        )
    except VmError as exc:  # GuestPanic, GuestTimeout, ...
        return MutantRun(
            m,
            kernel,
            -1,
            "",
            None,
            Path(rwdir),
            build_secs,
            time.monotonic() - t0,
            tuple(getattr(exc, "console_tail", ()) or ()),
            error=f"guest failed: {exc}",
        )
    log(
        f"[mutant] {m.name}: guest exit {r.returncode} after {r.guest_seconds:.0f} s; "
        f"clauses {' '.join(f'{n}:{v}' for n, v in r.results().items()) or '(no summary)'}"
    )
    return r


def run(
    m: Mutant, rwdir: Optional[Path] = None, *, timeout: float = GUEST_TIMEOUT, its_clauses: bool = False, log=None
) -> MutantRun:
    """Build ``m`` and run the contract in a guest of it (results in build/results/mutant-<name>/)."""
    kwargs = {"log": log} if log is not None else {}
    return next(
        run_many(
            [m],
            workers=1,
            timeout=timeout,
            its_clauses=its_clauses,
            rwdir_of=lambda _m: Path(rwdir) if rwdir is not None else results_dir(_m),
            **kwargs,
        )
    )
