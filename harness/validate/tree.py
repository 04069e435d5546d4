"""``validate --tree PATH [--base REF] [--head REF] [--dirty]``: a user's git tree as two builds.

The control is the tree at ``base`` (default: the merge-base of HEAD's
branch with its upstream), the candidate the tree at ``head`` (default
HEAD).  Both are built from the commits, never from the work tree:

- the control's source is ``git archive <base>`` into the build cache
  (:func:`harness.vm.sources.git_source`), named ``git-<base>`` and keyed by
  the commit, so a base is built once whatever head it is compared with;
- the candidate is that same archive plus ``git diff <base> <head>`` as a
  one-patch series (and, with ``--dirty``, ``git diff HEAD`` of the tracked
  files as a second patch), named ``git-<head>``; its first build is seeded
  from the base's objects, so only what the commits change is compiled.

Nothing here writes to the user's repository: ``rev-parse``, ``merge-base``,
``diff``, ``cat-file`` and ``archive`` only, with ``GIT_OPTIONAL_LOCKS=0`` so
that not even the index's stat cache is refreshed.  Every bad input is a
:class:`harness.vm.sources.SourceError`: one line, exit status 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional

from harness import paths
from harness.vm import sources
from harness.vm.sources import SourceError, git

Log = Callable[[str], None]

#: the files whose presence at a commit makes it a Linux tree the harness can build and check
KERNEL_TREE_FILES = ("Makefile", "Kconfig", "mm/mprotect.c", "include/uapi/linux/userfaultfd.h")


@dataclasses.dataclass(frozen=True)
class TreePlan:
    """The two builds of a ``--tree`` validation and what the user is told about them."""

    repo: Path
    base: str
    head: str
    source: sources.Source  #: the base commit (the candidate is built on it)
    control: str  #: kernel name of the base build
    candidate: str  #: kernel name of the head build
    series: Path  #: the head's diff (and the uncommitted changes) as a series
    notes: tuple[str, ...] = ()  #: lines for the user (uncommitted changes, ...)
    dirty: bool = False

    def describe(self) -> dict:
        return {
            "tree": str(self.repo),
            "base": self.base,
            "head": self.head,
            "dirty": self.dirty,
            "series": str(self.series),
        }


def plan_tree(
    path: Path,
    base: Optional[str] = None,
    head: Optional[str] = None,
    dirty: bool = False,
    cache: Optional[Path] = None,
) -> TreePlan:
    """Check the tree and the refs, and write the candidate's series into the cache; no build yet."""
    repo = sources.git_toplevel(Path(path))
    head_ref = head or "HEAD"
    head_id = sources.rev_parse(repo, head_ref, "--head")
    _check_kernel_commit(repo, head_id, head_ref)
    if base is None:
        base_id = _upstream_merge_base(repo, head_ref)
        base_ref = base_id[:12]
    else:
        base_id = sources.rev_parse(repo, base, "--base")
        base_ref = base
    _check_kernel_commit(repo, base_id, base_ref)
    if git(repo, "merge-base", "--is-ancestor", base_id, head_id, check=False).returncode != 0:
        raise SourceError(
            f"--base {base_ref} ({base_id[:12]}) is not an ancestor of --head {head_ref} "
            f"({head_id[:12]}): give a base that head was built on"
        )

    notes = []
    uncommitted = _uncommitted(repo)
    if dirty and head is not None and head_id != sources.rev_parse(repo, "HEAD", "HEAD"):
        raise SourceError(
            f"--dirty includes the work tree's changes, which sit on HEAD, not on --head {head}: drop --head or --dirty"
        )
    if uncommitted and not dirty:
        notes.append(
            f"--tree {repo}: {len(uncommitted)} tracked file(s) with uncommitted changes are NOT "
            f"included ({', '.join(uncommitted[:3])}{', ...' if len(uncommitted) > 3 else ''}); "
            "commit them, or add --dirty to include them"
        )
    elif dirty and not uncommitted:
        notes.append(f"--tree {repo}: --dirty given, but no tracked file has uncommitted changes")
    dirty = dirty and bool(uncommitted)

    diffs = [(f"0001-{base_id[:12]}..{head_id[:12]}.patch", _diff(repo, base_id, head_id))]
    if dirty:
        diffs.append(("0002-uncommitted-changes.patch", _diff(repo, "HEAD", None)))
    diffs = [(n, d) for n, d in diffs if d]
    if not diffs:
        raise SourceError(
            f"--base {base_ref} and --head {head_ref} are the same tree ({head_id[:12]}): "
            "nothing to compare; give an older --base"
        )
    series = _write_series(diffs, cache or paths.CACHE_DIR / "tree-series")
    digest = hashlib.sha256(b"".join(d for _, d in diffs)).hexdigest()[:8] if dirty else ""
    source = sources.git_source(repo, base_id)
    candidate = f"git-{head_id[:12]}" + (f"-dirty-{digest}" if dirty else "")
    return TreePlan(
        repo=repo,
        base=base_id,
        head=head_id,
        source=source,
        control=source.kernel_name("stock"),
        candidate=candidate,
        series=series,
        notes=tuple(notes),
        dirty=dirty,
    )


def _check_kernel_commit(repo: Path, commit: str, ref: str) -> None:
    missing = [
        f for f in KERNEL_TREE_FILES if git(repo, "cat-file", "-e", f"{commit}:{f}", check=False).returncode != 0
    ]
    if missing:
        raise SourceError(f"--tree {repo} at {ref} ({commit[:12]}): not a Linux kernel tree (no {', '.join(missing)})")


def _upstream_merge_base(repo: Path, head_ref: str) -> str:
    """The merge-base of ``head_ref`` with its branch's upstream, or one line asking for --base."""
    branch = (
        head_ref
        if head_ref != "HEAD"
        else (git(repo, "symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.strip() or "HEAD")
    )
    up = git(repo, "rev-parse", "--abbrev-ref", "--symbolic-full-name", f"{branch}@{{upstream}}", check=False)
    if up.returncode != 0 or not up.stdout.strip():
        raise SourceError(
            f"--tree {repo}: {branch} has no upstream branch to take the base from; "
            "give --base REF (the commit your changes start from)"
        )
    mb = git(repo, "merge-base", up.stdout.strip(), head_ref, check=False)
    if mb.returncode != 0 or not mb.stdout.strip():
        raise SourceError(
            f"--tree {repo}: {branch} and its upstream {up.stdout.strip()} share no commit; give --base REF"
        )
    return mb.stdout.strip()


def _uncommitted(repo: Path) -> list[str]:
    """Tracked files whose work-tree or index content differs from HEAD (untracked files do not count)."""
    out = git(repo, "diff", "--name-only", "--no-renames", "HEAD", check=False).stdout
    return [line for line in out.splitlines() if line]


def _diff(repo: Path, a: str, b: Optional[str]) -> bytes:
    """``git diff a b`` (or a against the work tree) as patch(1) applies it; binary changes are refused."""
    args = ["--no-renames", "--no-color", "--no-ext-diff", "--full-index", a] + ([b] if b else [])
    numstat = git(repo, "diff", "--numstat", *args, check=True, timeout=600).stdout
    binary = [line.split("\t", 2)[2] for line in numstat.splitlines() if line.startswith("-\t-\t")]
    if binary:
        raise SourceError(
            f"--tree {repo}: {a[:12]}..{(b or 'work tree')[:12]} changes binary file(s) "
            f"({', '.join(binary[:3])}), which the build's patch(1) step cannot apply"
        )
    proc = subprocess.run(
        ["git", "-C", str(repo), "diff", *args],
        capture_output=True,
        timeout=600,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
    )
    if proc.returncode != 0:
        raise SourceError(
            f"--tree {repo}: git diff {a[:12]} {(b or '')[:12]} failed: "
            f"{proc.stderr.decode(errors='replace').strip()[:200]}"
        )
    return proc.stdout


def _write_series(diffs: list[tuple[str, bytes]], root: Path) -> Path:
    """A series directory named by its content: the same commits give the same directory."""
    digest = hashlib.sha256()
    for name, data in diffs:
        digest.update(name.encode() + b"\0" + data + b"\0")
    d = root / digest.hexdigest()[:16]
    if not (d / "series").exists():
        tmp = root / f".{d.name}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for name, data in diffs:
            (tmp / name).write_bytes(data)
        (tmp / "series").write_text("".join(f"{name}\n" for name, _ in diffs))
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
    return d
