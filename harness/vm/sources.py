"""Where a kernel tree comes from: a Debian tarball, an unpacked tree, or a commit of a git tree.

    resolve(None)            Debian's linux-source-6.12 (the default: today's layout and cache keys)
    resolve("6.1")           Debian's linux-source-6.1 (apt-get installs it when asked for, as root)
    resolve("/path/linux")   an unpacked kernel tree, copied into the cache (never built in place)
    git_source(repo, ref)    one commit of a git tree: ``git archive`` into the cache

Each :class:`Source` says what it needs on the host (``requirements``, for
:func:`harness.vm.build.check_host`), who it is (``identity``, which goes into
the build's cache key, so a base is built once per identity, config and
compiler) and where its pristine tree is (:meth:`Source.ensure`).  A user's
git tree is only ever read: ``git archive``, ``git rev-parse``, ``git diff``
and ``git stash create`` (which writes an unreferenced object, never the
index, a ref or the work tree).  No worktree is created inside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from harness.paths import CACHE_DIR, REPO_ROOT
from harness.vm.errors import VmError

Log = Callable[[str], None]

#: the Debian tarballs the harness knows, by the name ``--source`` takes
DEBIAN_VERSIONS = ("6.12", "6.1")
DEFAULT_VERSION = "6.12"

#: the hint series of each Debian base (vm/patches stays the 6.12 series: other code and people name it)
SERIES_DIRS = {"6.12": REPO_ROOT / "vm" / "patches", "6.1": REPO_ROOT / "vm" / "patches-6.1"}

TIMEOUT_UNPACK = 600
TIMEOUT_GIT = 600


class SourceError(VmError):
    """A source that cannot be used: not a tree, not a kernel, an unknown ref, ...

    Exit status 2, as for any other bad command-line input.
    """

    exit_status = 2


@dataclasses.dataclass(frozen=True)
class Source:
    """One kernel tree's origin.

    ``identity`` names the exact content (package version, commit id,
    fingerprint of a directory); ``label`` is short, for kernel names and
    tables; ``version`` is the Debian base ("6.12", "6.1") when there is one.
    """

    kind: str  #: "debian", "path" or "git"
    label: str
    identity: str
    requirements: dict  #: tool or file -> Debian package
    version: Optional[str] = None
    tarball: Optional[Path] = None
    path: Optional[Path] = None  #: the unpacked tree (kind "path") or the git repository (kind "git")
    commit: Optional[str] = None

    @property
    def config_addendum(self) -> Optional[Path]:
        """``vm/kernel-<version>.config``: what this Debian base's Kconfig needs on top of the fragment."""
        if self.kind != "debian":
            return None
        path = REPO_ROOT / "vm" / f"kernel-{self.version}.config"
        return path if path.exists() else None

    @property
    def default_series(self) -> Optional[Path]:
        """The project's hint series for this base, or None (a user's tree brings its own commits)."""
        return SERIES_DIRS.get(self.version) if self.kind == "debian" and self.version else None

    def kernel_name(self, role: str) -> str:
        """The build name of ``role`` ("stock" or "patched") on this source: 6.12 keeps the bare names."""
        if self.kind == "debian" and self.version == DEFAULT_VERSION:
            return role
        if self.kind == "git" and role == "stock":
            return self.label  # a commit as it is: git-<commit>
        return f"{role}-{self.label}"

    def ensure(self, log: Log, cache: Path = CACHE_DIR) -> Path:
        """The pristine tree, made once under ``cache/src``; the caller holds the build lock."""
        if self.kind == "debian":
            return _unpack_tarball(self, cache / "src", log)
        if self.kind == "git":
            return _archive_commit(self, cache / "src", log)
        return _copy_tree(self, cache / "src", log)

    def describe(self) -> dict:
        """What build.json records about where the tree came from."""
        d = {"kind": self.kind, "label": self.label, "identity": self.identity}
        if self.version:
            d["debian_version"] = self.version
        if self.path:
            d["path"] = str(self.path)
        if self.commit:
            d["commit"] = self.commit
        return d


# --------------------------------------------------------------------------
# resolving a --source argument

#: the tools every kernel build needs, whatever the source (tool or file -> Debian package)
BUILD_TOOLS: dict[str, str] = {
    "gcc": "gcc",
    "make": "make",
    "flex": "flex",
    "bison": "bison",
    "bc": "bc",
    "patch": "patch",
    "xz": "xz-utils",
    "tar": "tar",
    "perl": "perl",
    "/usr/include/libelf.h": "libelf-dev",
    "/usr/include/openssl/ssl.h": "libssl-dev",
}


def debian_tarball(version: str) -> Path:
    return Path(f"/usr/src/linux-source-{version}.tar.xz")


def debian_source(version: str = DEFAULT_VERSION) -> Source:
    """Debian's ``linux-source-<version>`` tarball; its identity is the package version."""
    if version not in DEBIAN_VERSIONS:
        raise SourceError(
            f"--source {version}: unknown Debian base; use one of {', '.join(DEBIAN_VERSIONS)} "
            "or the path of a kernel tree"
        )
    tarball = debian_tarball(version)
    return Source(
        kind="debian",
        label=version,
        identity=_package_version(version, tarball),
        requirements={**BUILD_TOOLS, str(tarball): f"linux-source-{version}"},
        version=version,
        tarball=tarball,
    )


def _package_version(version: str, tarball: Path) -> str:
    """``linux-source-6.12 6.12.118-1~deb12u1``: the same string build.py has always keyed 6.12 builds by."""
    package = f"linux-source-{version}"
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return f"{package} {out.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        st = tarball.stat()
    except OSError:
        return f"{package} (not installed)"  # check_host installs it, or says how
    return f"{tarball.name} size={st.st_size} mtime={int(st.st_mtime)}"


def resolve(spec: "str | os.PathLike | Source | None") -> Source:
    """``--source`` as given: None or "6.12" (the default), "6.1", or the path of an unpacked tree."""
    if isinstance(spec, Source):
        return spec
    if spec is None or str(spec) == "":
        return debian_source(DEFAULT_VERSION)
    text = str(spec)
    if text in DEBIAN_VERSIONS:
        return debian_source(text)
    if re.fullmatch(r"\d+\.\d+", text):
        raise SourceError(
            f"--source {text}: no Debian tarball for {text} here; use one of "
            f"{', '.join(DEBIAN_VERSIONS)}, or the path of a kernel tree"
        )
    return path_source(Path(text))


def _not_a_directory(path: Path) -> str:
    """Why ``path`` is not a directory, in the words of the error: a file named as one must not "not exist"."""
    return "a file, not a directory" if path.exists() else "no such directory"


def check_kernel_tree(path: Path, what: str) -> None:
    """One line if ``path`` does not look like a Linux tree (top Makefile, Kconfig, mm/, include/uapi/)."""
    if not path.is_dir():
        raise SourceError(f"{what} {path}: {_not_a_directory(path)}")
    needed = ("Makefile", "Kconfig", "mm/mprotect.c", "include/uapi/linux/userfaultfd.h")
    missing = [n for n in needed if not (path / n).exists()]
    if missing:
        raise SourceError(f"{what} {path}: not a Linux kernel tree (no {', '.join(missing)})")


def path_source(path: Path) -> Source:
    """An unpacked tree; its identity is a fingerprint of every file's name, size and mtime."""
    path = path.resolve()
    check_kernel_tree(path, "--source")
    return Source(
        kind="path",
        label=f"tree-{_fingerprint(path)[:10]}",
        identity=f"tree {path} {_fingerprint(path)}",
        requirements=dict(BUILD_TOOLS),
        path=path,
    )


def _fingerprint(path: Path) -> str:
    """sha256 over (name, size, mtime) of the tree's files: cheap, and changes whenever a file does."""
    cached = _FINGERPRINTS.get(path)
    if cached:
        return cached
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            f = os.path.join(root, name)
            try:
                st = os.lstat(f)
            except OSError:
                continue
            h.update(f"{os.path.relpath(f, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    _FINGERPRINTS[path] = h.hexdigest()
    return _FINGERPRINTS[path]


_FINGERPRINTS: dict[Path, str] = {}


# --------------------------------------------------------------------------
# git trees


def git(repo: Path, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """``git -C repo args``, read-only uses only; text output."""
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
    )


def git_toplevel(path: Path) -> Path:
    """The top of the git work tree at ``path``, or one line saying it is not one."""
    if not Path(path).is_dir():
        raise SourceError(f"--tree {path}: {_not_a_directory(Path(path))}")
    if shutil.which("git") is None:
        raise SourceError("--tree needs git: apt-get install -y git")
    proc = git(Path(path), "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise SourceError(f"--tree {path}: not a git tree (git rev-parse: {_first_line(proc.stderr)})")
    return Path(proc.stdout.strip())


def rev_parse(repo: Path, ref: str, what: str) -> str:
    """The commit id of ``ref`` in ``repo``, or one line naming the unknown ref."""
    proc = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SourceError(f"{what} {ref}: unknown revision in {repo} (try `git -C {repo} log --oneline -5`)")
    return proc.stdout.strip()


def git_source(repo: Path, commit: str) -> Source:
    """One commit of a git tree (``commit`` already resolved to its id)."""
    return Source(
        kind="git",
        label=f"git-{commit[:12]}",
        identity=f"git {commit}",
        requirements={**BUILD_TOOLS, "git": "git"},
        path=repo,
        commit=commit,
    )


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


# --------------------------------------------------------------------------
# making the pristine trees (under the build lock)

_STAMP = ".uffd-harness-pristine"


def _unpack_tarball(src: Source, root: Path, log: Log) -> Path:
    """Unpack a Debian tarball once into ``root/linux-source-<version>``."""
    if src.tarball is None:
        raise VmError(f"source {src.identity}: no tarball to unpack")
    return untar_once(src.tarball, f"linux-source-{src.version}", root, src.identity, log)


def untar_once(tarball: Path, dirname: str, root: Path, identity: str, log: Log) -> Path:
    """``root/dirname`` unpacked from ``tarball``, once: a stamp inside it holds ``identity``.

    The tree is unpacked beside it and renamed into place, so a tree is
    either whole or absent; the caller holds the build lock.
    """
    tree = root / dirname
    stamp = tree / _STAMP
    if stamp.exists() and stamp.read_text() == identity:
        return tree
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".unpack-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log(f"[vm] unpacking {tarball} into {root} (once)")
    t0 = time.monotonic()
    try:
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp)], check=True, timeout=TIMEOUT_UNPACK)
        shutil.rmtree(tree, ignore_errors=True)
        os.rename(tmp / dirname, tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stamp.write_text(identity)
    log(f"[vm] unpacked in {time.monotonic() - t0:.0f} s")
    return tree


def _archive_commit(src: Source, root: Path, log: Log) -> Path:
    """``git archive <commit>`` into ``root/git-<commit>``: the user's tree is only read."""
    assert src.commit and src.path
    tree = root / f"git-{src.commit}"
    if (tree / _STAMP).exists():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".archive-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log(f"[vm] git archive {src.commit[:12]} of {src.path} into {tree} (once per commit)")
    t0 = time.monotonic()
    try:
        archive = subprocess.Popen(
            ["git", "-C", str(src.path), "archive", "--format=tar", src.commit],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        untar = subprocess.run(
            ["tar", "-xf", "-", "-C", str(tmp)], stdin=archive.stdout, capture_output=True, timeout=TIMEOUT_GIT
        )
        assert archive.stdout is not None
        archive.stdout.close()
        err = archive.stderr.read().decode(errors="replace") if archive.stderr else ""
        if archive.wait(timeout=TIMEOUT_GIT) != 0 or untar.returncode != 0:
            raise VmError(
                f"git archive {src.commit[:12]} of {src.path} failed: "
                f"{_first_line(err) or _first_line(untar.stderr.decode(errors='replace'))}"
            )
        (tmp / _STAMP).write_text(src.identity)
        shutil.rmtree(tree, ignore_errors=True)
        os.rename(tmp, tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[vm] archived in {time.monotonic() - t0:.0f} s")
    return tree


def _copy_tree(src: Source, root: Path, log: Log) -> Path:
    """A copy of an unpacked tree (``cp -a``, reflinked where the file system can): later edits of
    the user's tree cannot reach a build that was keyed by its old fingerprint."""
    assert src.path
    tree = root / src.label
    if (tree / _STAMP).exists() and (tree / _STAMP).read_text() == src.identity:
        return tree
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".copy-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"[vm] copying {src.path} into {tree} (once per fingerprint)")
    t0 = time.monotonic()
    try:
        subprocess.run(["cp", "-a", "--reflink=auto", str(src.path), str(tmp)], check=True, timeout=TIMEOUT_UNPACK)
        shutil.rmtree(tmp / ".git", ignore_errors=True)
        if (tmp / ".config").exists():
            # kbuild refuses an O= build of a tree that was configured in place
            raise SourceError(
                f"--source {src.path}: the tree was configured in place (.config); "
                f"run `make mrproper` there, or give a clean tree"
            )
        (tmp / _STAMP).write_text(src.identity)
        shutil.rmtree(tree, ignore_errors=True)
        os.rename(tmp, tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[vm] copied in {time.monotonic() - t0:.0f} s")
    return tree
