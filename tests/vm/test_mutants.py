"""The validator can fail: every mutant of vm/mutants/mutants.py is caught on the clauses it breaks.

Two halves:

* host (fast, in the host suite): each mutant's substitutions still fit
  vm/patches (each matches exactly once, every hunk keeps its line counts),
  the set covers every clause and every path of the series, a substitution
  that does not fit is an error naming the mutant, and vm/mutants/README.md
  shows the table as it is;
* guest (``vm``, ``slow``): each mutant is built seeded from the ``patched``
  kernel's objects (only the objects it changes are recompiled), booted under
  QEMU, and the contract cases of the clauses it must or may break
  (``also``) run in it with ``--summary-json``.  The clauses it must break
  come out ``fail``, on the kernel (never the simulator); no test outside
  them failed; the kernel offers ACCESS_HINTS with the hint values of its own
  uapi header; and the kernel booted is the mutant (its tree carries the
  change).  Only its clauses run, to keep the set within a CI budget: that
  the mutant breaks *nothing else* is what ``uffd-harness vm mutant NAME``
  shows, running the whole contract (and a full run here also checks it).

One guest boot per mutant: a module fixture builds the selected mutants one
at a time and runs their guests two at a time (``harness.vm.mutants.run_many``),
so ``-k NAME`` runs only that one.  A mutant whose ``pending`` says the
contract cannot catch it yet is an expected failure, strictly: the day the
contract catches it, the test says so.
"""

from __future__ import annotations

import json
import re

import pytest

from harness.vm import mutants
from harness.vm.build import read_series

MUTANTS = mutants.all_mutants()
ALL_CLAUSES = range(1, 9)
#: the paths of the series: each must be broken by at least one mutant
PATHS = (
    "change_pte_range()",
    "change_huge_pmd()",
    "hugetlb_change_protection()",
    "mwriteprotect_range()",
    "userfaultfd_writeprotect()",
)

#: the whole guest half: ~20 seeded builds and ~20 guests, two at a time, on a loaded 2-core machine
GUEST_BUDGET = 5400


# -- host: the table and the substitutions ---------------------------------------------


@pytest.mark.parametrize("m", MUTANTS, ids=lambda m: m.name)
def test_mutant_fits_vm_patches(m):
    """The substitutions apply to today's vm/patches, change only the patches they name, and only
    their hunks' lines (the headers' counts still hold)."""
    files = mutants.render(m)  # MutantError: a substitution no longer fits
    original = {p.name: p.read_text() for p in read_series(mutants.PATCHES)}
    changed = sorted(n for n in original if files[n] != original[n])
    named = sorted({n for n in original for s in m.subs if n.startswith(s.patch)})
    assert changed == named, f"{m.name}: changes {changed}, its substitutions name {named}"
    for name in changed:
        assert not mutants.hunk_problems(files[name]), mutants.hunk_problems(files[name])
        gone = set(original[name].splitlines()) - set(files[name].splitlines())
        assert all(line[:1] in "+- " for line in gone), (
            f"{m.name}: {name}: changes lines outside the hunks: {sorted(gone)}"
        )


def test_every_clause_and_path_has_a_mutant():
    """At least one mutant breaks each clause, and one changes each path of the series."""
    clauses = {n for m in MUTANTS for n in m.clauses}
    assert clauses == set(ALL_CLAUSES), f"no mutant breaks clause(s) {sorted(set(ALL_CLAUSES) - clauses)}"
    functions = {f for m in MUTANTS for f in m.functions}
    missing = [p for p in PATHS if p not in functions]
    assert not missing, f"no mutant changes {missing}"


def test_a_substitution_that_does_not_fit_is_an_error():
    """A substitution that matches nothing, matches twice, or breaks a hunk's counts names the mutant."""
    young = mutants.get("young-only")

    def variant(old, new):
        return mutants.Mutant(
            name="probe",
            breaks="-",
            clauses=(3,),
            exposed_by={},
            exposure="-",
            subs=(mutants.Sub("0001", "change_pte_range()", old, new),),
        )

    with pytest.raises(mutants.MutantError, match=r"mutant probe: substitution 1 .* matches 0 times"):
        mutants.render(variant("+\tthis line is in no patch\n", "+\tx\n"))
    with pytest.raises(mutants.MutantError, match=r"matches 2 times"):
        mutants.render(variant("\tbool uffd_wp_resolve = cp_flags & MM_CP_UFFD_WP_RESOLVE;\n", "\tx;\n"))
    old = young.subs[1].old
    with pytest.raises(mutants.MutantError, match=r"mutant probe: 0001-.*the header says"):
        mutants.render(variant(old, old + "+\t\t\t\t\tptent = pte_mkdirty(ptent);\n"))


def test_hunk_check_sees_a_miscounted_hunk():
    good = "@@ -1,3 +1,3 @@\n a\n-b\n+c\n d\n"
    assert mutants.hunk_problems(good) == []
    assert mutants.hunk_problems(good.replace("+c\n", "+c\n+e\n"))
    assert mutants.hunk_problems(good.replace(" d\n", ""))


def test_generate_writes_a_series_the_builder_reads(tmp_path):
    m = mutants.get("young-only")
    (tmp_path / "0009-stale.patch").write_text("left over from another series\n")
    out = mutants.generate(m, out=tmp_path)
    assert out == tmp_path
    assert [p.name for p in read_series(out)] == [p.name for p in read_series(mutants.PATCHES)]
    assert not (tmp_path / "0009-stale.patch").exists()
    series = (out / "series").read_text()
    assert "MUTANT young-only" in series and "clause(s) 3" in series
    first = read_series(out)[0].read_text()
    assert "+\t\t\t\t\tptent = pte_mkyoung(ptent);\n" in first
    assert "pte_mkyoung(pte_mkdirty(ptent))" not in first


def test_readme_shows_the_table():
    """vm/mutants/README.md's table is `uffd-harness vm mutant --list --markdown`, as the table is now."""
    readme = (mutants.MUTANTS_DIR / "README.md").read_text()
    table = mutants.markdown_table()
    assert table in readme, (
        "vm/mutants/README.md does not show the current table: paste the output of "
        "`uffd-harness vm mutant --list --markdown`"
    )


def test_cli_lists_every_mutant(capsys):
    from harness.vm.cli import main

    assert main(["mutant", "--list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == [m.name for m in MUTANTS]
    assert main(["mutant", "no-such-mutant", "--series"]) == 1
    assert "no mutant 'no-such-mutant'" in capsys.readouterr().err


# -- guest: each mutant is caught ---------------------------------------------------------


def _missing_for_guest(name: str) -> list[str]:
    """tests/vm/conftest.py's missing_for_guest() (tests/ is not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "uffd_harness_tests_vm_conftest", Path(__file__).with_name("conftest.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.missing_for_guest(name)


def _selected(session) -> list[mutants.Mutant]:
    """The mutants whose guest test this session runs (so that -k NAME boots one guest)."""
    names = {
        item.callspec.params["m"].name
        for item in session.items
        if item.originalname == "test_mutant_is_caught" and hasattr(item, "callspec")
    }
    return [m for m in MUTANTS if m.name in names]


@pytest.fixture(scope="module")
def mutant_runs(request):
    """{name: MutantRun} of every selected mutant: built one at a time, guests two at a time."""
    missing = [x for x in _missing_for_guest("patched") if not x.startswith("kernel 'patched'")]
    if missing:
        pytest.skip("cannot boot a guest: missing " + "; ".join(missing))
    from harness.vm.build import build_kernel
    from harness.vm.errors import MissingToolError

    try:
        build_kernel("patched", progress=False)  # the seed: cached when make test built it
    except MissingToolError as exc:
        pytest.skip(f"cannot build kernels: {exc}")
    runs = {}
    for r in mutants.run_many(_selected(request.session), workers=2, its_clauses=True):
        runs[r.mutant.name] = r
        print(
            f"mutant {r.mutant.name}: build {r.build_seconds:.0f} s, guest {r.guest_seconds:.0f} s, "
            f"exit {r.returncode}, {r.error or r.results()}"
        )
    return runs


def _guest_params():
    for m in MUTANTS:
        marks = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(GUEST_BUDGET)]
        if m.pending:
            marks.append(pytest.mark.xfail(strict=True, reason=m.pending))
        yield pytest.param(m, id=m.name, marks=marks)


def _added_code(sub: mutants.Sub) -> list[str]:
    """The code lines a substitution adds (its '+' lines that were not there before), without the '+'."""
    before = set(sub.old.splitlines())
    return [
        line[1:].strip()
        for line in sub.new.splitlines()
        if line.startswith("+") and line not in before and line[1:].strip()
    ]


@pytest.mark.parametrize("m", list(_guest_params()))
def test_mutant_is_caught(mutant_runs, m):
    r = mutant_runs[m.name]
    assert r.error is None, f"{m.name}: {r.error}\n" + "\n".join(r.console_tail)
    assert r.summary is not None, (
        f"{m.name}: the guest wrote no summary.json (pytest exit {r.returncode}):\n{r.output[-3000:]}"
    )
    s = r.summary
    # the kernel booted is the mutant: its tree has every line the substitutions add
    tree = r.kernel.directory / "src"
    text = "\n".join(
        p.read_text()
        for p in (
            tree / f
            for f in ("mm/mprotect.c", "mm/huge_memory.c", "mm/hugetlb.c", "mm/userfaultfd.c", "fs/userfaultfd.c")
        )
    )
    for sub in m.subs:
        for line in _added_code(sub):
            assert line in text, f"{m.name}: {tree} lacks {line!r} ({sub.function}): not the mutant's tree"
    assert s["kernel_release"].startswith("6.12"), s["kernel_release"]
    if m.keeps_abi:
        assert s["patched"] is True and "ACCESS_HINTS" in s["features"]["offered"], (
            f"{m.name} keeps the ABI, yet the kernel does not offer ACCESS_HINTS: {s['features']}"
        )
        assert s["hint_abi"]["source"] == str(r.kernel.uapi_header.resolve()), s["hint_abi"]
    results = r.results()
    tail = r.output[-4000:]
    for n in m.clauses:
        c = s["clauses"][str(n)]
        assert c["result"] == "fail", (
            f"{m.name} ({m.breaks}) is not caught: clause {n} came out {c['result']!r}; "
            f"it is exposed by {m.exposure} ({json.dumps(dict(m.exposed_by))}).\n"
            f"clauses: {results}\n{tail}"
        )
        assert c["tests"]["failed"] >= 1 and c["backends"].get("kernel", 0) >= 1, c
    for n, c in s["clauses"].items():
        assert "sim" not in c["backends"], f"{m.name}: clause {n} ran on the simulator in the guest: {c}"
    if r.full:
        kept = [n for n in ALL_CLAUSES if n not in m.clauses and n not in m.also]
        wrong = {n: results.get(str(n)) for n in kept if results.get(str(n)) != "pass"}
        assert not wrong, (
            f"{m.name}: clauses it does not break did not pass: {wrong} (all: {results}); "
            f"either the contract reports a clause wrongly or the table misses an 'also'\n{tail}"
        )
    allowed = set(m.clauses) | set(m.also)
    explained = sum(s["clauses"][str(n)]["tests"]["failed"] for n in allowed)
    assert s["tests"]["failed"] == explained, (
        f"{m.name}: {s['tests']['failed']} tests failed, the clauses it breaks account for {explained}:\n"
        + "\n".join(re.findall(r"^FAILED .*$", r.output, re.M))
    )
