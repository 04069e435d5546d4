"""``validate --tree`` on a tiny fake kernel repository: bad input gives one line and exit 2,
and nothing in the user's tree changes (``git status --porcelain``, the mtimes of the work tree,
``.git`` and its index, and the refs are the same before and after).

These never build anything: every case fails (or is planned) before a kernel build starts.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness import cli
from harness.validate import tree as vtree
from harness.vm.sources import SourceError

#: git trees on the host: the same on any kernel (guest suites deselect host_only)
pytestmark = pytest.mark.host_only

KERNEL_FILES = {
    "Makefile": "VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 0\nEXTRAVERSION =\n",
    "Kconfig": "config USERFAULTFD\n\tbool\n",
    "mm/mprotect.c": "int change_pte_range;\n",
    "include/uapi/linux/userfaultfd.h": "#define UFFD_API ((__u64)0xAA)\n",
}


def _git(repo: Path, *args: str) -> str:
    # GIT_OPTIONAL_LOCKS=0: the test's own `git status` must not refresh the index it watches
    env = {
        **os.environ,
        "GIT_OPTIONAL_LOCKS": "0",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(repo.parent),
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def _write(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.fixture
def kernel_repo(tmp_path) -> Path:
    """base (a kernel tree) <- head (one .c file changed), on branch 'work' with no upstream."""
    repo = tmp_path / "linux"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "work")
    _write(repo, KERNEL_FILES)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    _git(repo, "tag", "base")
    _write(repo, {"mm/mprotect.c": "int change_pte_range;\nint access_likely;\n"})
    _git(repo, "commit", "-q", "-am", "head: a hint")
    return repo


def _snapshot(repo: Path) -> dict:
    """Everything a read-only command must leave as it was."""
    git_dir = repo / ".git"
    return {
        "status": _git(repo, "status", "--porcelain"),
        "refs": _git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "worktrees": (
            sorted(p.name for p in (git_dir / "worktrees").iterdir()) if (git_dir / "worktrees").exists() else []
        ),
        "mtimes": {
            str(p.relative_to(repo)): p.stat().st_mtime_ns
            for p in [repo, git_dir, git_dir / "index", *repo.rglob("*")]
            if ".git/objects" not in str(p) and p.exists()
        },
    }


def _validate(argv: list[str], capsys) -> tuple[int, str]:
    status = cli.main(["validate", *argv])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "case",
    [
        "not-git",
        "not-kernel",
        "unknown-head",
        "unknown-base",
        "not-ancestor",
        "no-upstream",
        "same-tree",
        "dirty-with-other-head",
    ],
)
def test_bad_tree_input_is_one_line_exit_2_and_changes_nothing(case, kernel_repo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UFFD_HARNESS_BUILD_DIR", str(tmp_path / "build"))
    repo = kernel_repo
    argv = ["--tree", str(repo)]
    expect = {
        "not-git": "not a git tree",
        "not-kernel": "not a Linux kernel tree (no Kconfig, mm/mprotect.c",
        "unknown-head": "--head no-such-ref: unknown revision",
        "unknown-base": "--base no-such-ref: unknown revision",
        "not-ancestor": "is not an ancestor of --head",
        "no-upstream": "has no upstream branch to take the base from; give --base REF",
        "same-tree": "are the same tree",
        "dirty-with-other-head": "drop --head or --dirty",
    }[case]
    if case == "not-git":
        plain = tmp_path / "plain"
        _write(plain, KERNEL_FILES)
        repo, argv = plain, ["--tree", str(plain), "--base", "HEAD"]
    elif case == "not-kernel":
        other = tmp_path / "other"
        other.mkdir()
        _git(other, "init", "-q")
        _write(other, {"Makefile": "all:\n"})
        _git(other, "add", "-A")
        _git(other, "commit", "-q", "-m", "x")
        repo, argv = other, ["--tree", str(other), "--base", "HEAD"]
    elif case == "unknown-head":
        argv += ["--base", "base", "--head", "no-such-ref"]
    elif case == "unknown-base":
        argv += ["--base", "no-such-ref"]
    elif case == "not-ancestor":
        argv += ["--base", "HEAD", "--head", "base"]
    elif case == "same-tree":
        argv += ["--base", "HEAD"]
    elif case == "dirty-with-other-head":
        (repo / "mm/mprotect.c").write_text("uncommitted\n")
        argv += ["--base", "base", "--head", "base", "--dirty"]
    before = _snapshot(repo) if (repo / ".git").exists() else None
    mtime = repo.stat().st_mtime_ns
    status, err = _validate(argv, capsys)
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and expect in lines[0], err
    assert repo.stat().st_mtime_ns == mtime
    if before is not None:
        assert _snapshot(repo) == before
    assert not (tmp_path / "build" / "kernels").exists(), "bad input must fail before any build"


def test_plan_takes_the_base_from_the_upstream_merge_base(kernel_repo, tmp_path):
    repo = kernel_repo
    base = _git(repo, "rev-parse", "base")
    _git(repo, "branch", "-q", "upstream-main", "base")
    _git(repo, "branch", "-q", "--set-upstream-to", "upstream-main")
    before = _snapshot(repo)
    plan = vtree.plan_tree(repo, cache=tmp_path / "series")
    assert plan.base == base and plan.head == _git(repo, "rev-parse", "HEAD")
    assert plan.control == f"git-{base[:12]}" and plan.candidate == f"git-{plan.head[:12]}"
    # the candidate is the base's archive plus exactly the commits in between
    series = [line for line in (plan.series / "series").read_text().splitlines() if line]
    assert len(series) == 1
    diff = (plan.series / series[0]).read_text()
    assert "+int access_likely;" in diff and "a/mm/mprotect.c" in diff
    assert _snapshot(repo) == before


def test_uncommitted_changes_are_named_and_left_out_unless_dirty(kernel_repo, tmp_path):
    repo = kernel_repo
    (repo / "mm/mprotect.c").write_text("int change_pte_range;\nint access_likely;\nint uncommitted;\n")
    (repo / "untracked.c").write_text("not in any diff\n")
    before = _snapshot(repo)
    plan = vtree.plan_tree(repo, base="base", cache=tmp_path / "series")
    assert len(plan.notes) == 1 and "NOT included" in plan.notes[0] and "mm/mprotect.c" in plan.notes[0]
    assert "--dirty" in plan.notes[0]
    assert not plan.dirty and len((plan.series / "series").read_text().split()) == 1
    dirty = vtree.plan_tree(repo, base="base", dirty=True, cache=tmp_path / "series")
    assert dirty.dirty and dirty.candidate.startswith(f"git-{dirty.head[:12]}-dirty-")
    names = (dirty.series / "series").read_text().split()
    assert names[1] == "0002-uncommitted-changes.patch"
    second = (dirty.series / names[1]).read_text()
    assert "+int uncommitted;" in second and "untracked.c" not in second
    assert _snapshot(repo) == before, "planning must not touch the index, the refs or the work tree"


def test_same_commits_give_the_same_series_directory(kernel_repo, tmp_path):
    a = vtree.plan_tree(kernel_repo, base="base", cache=tmp_path / "series")
    b = vtree.plan_tree(kernel_repo, base="base", cache=tmp_path / "series")
    assert a.series == b.series and a.control == b.control


def test_binary_changes_are_refused_with_the_file_named(kernel_repo, tmp_path):
    (kernel_repo / "firmware.bin").write_bytes(b"\0\1\2\3")
    _git(kernel_repo, "add", "firmware.bin")
    _git(kernel_repo, "commit", "-q", "-m", "blob")
    with pytest.raises(SourceError, match="binary file.*firmware.bin"):
        vtree.plan_tree(kernel_repo, base="base", cache=tmp_path / "series")
