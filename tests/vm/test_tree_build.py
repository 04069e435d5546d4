"""``validate --tree`` end to end: a git tree made from linux-source-6.12 with vm/patches committed on top.

The tree is built once per (tarball version, series) under ``build/cache/test-trees/`` (git init of the
unpacked tarball, then ``git am`` of the series; about a minute) and kept, like the kernels.  Its branch's
upstream is a branch at the tarball commit, so the default base (the merge-base) is exercised.

- ``--tree`` gives the same verdict, clause by clause, as ``--patches vm/patches``;
- a second run is cached: both kernels come back from the build cache without compiling;
- the user's tree is not touched (``git status --porcelain``, refs, the work tree's mtime).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness import paths
from harness.validate import run
from harness.validate.tree import plan_tree
from harness.vm import build as vmbuild
from harness.vm import sources

pytestmark = [pytest.mark.vm, pytest.mark.other_base, pytest.mark.timeout(5400)]

SERIES = paths.REPO_ROOT / "vm" / "patches"
_ENV = {
    "GIT_AUTHOR_NAME": "uffd-harness tests",
    "GIT_AUTHOR_EMAIL": "tests@uffd-harness.invalid",
    "GIT_COMMITTER_NAME": "uffd-harness tests",
    "GIT_COMMITTER_EMAIL": "tests@uffd-harness.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_OPTIONAL_LOCKS": "0",
}


def _git(repo: Path, *args: str, timeout: float = 900) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **_ENV, "HOME": str(repo.parent)},
    ).stdout.strip()


def _log(msg: str) -> None:
    print(msg, flush=True)


@pytest.fixture(scope="module")
def hints_tree() -> Path:
    """linux-source-6.12 at commit 'base' (branch 'upstream'), vm/patches as commits on branch 'hints'."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed (apt-get install -y git)")
    src = sources.debian_source("6.12")
    if not src.tarball.exists():
        pytest.skip(f"{src.tarball} missing: apt-get install -y linux-source-6.12")
    return make_hints_tree()


def make_hints_tree() -> Path:
    """The tree, made once per (tarball version, series) and then reused."""
    src = sources.debian_source("6.12")
    digest = hashlib.sha256(src.identity.encode())
    for patch in vmbuild.read_series(SERIES):
        digest.update(patch.name.encode() + patch.read_bytes())
    tree = paths.CACHE_DIR / "test-trees" / f"linux-6.12-hints-{digest.hexdigest()[:12]}"
    if (tree / ".git" / "uffd-harness-ready").exists():
        return tree
    pristine = vmbuild.ensure_pristine(log=_log)
    tmp = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tree.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # hard links: git reads the files, and git am writes the ones it changes as new files
    subprocess.run(["cp", "-al", str(pristine), str(tmp)], check=True, timeout=900)
    (tmp / ".uffd-harness-pristine").unlink(missing_ok=True)
    _git(tmp, "init", "-q", "-b", "upstream")
    # -f: Debian's tarball has a .gitignore that ignores everything at the top level ("/*")
    _git(tmp, "add", "-f", "-A", ".")
    _git(tmp, "commit", "-q", "-m", f"{src.identity}")
    _git(tmp, "checkout", "-q", "-b", "hints", "--track", "upstream")
    _git(tmp, "am", "-q", *(str(p) for p in vmbuild.read_series(SERIES)))
    (tmp / ".git" / "uffd-harness-ready").write_text(src.identity)
    shutil.rmtree(tree, ignore_errors=True)
    tmp.rename(tree)
    _log(f"[test] git tree {tree} made in {time.monotonic() - t0:.0f} s")
    return tree


def _state(repo: Path) -> tuple:
    return (
        _git(repo, "status", "--porcelain", "--untracked-files=no"),
        _git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        repo.stat().st_mtime_ns,
        (repo / "mm" / "mprotect.c").stat().st_mtime_ns,
    )


def _one_guest_at_a_time(monkeypatch):
    # the build machine is shared: these tests boot one guest at a time
    monkeypatch.setattr(run, "_parallel_guests", lambda free_mb=None: 1)


def test_tree_gives_the_same_verdict_as_the_series_and_is_cached(hints_tree, tmp_path, monkeypatch):
    from harness.vm.runner import check_runner_host

    try:
        check_runner_host()
    except Exception as exc:  # noqa: BLE001 - MissingToolError and friends, with a message
        pytest.skip(f"cannot boot a guest: {exc}")
    _one_guest_at_a_time(monkeypatch)
    import json

    before = _state(hints_tree)

    t0 = time.monotonic()
    plan = plan_tree(hints_tree)  # base: the merge-base with the upstream branch
    assert plan.notes == ()  # nothing uncommitted in this tree
    status = run.validate(None, quick=True, results=tmp_path / "tree", log=_log, tree=plan)
    cold = time.monotonic() - t0
    tree_report = json.loads((tmp_path / "tree" / "report.json").read_text())

    # vm/patches is the default series: validate(None) builds it as 'patched' (cached by make kernels)
    status_series = run.validate(None, quick=True, results=tmp_path / "series", log=_log)
    series_report = json.loads((tmp_path / "series" / "report.json").read_text())

    assert tree_report["verdict"]["kind"] == series_report["verdict"]["kind"], (
        tree_report["verdict"]["line"],
        series_report["verdict"]["line"],
    )
    assert status == status_series
    cand_tree, cand_series = plan.candidate, "patched"
    for n, clause in tree_report["clauses"].items():
        assert clause[cand_tree] == series_report["clauses"][n][cand_series], (
            f"clause {n}: --tree gave {clause[cand_tree]}, --patches {series_report['clauses'][n][cand_series]}"
        )
        assert clause[plan.control] == series_report["clauses"][n]["stock"], f"clause {n} on the base"
    assert tree_report["origin"]["head"] == plan.head and tree_report["control"]["kernel"] == plan.control

    # a second run finds both kernels in the build cache
    t1 = time.monotonic()
    again = plan_tree(hints_tree)
    assert (again.control, again.candidate, again.series) == (plan.control, plan.candidate, plan.series)
    base = vmbuild.build_kernel(again.control, None, source=again.source, log=_log)
    head = vmbuild.build_kernel(again.candidate, again.series, source=again.source, seed_from=again.control, log=_log)
    warm = time.monotonic() - t1
    assert base.cached and head.cached, "the second --tree run rebuilt a kernel"
    assert warm < 60, f"the cached builds took {warm:.0f} s"
    assert head.info["seeded_from"] in (plan.control, None)
    _log(f"[test] --tree: cold validation {cold:.0f} s, cached builds {warm:.1f} s")

    assert _state(hints_tree) == before, "validate --tree changed the user's tree"


def test_a_tree_whose_head_commits_a_mutant_is_broken_on_its_clause(hints_tree, tmp_path, monkeypatch):
    """The hint series' head as the base, one commit on top that turns its code into a mutant's
    (young-only: WRITE_LIKELY leaves what it makes writable clean): 'contract broken' naming clause 3."""
    import json

    from harness.vm import mutants
    from harness.vm.runner import check_runner_host

    try:
        check_runner_host()
    except Exception as exc:  # noqa: BLE001 - MissingToolError and friends, with a message
        pytest.skip(f"cannot boot a guest: {exc}")
    _one_guest_at_a_time(monkeypatch)
    mutant = mutants.get("young-only")
    series = mutants.generate(mutant, tmp_path / "young-only")
    upstream, hints = _git(hints_tree, "rev-parse", "upstream"), _git(hints_tree, "rev-parse", "hints")
    clone = tmp_path / "tree"
    subprocess.run(["git", "clone", "-q", "--shared", str(hints_tree), str(clone)], check=True, timeout=600)
    _git(clone, "checkout", "-q", "-b", "mutant-series", upstream)
    _git(clone, "am", "-q", *(str(p) for p in vmbuild.read_series(series)))
    changed = _git(clone, "diff", "--name-only", hints, "mutant-series").split()
    assert changed and all(f.endswith(".c") for f in changed), changed
    _git(clone, "checkout", "-q", "-b", "mutant", hints)
    _git(clone, "checkout", "mutant-series", "--", *changed)
    _git(clone, "commit", "-q", "-m", f"mutant {mutant.name}: {mutant.breaks}")

    plan = plan_tree(clone, base=hints, head="mutant")
    status = run.validate(None, quick=True, results=tmp_path / "results", log=_log, tree=plan)
    report = json.loads((tmp_path / "results" / "report.json").read_text())
    assert status != 0
    assert report["verdict"]["kind"] == "broken", report["verdict"]["line"]
    assert "clause 3" in report["verdict"]["line"], report["verdict"]["line"]
    assert report["clauses"]["3"][plan.candidate] == "fail"
