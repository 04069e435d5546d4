"""Build the guest kernels: Debian's linux-source-6.12, stock or patched.

Layout (all under the repository's git-ignored ``build/``)::

    build/cache/src/linux-source-6.12/   pristine tree, unpacked once
    build/kernels/<name>/src/            hard-linked copy + the patch series
    build/kernels/<name>/obj/            O= build directory, kept for
                                         incremental rebuilds
    build/kernels/<name>/bzImage
    build/kernels/<name>/uapi/linux/userfaultfd.h
    build/kernels/<name>/selftests/{uffd-unit-tests,mkdirty,pagemap_ioctl}
    build/kernels/<name>/build.json      key, inputs, times
    build/kernels/<name>/build.log       full make output

The cache key hashes the source version, the patch contents, the
instrumentation patches (vm/instrumentation, applied after the series to
every kernel), the config fragment and the compiler version.  Same key and
a bzImage present: done in well under a second.  patch(1) writes a new file for each file it changes,
which breaks the hard link, so the pristine tree is never modified.
"""

from __future__ import annotations

import dataclasses
import difflib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from harness.errors import errno_name
from harness.paths import BUILD_DIR, ENV_BUILD_TIMEOUT, ENV_CANDIDATES_MAX_MB, ENV_KEEP_CANDIDATES, REPO_ROOT
from harness.selftests import SELFTESTS, selftests_of_tree  # noqa: F401 - SELFTESTS: 6.12's set, re-exported
from harness.vm import sources
from harness.vm.errors import BadInput, KernelBuildError, MissingToolError, PatchApplyError, SeriesError, VmError

#: bumped when the build procedure changes in a way that changes outputs
BUILDER_VERSION = 1

VM_DIR = REPO_ROOT / "vm"
DEFAULT_PATCHES = VM_DIR / "patches"
#: the uffd-harness instrumentation (a debugfs view of the caller's PTEs),
#: applied after the series under test to every kernel; not part of any series
INSTRUMENTATION_DIR = VM_DIR / "instrumentation"
#: what the instrumentation adds to the guest, and the object that proves it was built
PTE_DEBUGFS = "/sys/kernel/debug/uffd_harness/pte"
PTE_OBJECT = "mm/uffd_harness_pte.o"
DEFAULT_FRAGMENT = VM_DIR / "kernel.config"

SOURCE_PACKAGE = "linux-source-6.12"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
SOURCE_DIRNAME = "linux-source-6.12"

#: per-step timeouts in seconds; a cold build is ~4 min on 2 cores
TIMEOUT_UNPACK = sources.TIMEOUT_UNPACK
TIMEOUT_CONFIG = 300
TIMEOUT_KERNEL = int(os.environ.get(ENV_BUILD_TIMEOUT, "5400"))
TIMEOUT_SELFTESTS = 600
TIMEOUT_PATCH = 120
TIMEOUT_APT = 900

#: tool (or file) -> Debian package that provides it: the build tools of every source, and the default one
HOST_REQUIREMENTS: dict[str, str] = {**sources.BUILD_TOOLS, str(SOURCE_TARBALL): SOURCE_PACKAGE}

Log = Callable[[str], None]


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class KernelBuild:
    """A built kernel, as the runner and the in-guest suite use it."""

    name: str
    path: Path  #: the bzImage
    key: str  #: cache key (sha256 hex)
    uapi_header: Path  #: copy of include/uapi/linux/userfaultfd.h
    patched: bool  #: True if any patch was applied
    directory: Path  #: build/kernels/<name>
    selftests_dir: Path
    cached: bool = False  #: True if nothing had to be rebuilt

    @property
    def info(self) -> dict:
        """The contents of build.json (checked: :mod:`harness.vm.documents`)."""
        from harness.vm.documents import load_build_info

        return load_build_info(self.directory / "build.json")

    @property
    def pte_channel(self) -> dict:
        """build.json's "pte_channel": {"available": bool, "debugfs": path, "reason": why not or None}."""
        return self.info.get("pte_channel") or {
            "available": False,
            "debugfs": PTE_DEBUGFS,
            "reason": "built before vm/instrumentation existed: rebuild it",
        }


# --------------------------------------------------------------------------
# host requirements


def check_host(requirements: dict[str, str] | None = None, *, install: bool | None = None, log: Log = _eprint) -> None:
    """Make sure every tool is there; apt-get install them when root.

    Raises MissingToolError (naming the packages and the apt command) when
    something is missing and cannot be installed.
    """
    reqs = HOST_REQUIREMENTS if requirements is None else requirements
    missing = [t for t in reqs if not _have(t)]
    if not missing:
        return
    packages = sorted({reqs[t] for t in missing})
    if install is None:
        install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if install:
        log(f"[vm] installing {' '.join(packages)} (missing: {', '.join(missing)})")
        try:
            # A fresh machine has no package lists yet: without them apt cannot find anything.
            subprocess.run(
                ["apt-get", "update", "-q"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=TIMEOUT_APT,
                check=False,
            )
            proc = subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends", *packages],
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=TIMEOUT_APT,
            )
        except subprocess.TimeoutExpired:
            raise MissingToolError(missing, packages) from None
        if proc.returncode != 0:
            log(proc.stdout[-2000:])
        missing = [t for t in reqs if not _have(t)]
        if not missing:
            return
        packages = sorted({reqs[t] for t in missing})
    raise MissingToolError(missing, packages)


def _have(tool: str) -> bool:
    if tool.startswith("/"):
        return Path(tool).exists()
    return shutil.which(tool) is not None


# --------------------------------------------------------------------------
# inputs and the cache key


def read_series(patches_dir: Path) -> list[Path]:
    """The patches of a series, in order.

    ``patches_dir/series`` (quilt format: one file name a line, ``#``
    comments) if it exists, else every ``*.patch`` sorted by name.
    """
    patches_dir = Path(patches_dir)
    if patches_dir.exists() and not patches_dir.is_dir():
        raise SeriesError(
            f"--patches {patches_dir}: a file, not a directory: give the directory that holds "
            "the series file (or the *.patch files)"
        )
    if not patches_dir.is_dir():
        raise SeriesError(f"patch directory {patches_dir} does not exist")
    series = patches_dir / "series"
    if series.exists():
        if not series.is_file():
            raise SeriesError(f"{series}: not a file: a quilt series lists one patch file name a line")
        try:
            text = series.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise SeriesError(f"{series}: binary data, not a quilt series (one patch file name a line)") from None
        if "\0" in text:
            raise SeriesError(f"{series}: binary data, not a quilt series (one patch file name a line)")
        out = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name = line.split()[0]  # quilt allows "-p1" after the name
            path = patches_dir / name
            if not path.is_file():
                raise SeriesError(f"{series}: lists {name}, which does not exist")
            out.append(path)
        return out
    return sorted(patches_dir.glob("*.patch"))


def check_series(patches_dir: str | os.PathLike) -> list[Path]:
    """The series of ``patches_dir``, checked to apply before anything is built or booted.

    Each patch must be a diff, and the whole series must apply in order to a
    scratch tree holding only the files it touches, copied from the pristine
    source (build/cache/src) or, before the first build, extracted from the
    tarball.  Raises VmError (PatchApplyError for a patch that does not
    apply) with a one-line summary; returns the patches.
    """
    patches = read_series(Path(patches_dir))
    if not patches:
        raise SeriesError(f"{patches_dir}: no series file and no *.patch")
    targets: set[str] = set()
    for p in patches:
        try:
            text = p.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            raise SeriesError(f"{p}: cannot read: {errno_name(exc.errno or 0)} ({exc.strerror})") from None
        found = set(series_targets([p])) if text else set()
        if not found:
            raise SeriesError(f"{p}: not a patch (no '--- a/FILE' / '+++ b/FILE' lines)")
        targets |= found
    with tempfile.TemporaryDirectory(prefix="uffd-harness-series-") as scratch:
        tree = Path(scratch) / SOURCE_DIRNAME
        tree.mkdir()
        pristine = BUILD_DIR / "cache" / "src" / SOURCE_DIRNAME
        if (pristine / ".uffd-harness-pristine").exists():
            for t in targets:
                if (pristine / t).is_file():
                    (tree / t).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(pristine / t, tree / t)
        elif SOURCE_TARBALL.exists():
            # Members that the tarball lacks are files the series creates: tar says so and goes on.
            subprocess.run(
                [
                    "tar",
                    "-xf",
                    str(SOURCE_TARBALL),
                    "-C",
                    scratch,
                    "--ignore-failed-read",
                    *[f"{SOURCE_DIRNAME}/{t}" for t in sorted(targets)],
                ],
                capture_output=True,
                timeout=TIMEOUT_UNPACK,
            )
        else:
            return patches  # nothing to apply it to yet; the build checks it once the source is there
        apply_series(tree, patches, warn=lambda _: None)
    return patches


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gcc_version() -> str:
    out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    return out.splitlines()[0].strip()


def source_version(tarball: Path = SOURCE_TARBALL) -> str:
    """Debian package version of linux-source-6.12, or the tarball's size/mtime."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE], capture_output=True, text=True, timeout=30
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{SOURCE_PACKAGE} {out.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    st = tarball.stat()
    return f"{tarball.name} size={st.st_size} mtime={int(st.st_mtime)}"


def cache_key(
    src_version: str,
    patches: Sequence[tuple[str, str]],
    fragment_sha: str,
    gcc: str,
    instrumentation: Sequence[tuple[str, str]] = (),
) -> str:
    """sha256 over everything that determines the outputs."""
    blob = json.dumps(
        {
            "builder": BUILDER_VERSION,
            "source": src_version,
            "patches": list(patches),
            "config": fragment_sha,
            "gcc": gcc,
            "instrumentation": [list(i) for i in instrumentation],
        },
        sort_keys=True,
    ).encode()
    return _sha256(blob)


# --------------------------------------------------------------------------
# kernel config fragment

_CONF_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_CONF_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Kconfig file -> {symbol: value}; ``is not set`` reads as ``n``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = _CONF_SET.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = _CONF_UNSET.match(line)
        if m:
            out[m.group(1)] = "n"
    return out


def config_mismatches(fragment: dict[str, str], final: dict[str, str]) -> list[str]:
    """Options of the fragment that did not end up as written."""
    bad = []
    for sym, want in fragment.items():
        got = final.get(sym, "n")
        if got != want:
            bad.append(f"{sym}={want} (got {'not set' if got == 'n' else got})")
    return bad


_KCONFIG_SYMBOL = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", re.MULTILINE)


def kconfig_symbols(tree: Path) -> set[str]:
    """Every ``CONFIG_`` symbol the tree's Kconfig files define (``config X`` / ``menuconfig X``)."""
    out: set[str] = set()
    for root, dirs, files in os.walk(tree):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.startswith("Kconfig"):
                with open(os.path.join(root, f), errors="replace") as fh:
                    out.update("CONFIG_" + m for m in _KCONFIG_SYMBOL.findall(fh.read()))
    return out


def classify_config(fragment: dict[str, str], final: dict[str, str], symbols: set[str]) -> dict[str, list[str]]:
    """The fragment's options that did not end up as written, split by why.

    ``absent``: the version's Kconfig has no such symbol (added or renamed
    in another version).  ``not_applied``: the symbol exists but olddefconfig
    did not keep the value (a dependency is off, or a select forces it).
    Neither is fatal: the build goes on, and build.json and the reports say.
    An ``is not set`` of a symbol the version lacks is listed as absent too.
    """
    absent, not_applied = [], []
    for sym, want in fragment.items():
        if sym not in symbols:
            absent.append(f"{sym}={want}")
            continue
        got = final.get(sym, "n")
        if got != want:
            not_applied.append(f"{sym}={want} (got {'not set' if got == 'n' else got})")
    return {"absent": absent, "not_applied": not_applied}


# --------------------------------------------------------------------------
# patch(1)

_PATCHING_FILE = re.compile(r"^(?:patching|checking) file '?([^'\n]+?)'?$")
_HUNK_FAILED = re.compile(r"^Hunk #(\d+) FAILED at (\d+)")
_MALFORMED = re.compile(r"malformed patch at line (\d+)")


def parse_patch_failure(output: str) -> tuple[str | None, str | None]:
    """(target file, hunk) of the first failure in patch(1) output."""
    target = None
    for line in output.splitlines():
        m = _PATCHING_FILE.match(line.strip())
        if m:
            target = m.group(1)
            continue
        m = _HUNK_FAILED.match(line.strip())
        if m:
            return target, f"#{m.group(1)} (at line {m.group(2)})"
        if "can't find file to patch" in line:
            return target, "file not found"
        if "Reversed (or previously applied) patch detected" in line:
            return target, "already applied (reversed patch detected)"
        m = _MALFORMED.search(line)
        if m:
            return target, f"malformed patch at line {m.group(1)}"
    return target, None


def patched_files(output: str) -> list[str]:
    return [m.group(1) for m in map(_PATCHING_FILE.match, (line.strip() for line in output.splitlines())) if m]


def apply_series(tree: Path, patches: Iterable[Path], warn: Log = _eprint) -> list[str]:
    """Apply each patch with ``patch -p1``; return the files they touched.

    Each patch is first tried with ``--dry-run``, so a failing patch leaves
    nothing half-applied; the caller still throws the tree away on error.
    """
    touched: list[str] = []
    for p in patches:
        base = [
            "patch",
            "-p1",
            "--forward",
            "--batch",
            "--no-backup-if-mismatch",
            "-r",
            "-",
            "-d",
            str(tree),
            "-i",
            str(Path(p).resolve()),
        ]
        dry = subprocess.run(base + ["--dry-run"], capture_output=True, text=True, timeout=TIMEOUT_PATCH)
        if dry.returncode != 0:
            out = dry.stdout + dry.stderr
            target, hunk = parse_patch_failure(out)
            raise PatchApplyError(Path(p).name, target, hunk, out)
        real = subprocess.run(base, capture_output=True, text=True, timeout=TIMEOUT_PATCH)
        if real.returncode != 0:
            out = real.stdout + real.stderr
            target, hunk = parse_patch_failure(out)
            raise PatchApplyError(Path(p).name, target, hunk, out)
        current = "?"
        for line in real.stdout.splitlines():
            m = _PATCHING_FILE.match(line.strip())
            if m:
                current = m.group(1)
            elif "with fuzz" in line:
                warn(f"[vm] warning: {Path(p).name}: {current}: {line.strip()}")
        touched += patched_files(real.stdout)
    return touched


# --------------------------------------------------------------------------
# running make with a progress line

_PROGRESS_RE = re.compile(
    r"^\s+(CC|AS|LD|AR|HOSTCC|HOSTLD|OBJCOPY|GEN|CHK|"
    r"UPD|VDSO|RELOCS|ZSTD|XZKERN|GZIP|MKPIGGY|"
    r"BUILD|SYSMAP|KSYMS|HDRINST|CPP|SYSTBL|SYSHDR|"
    r"WRAP|MKREQ|POLICY|AWK|SHIPPED|COPY|CALL|"
    r"DESCEND|INSTALL|MKDIR|SORTTAB|NM|HYPERCALLS)\s"
)


def _run_logged(
    cmd: Sequence[str],
    *,
    log_file,
    step: str,
    log_path: Path,
    timeout: float,
    env: dict | None = None,
    cwd: Path | None = None,
    estimate: int = 0,
    progress: bool = True,
) -> int:
    """Run cmd, append its output to log_file, show one progress line.

    Returns the number of kbuild progress lines ("  CC  mm/mprotect.o").
    Raises KernelBuildError on failure or timeout; kills the whole process
    group on timeout and on Ctrl-C.
    """
    log_file.write(f"\n$ {' '.join(cmd)}\n")
    log_file.flush()
    tty = sys.stderr.isatty()
    start = time.monotonic()
    tail: list[str] = []
    count = 0
    last_print = 0.0
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        # readline() blocks; the timeout is enforced between lines, and by
        # a watchdog timer for a make that goes silent.
        import threading

        timed_out = threading.Event()

        def _watchdog() -> None:
            timed_out.set()
            _kill_group(proc)

        timer = threading.Timer(timeout, _watchdog)
        timer.daemon = True
        timer.start()
        try:
            for line in proc.stdout:
                log_file.write(line)
                tail.append(line.rstrip("\n"))
                if len(tail) > 40:
                    del tail[:-40]
                if _PROGRESS_RE.match(line):
                    count += 1
                now = time.monotonic()
                if progress and now - last_print >= (0.5 if tty else 15):
                    last_print = now
                    _show_progress(step, count, estimate, now - start, tty)
            proc.wait()
        finally:
            timer.cancel()
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        log_file.flush()
    if progress and tty:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    if timed_out.is_set():
        tail.append(f"[vm] step '{step}' killed after {timeout:.0f} s")
        raise KernelBuildError(step, str(log_path), tail[-20:])
    if proc.returncode != 0:
        raise KernelBuildError(step, str(log_path), tail[-20:])
    return count


def _show_progress(step: str, count: int, estimate: int, elapsed: float, tty: bool) -> None:
    if estimate:
        pct = min(99, int(100 * count / estimate))
        msg = f"[vm] {step}: {count}/~{estimate} steps ({pct}%), {elapsed:.0f} s"
    else:
        msg = f"[vm] {step}: {count} steps, {elapsed:.0f} s"
    if tty:
        sys.stderr.write("\r\033[K" + msg)
    else:
        sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# --------------------------------------------------------------------------
# the build


class _BuildLock:
    """One kernel build at a time on this machine (flock on a file)."""

    def __init__(self, path: Path, log: Log, timeout: float = 3600):
        self.path, self.log, self.timeout = path, log, timeout
        self.fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        deadline = time.monotonic() + self.timeout
        waited = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if not waited:
                    self.log(f"[vm] another kernel build holds {self.path}; waiting")
                    waited = True
                if time.monotonic() > deadline:
                    raise VmError(f"timed out waiting for {self.path}") from None
                time.sleep(1)

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


def ensure_pristine(log: Log = _eprint, *, locked: bool = False) -> Path:
    """Unpack the tarball once into build/cache/src/ and return the tree.

    Unpacking replaces the tree, so it happens under the build lock
    (``locked=True`` when the caller already holds it).
    """
    src_root = BUILD_DIR / "cache" / "src"
    tree = src_root / SOURCE_DIRNAME
    stamp = tree / ".uffd-harness-pristine"
    want = source_version()
    if stamp.exists() and stamp.read_text() == want:
        return tree
    if not locked:
        with _BuildLock(BUILD_DIR / "cache" / "build.lock", log):
            return ensure_pristine(log, locked=True)
    return sources.untar_once(SOURCE_TARBALL, SOURCE_DIRNAME, src_root, want, log)


def _tree_version(tree: Path) -> str:
    v = {}
    with open(tree / "Makefile") as f:
        for line in f:
            m = re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(.*)$", line)
            if m:
                v[m.group(1)] = m.group(2).strip()
            if len(v) == 4:
                break
    return f"{v.get('VERSION')}.{v.get('PATCHLEVEL')}.{v.get('SUBLEVEL')}{v.get('EXTRAVERSION', '')}"


def _prepare_source(
    pristine: Path,
    kdir: Path,
    patches: list[Path],
    patch_key: str,
    log: Log,
    seed: Path | None = None,
    instrumentation: Sequence[Path] = (),
) -> Path:
    """build/kernels/<name>/src = hard-linked pristine + the series.

    Reused as is when the series is unchanged.  When it changed, every file
    that either series touched gets a private copy; it keeps the old tree's
    mtime where its content is unchanged, and gets a new one where it
    changed, so that make rebuilds exactly what changed -- including files
    that revert to pristine content (a hard link would carry the pristine,
    older, mtime and make would miss them).

    ``seed`` (a sibling kernel's directory, when this kernel has no tree
    yet and its objects are seeded from the sibling's): the sibling's tree
    and series play the part of the old tree.

    ``instrumentation`` (vm/instrumentation) is applied after the series.
    Where it does not apply (another base tree, or a series that changes
    the same lines) the tree is made again with the series alone, and
    src-state.json says why (:func:`instrumentation_state`): the kernel
    still builds, without the PTE channel.  ``patch_key`` must cover it.
    """
    src = kdir / "src"
    state_file = kdir / "src-state.json"
    old_state = {}
    if state_file.exists():
        try:
            old_state = json.loads(state_file.read_text())
        except ValueError:
            old_state = {}
        if not isinstance(old_state, dict):
            old_state = {}  # corrupt: treated as no previous tree, so every file is re-linked
    if src.is_dir() and old_state.get("patch_key") == patch_key:
        return src
    ref = src
    if seed is not None and not src.is_dir():
        ref = seed / "src"
        old_state = json.loads((seed / "src-state.json").read_text())

    tmp = kdir / "src.new"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.monotonic()
    subprocess.run(["cp", "-al", str(pristine), str(tmp)], check=True, timeout=TIMEOUT_UNPACK)
    (tmp / ".uffd-harness-pristine").unlink(missing_ok=True)
    instrumented: dict = {"applied": False, "reason": "no instrumentation series given"}
    try:
        touched = apply_series(tmp, patches, warn=log) if patches else []
        if instrumentation:
            try:
                touched += apply_series(tmp, instrumentation, warn=log)
                instrumented = {"applied": True, "reason": None}
            except PatchApplyError as exc:
                # patch(1) may have applied earlier patches of the
                # instrumentation: start again from pristine, series only.
                first_line = str(exc).splitlines()[0]
                instrumented = {
                    "applied": False,
                    "reason": f"vm/instrumentation does not apply after this series: {first_line}",
                }
                log(f"[vm] warning: {instrumented['reason']}; building without the PTE channel")
                shutil.rmtree(tmp)
                subprocess.run(["cp", "-al", str(pristine), str(tmp)], check=True, timeout=TIMEOUT_UNPACK)
                (tmp / ".uffd-harness-pristine").unlink(missing_ok=True)
                touched = apply_series(tmp, patches, warn=log) if patches else []
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for rel in sorted(set(touched) | set(old_state.get("touched", []))):
        f = tmp / rel
        if not f.is_file():
            continue
        if os.stat(f).st_nlink > 1:  # private copy: utime below
            data = f.read_bytes()  # must not touch pristine
            mode = f.stat().st_mode
            f.unlink()
            f.write_bytes(data)
            os.chmod(f, mode)
        old = ref / rel
        if old.is_file() and old.read_bytes() == f.read_bytes():
            # Same content as in the tree the objects were built from: keep
            # its mtime, so that e.g. an unchanged include/linux/mm.h does
            # not rebuild the whole kernel.
            st = old.stat()
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            os.utime(f)
    state_file.unlink(missing_ok=True)
    shutil.rmtree(src, ignore_errors=True)
    os.rename(tmp, src)
    state_file.write_text(
        json.dumps({"patch_key": patch_key, "touched": sorted(set(touched)), "instrumentation": instrumented})
    )
    with_instr = " + vm/instrumentation" if instrumented["applied"] else ""
    log(
        f"[vm] source tree ready ({len(patches)} patches{with_instr}, "
        f"{len(set(touched))} files changed) in {time.monotonic() - t0:.1f} s"
    )
    return src


def instrumentation_state(kdir: Path) -> dict:
    """{"applied": bool, "reason": why not or None} for kernel directory ``kdir``'s tree."""
    try:
        state = json.loads((kdir / "src-state.json").read_text())
    except (OSError, ValueError):
        return {"applied": False, "reason": f"{kdir / 'src-state.json'} is missing: the tree was never prepared"}
    return state.get("instrumentation") or {
        "applied": False,
        "reason": "the tree was prepared by a builder without vm/instrumentation",
    }


def pte_channel_status(instrumented: dict, obj: Path) -> dict:
    """Whether the guest will have the PTE channel (build.json's "pte_channel")."""
    if not instrumented.get("applied"):
        return {"available": False, "debugfs": PTE_DEBUGFS, "reason": instrumented.get("reason")}
    if parse_config((obj / ".config").read_text()).get("CONFIG_DEBUG_FS") != "y":
        return {
            "available": False,
            "debugfs": PTE_DEBUGFS,
            "reason": "CONFIG_DEBUG_FS is not set in the final .config: the instrumentation is not built",
        }
    if not (obj / PTE_OBJECT).exists():
        return {
            "available": False,
            "debugfs": PTE_DEBUGFS,
            "reason": f"{PTE_OBJECT} was not built although vm/instrumentation applied",
        }
    return {"available": True, "debugfs": PTE_DEBUGFS, "reason": None}


def build_kernel(
    name: str,
    patches_dir: str | os.PathLike | None = None,
    jobs: int | None = None,
    *,
    fragment: str | os.PathLike | None = None,
    log: Log = _eprint,
    progress: bool = True,
    install: bool | None = None,
    seed_from: str | None = "auto",
    source: "str | os.PathLike | sources.Source | None" = None,
) -> KernelBuild:
    """Build (or reuse) kernel ``name`` and return where its pieces are.

    ``name`` "patched" defaults to the series in vm/patches, "stock" builds
    the same tree with no patches; any other name needs ``patches_dir``.

    ``seed_from`` (e.g. "patched"): on the first build of ``name`` (no
    ``O=`` directory yet), copy that built sibling's ``O=`` directory
    (``cp -a --reflink=auto``, never hard links: make rewrites objects in
    place) and rewrite its absolute paths, so that make rebuilds only what
    the two series do differently.  Ignored, with a message, when the
    sibling is not built or was built from another config fragment,
    compiler or source version.  The outputs are the same as a cold build's.
    The default, "auto", seeds from the built kernel whose applied tree
    differs least from this one (:func:`closest_seed`: fewest differing
    files, headers weighing most), earlier ``candidate-*`` builds included,
    so only the first kernel on a machine is a cold build; None never seeds.
    A new ``candidate-*`` build prunes older ones (:func:`prune_candidates`).

    ``source`` (harness.vm.sources): None or "6.12" is Debian's
    linux-source-6.12 (names and cache keys as before); "6.1", the path of
    an unpacked tree, or a :class:`sources.Source` (a git commit) build
    another tree.  On a Debian base other than 6.12 the defaults are named
    ``stock-<version>`` and ``patched-<version>`` (vm/patches-<version>).
    """
    src_origin = sources.resolve(source)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise BadInput(f"kernel name {name!r}: use letters, digits, '.', '_', '-'")
    stock_name, patched_name = src_origin.kernel_name("stock"), src_origin.kernel_name("patched")
    if patches_dir is None:
        if name == patched_name and src_origin.default_series is not None:
            patches_dir = src_origin.default_series
        elif name != stock_name:
            raise BadInput(
                f"kernel {name!r} needs --patches DIR (only '{patched_name}' and '{stock_name}' have defaults)"
            )
    if name == stock_name and patches_dir is not None:
        raise BadInput("kernel 'stock' is the unpatched control; give a patched build another name")
    fragment_path = Path(fragment) if fragment else DEFAULT_FRAGMENT
    jobs = jobs or os.cpu_count() or 1

    # bad input first: before any package is installed or anything is unpacked
    patches = read_series(Path(patches_dir)) if patches_dir is not None else []
    if patches_dir is not None and not patches:
        raise SeriesError(f"{patches_dir}: no series file and no *.patch")

    check_host(src_origin.requirements, install=install, log=log)
    patch_hashes = [(p.name, _sha256(p.read_bytes())) for p in patches]
    instrumentation = read_series(INSTRUMENTATION_DIR)
    instr_hashes = [(p.name, _sha256(p.read_bytes())) for p in instrumentation]
    fragment_text = fragment_path.read_text()
    if fragment is None and src_origin.config_addendum is not None:
        # the same guest on another base: its Kconfig's own needs, merged after the fragment
        fragment_text += f"\n# --- {src_origin.config_addendum.name}\n" + src_origin.config_addendum.read_text()
    gcc = gcc_version()
    src_version = src_origin.identity
    key = cache_key(src_version, patch_hashes, _sha256(fragment_text.encode()), gcc, instrumentation=instr_hashes)

    kdir = BUILD_DIR / "kernels" / name
    result = KernelBuild(
        name=name,
        path=kdir / "bzImage",
        key=key,
        uapi_header=kdir / "uapi" / "linux" / "userfaultfd.h",
        patched=bool(patches),
        directory=kdir,
        selftests_dir=kdir / "selftests",
    )

    if _is_current(result):
        return dataclasses.replace(result, cached=True)

    with _BuildLock(BUILD_DIR / "cache" / "build.lock", log):
        if _is_current(result):  # built while we waited for the lock
            return dataclasses.replace(result, cached=True)
        built = _build_locked(
            result,
            patches,
            patch_hashes,
            fragment_path,
            fragment_text,
            gcc,
            src_version,
            jobs,
            log,
            progress,
            seed_from,
            instrumentation,
            instr_hashes,
            src_origin=src_origin,
        )
        if name.startswith(CANDIDATE_PREFIX):
            prune_candidates(kdir.parent, keep_name=name, log=log)
        return built


def _is_current(kb: KernelBuild) -> bool:
    info_path = kb.directory / "build.json"
    if not (info_path.exists() and kb.path.exists() and kb.uapi_header.exists()):
        return False
    from harness.vm.documents import load_build_info

    try:
        info = load_build_info(info_path)
    except ValueError:  # DocumentError: a corrupt build.json is rebuilt over
        return False
    # the selftests this tree had when it was built (6.1 has other ones than 6.12)
    return info.get("key") == kb.key and all(Path(p).exists() for p in (info.get("selftests") or {}).values())


def _build_locked(
    kb: KernelBuild,
    patches: list[Path],
    patch_hashes: list[tuple[str, str]],
    fragment_path: Path,
    fragment_text: str,
    gcc: str,
    src_version: str,
    jobs: int,
    log: Log,
    progress: bool,
    seed_from: str | None = None,
    instrumentation: Sequence[Path] = (),
    instr_hashes: Sequence[tuple[str, str]] = (),
    src_origin: "sources.Source | None" = None,
) -> KernelBuild:
    t_start = time.monotonic()
    kdir = kb.directory
    kdir.mkdir(parents=True, exist_ok=True)
    prev_steps = _previous_steps(kdir)
    src_origin = src_origin or sources.resolve(None)
    pristine = src_origin.ensure(log, BUILD_DIR / "cache")
    # unpacking the tarball (first build from this cache only) is part of total_seconds
    source_secs = time.monotonic() - t_start
    patch_key = _sha256(json.dumps([patch_hashes, instr_hashes]).encode())
    seed = _seed_source(
        kb,
        seed_from,
        fragment_text,
        gcc,
        src_version,
        log,
        patches=patches,
        pristine=pristine,
        instrumentation=instrumentation,
    )
    # a seeded build compiles only what the series changes, a fraction of a full build's steps, so a
    # full build's count would stop the percentage near 25%: count steps without one
    estimate = 0 if seed is not None else prev_steps
    # A series that does not apply fails here and leaves the previous
    # build (tree, objects, build.json) as it was.
    try:
        src = _prepare_source(pristine, kdir, patches, patch_key, log, seed, instrumentation=instrumentation)
    except BaseException:
        if not any(kdir.iterdir()):
            kdir.rmdir()
        raise
    # build.json goes last: while it is missing the cache is "not built".
    (kdir / "build.json").unlink(missing_ok=True)

    obj = kdir / "obj"
    if seed is not None:
        _seed_objects(seed, kdir, log)
    obj.mkdir(exist_ok=True)
    log_path = kdir / "build.log"
    env = {**os.environ, "LC_ALL": "C", "KBUILD_BUILD_USER": "uffd-harness", "KBUILD_BUILD_HOST": "uffd-harness"}
    make = ["make", "-C", str(src), f"O={obj}"]

    with open(log_path, "w", buffering=1) as lf:  # line-buffered: tail -f works
        lf.write(f"# uffd-harness kernel build '{kb.name}' key {kb.key}\n")
        # -- config: regenerate, keep the old file (and mtime) if unchanged
        cfg = obj / ".config"
        old_cfg = cfg.read_bytes() if cfg.exists() else None
        old_stat = cfg.stat() if cfg.exists() else None
        frag_copy = obj / "uffd-harness.config"
        frag_copy.write_text(fragment_text)
        if seed is not None and _config_inputs_alike(seed, kdir):
            # the seed was configured from the same fragment, compiler and source, and no Kconfig file
            # differs between the two trees: its .config (copied with obj/) is this tree's
            log(f"[vm] {kb.name}: configuration as '{seed.name}' (no Kconfig file differs)")
        else:
            log(f"[vm] {kb.name}: configuring (tinyconfig + {fragment_path.name})")
            # -j: the config tools are compiled first, and these steps are serial otherwise
            _run_logged(
                make + [f"-j{jobs}", "tinyconfig"],
                log_file=lf,
                step="tinyconfig",
                log_path=log_path,
                timeout=TIMEOUT_CONFIG,
                env=env,
                progress=False,
            )
            _run_logged(
                [str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(obj), str(cfg), str(frag_copy)],
                log_file=lf,
                step="merge_config",
                log_path=log_path,
                timeout=TIMEOUT_CONFIG,
                env=env,
                cwd=src,
                progress=False,
            )
            _run_logged(
                make + [f"-j{jobs}", "olddefconfig"],
                log_file=lf,
                step="olddefconfig",
                log_path=log_path,
                timeout=TIMEOUT_CONFIG,
                env=env,
                progress=False,
            )
        if old_cfg is not None and old_stat is not None and cfg.read_bytes() == old_cfg:
            os.utime(cfg, ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))
        final_cfg = parse_config(cfg.read_text())
        missing = config_mismatches(parse_config(fragment_text), final_cfg)
        config_report = classify_config(parse_config(fragment_text), final_cfg, kconfig_symbols(src))
        if missing:
            log(
                f"[vm] {kb.name}: {len(missing)} option(s) of {fragment_path.name} "
                f"did not end up as written ({_tree_version(src)}):"
            )
            for m in config_report["absent"]:
                log(f"[vm]   {m}: this version's Kconfig has no such symbol")
            for m in config_report["not_applied"]:
                log(f"[vm]   {m}: set, but did not stick (a dependency is missing)")

        # -- kernel, and the uapi headers the selftests build against (in the
        # same make, so that they fill the gaps of the kernel's serial steps)
        t_kernel = time.monotonic()
        log(f"[vm] {kb.name}: building bzImage with -j{jobs}; log {log_path}")
        steps = _run_logged(
            make + [f"-j{jobs}", "bzImage", "headers"],
            log_file=lf,
            step=f"{kb.name} bzImage",
            log_path=log_path,
            timeout=TIMEOUT_KERNEL,
            env=env,
            estimate=estimate,
            progress=progress,
        )
        kernel_secs = time.monotonic() - t_kernel

        # -- the selftests, against this tree's uapi headers
        st_dir = kb.selftests_dir
        st_dir.mkdir(parents=True, exist_ok=True)
        # the tree's own: tools/testing/selftests/mm (vm before 6.3), the ones it has
        mm, tree_selftests = selftests_of_tree(src)
        log(f"[vm] {kb.name}: building selftests {', '.join(tree_selftests)} from {mm.relative_to(src)}")
        _run_logged(
            ["make", "-C", str(mm), f"-j{jobs}", f"OUTPUT={st_dir}", f"KHDR_INCLUDES=-isystem {obj}/usr/include"]
            + [str(st_dir / t) for t in tree_selftests],
            log_file=lf,
            step="selftests",
            log_path=log_path,
            timeout=TIMEOUT_SELFTESTS,
            env=env,
            progress=False,
        )

    instrumented = instrumentation_state(kdir)
    shutil.copy2(obj / "arch/x86/boot/bzImage", kb.path)
    kb.uapi_header.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "include/uapi/linux/userfaultfd.h", kb.uapi_header)
    info = {
        "name": kb.name,
        "key": kb.key,
        "source_version": src_version,
        "source": src_origin.describe(),
        "kernel_version": _tree_version(src),
        "patched": kb.patched,
        "patches": [{"file": n, "sha256": h} for n, h in patch_hashes],
        "patches_dir": str(patches[0].parent) if patches else None,
        # vm/instrumentation: applied after the series, not part of it
        "instrumentation": [{"file": n, "sha256": h} for n, h in instr_hashes],
        "instrumentation_dir": str(INSTRUMENTATION_DIR),
        "instrumentation_applied": bool(instrumented.get("applied")),
        "pte_channel": pte_channel_status(instrumented, obj),
        "config_fragment": str(fragment_path),
        "config_fragment_sha256": _sha256(fragment_text.encode()),
        "config_missing": missing,
        "config_absent": config_report["absent"],
        "config_not_applied": config_report["not_applied"],
        "gcc": gcc,
        "jobs": jobs,
        "kbuild_steps": steps if steps > prev_steps // 2 else prev_steps,
        "bzImage": str(kb.path),
        "uapi_header": str(kb.uapi_header),
        "selftests": {t: str(st_dir / t) for t in tree_selftests},
        "selftests_dir_in_tree": str(mm.relative_to(src)),
        "source_unpack_seconds": round(source_secs, 1),
        "kernel_build_seconds": round(kernel_secs, 1),
        "total_seconds": round(time.monotonic() - t_start, 1),
        "seeded_from": seed.name if seed is not None else None,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = kdir / "build.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, kdir / "build.json")
    log(f"[vm] {kb.name}: done in {info['total_seconds']:.0f} s -> {kb.path}")
    return kb


def _seed_source(
    kb: KernelBuild,
    seed_from: str | None,
    fragment_text: str,
    gcc: str,
    src_version: str,
    log: Log,
    *,
    patches: Sequence[Path] = (),
    pristine: Path | None = None,
    instrumentation: Sequence[Path] = (),
) -> Path | None:
    """The sibling kernel directory to seed ``kb``'s first build from, or None.

    ``seed_from`` "auto": the closest built sibling (:func:`closest_seed`),
    comparing trees as they will be built: the series, then ``instrumentation``.
    """
    if not seed_from or seed_from == kb.name:
        return None
    if (kb.directory / "obj").exists():
        return None  # not the first build: incremental anyway
    if seed_from == "auto":
        return _closest_sibling(kb, patches, instrumentation, pristine, fragment_text, gcc, src_version, log)
    seed = kb.directory.parent / seed_from
    from harness.vm.documents import load_build_info

    try:
        load_build_info(seed / "build.json")
        if not isinstance(json.loads((seed / "src-state.json").read_text()), dict):
            raise ValueError("src-state.json is not an object")
    except (OSError, ValueError):
        log(f"[vm] {kb.name}: not seeding from '{seed_from}': it is not built")
        return None
    why = _seed_unfit(seed, fragment_text, gcc, src_version)
    if why:
        log(f"[vm] {kb.name}: not seeding from '{seed_from}': {why}; cold build")
        return None
    return seed


def _build_info(kdir: Path) -> dict:
    """``kdir/build.json`` through its schema (:func:`harness.vm.documents.load_build_info`): a DocumentError
    (a ValueError) for one that is absent, damaged or of another shape."""
    from harness.vm.documents import load_build_info

    return load_build_info(kdir / "build.json")


def _seed_unfit(seed: Path, fragment_text: str, gcc: str, src_version: str) -> str | None:
    """Why the built kernel in ``seed`` cannot seed a build with these inputs, or None if it can."""
    try:
        info = _build_info(seed)
        json.loads((seed / "src-state.json").read_text())
    except (OSError, ValueError):  # DocumentError included
        return "it is not built"
    if not ((seed / "obj").is_dir() and (seed / "src").is_dir()):
        return "its src/ or obj/ is missing"
    if info.get("config_fragment_sha256") != _sha256(fragment_text.encode()):
        return "it was built from another config fragment"
    if info.get("gcc") != gcc:
        return f"it was built with {info.get('gcc')}"
    if info.get("source_version") != src_version:
        return f"it was built from {info.get('source_version')}"
    return None


# --------------------------------------------------------------------------
# the closest seed, and pruning old candidates

#: a differing header counts as this many differing files when choosing a
#: seed: a header is included by many objects, a .c file makes one
HEADER_WEIGHT = 10
#: the builds ``validate --patches`` makes (run.candidate_name)
CANDIDATE_PREFIX = "candidate"
#: candidate builds kept by default, the newest included
DEFAULT_KEEP_CANDIDATES = 3

_PATCH_TARGET = re.compile(r"^(?:---|\+\+\+) (\S+)")


@dataclasses.dataclass(frozen=True)
class SeedChoice:
    """How a built sibling's applied tree differs from the tree about to be built."""

    name: str
    directory: Path
    differing: tuple[str, ...]  #: relative paths whose contents differ
    #: lines added or removed across the differing files: among siblings that
    #: differ in the same files (a one-line edit of the series against the
    #: series itself and against a mutant of it), the one nearer in content
    changed_lines: int = 0

    @property
    def weight(self) -> int:
        return sum(HEADER_WEIGHT if f.endswith(".h") else 1 for f in self.differing)


def series_targets(patches: Iterable[Path]) -> list[str]:
    """The files a series names (``-p1``: the first path component dropped), in order, once each."""
    seen: dict[str, None] = {}
    for p in patches:
        for line in Path(p).read_text(errors="replace").splitlines():
            m = _PATCH_TARGET.match(line)
            if m and m.group(1) != "/dev/null" and "/" in m.group(1):
                seen.setdefault(m.group(1).split("/", 1)[1], None)
    return list(seen)


def series_contents(pristine: Path, patches: Sequence[Path], scratch: Path) -> dict[str, bytes | None]:
    """What the series makes of each file it touches (None: removed), applied to copies in ``scratch``.

    Only the files the series names are copied, so this takes a fraction of
    a second instead of a whole tree's copy.  Raises PatchApplyError as
    :func:`apply_series` does.
    """
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        for rel in series_targets(patches):
            f = pristine / rel
            if f.is_file():
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, scratch / rel)
        touched = apply_series(scratch, patches, warn=lambda msg: None) if patches else []
        return {
            rel: (scratch / rel).read_bytes() if (scratch / rel).is_file() else None for rel in sorted(set(touched))
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _changed_lines(a: bytes | None, b: bytes | None) -> int:
    """Lines added plus lines removed turning ``a`` into ``b`` (None: no file)."""
    diff = difflib.unified_diff(
        (a or b"").decode(errors="replace").splitlines(),
        (b or b"").decode(errors="replace").splitlines(),
        n=0,
        lineterm="",
    )
    return sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))


def tree_difference(new: dict[str, bytes | None], sibling: Path, pristine: Path) -> tuple[tuple[str, ...], int]:
    """The files whose contents differ between the new tree and a built sibling's ``src/``, and the changed lines.

    Both trees are the pristine tree plus their own series: only files that
    either series touched (``new``'s keys; the sibling's src-state.json
    ``touched``) can differ, and for those the contents are compared.
    """
    state = json.loads((sibling / "src-state.json").read_text())
    differing = []
    lines = 0
    for rel in sorted(set(new) | set(state.get("touched", []))):
        mine = new[rel] if rel in new else _read_or_none(pristine / rel)
        theirs = _read_or_none(sibling / "src" / rel)
        if mine != theirs:
            differing.append(rel)
            lines += _changed_lines(theirs, mine)
    return tuple(differing), lines


def closest_seed(
    new: dict[str, bytes | None], siblings: dict[str, Path], pristine: Path
) -> tuple[SeedChoice | None, list[SeedChoice]]:
    """The sibling whose tree differs least from ``new`` (weight, files, lines, then newest), and all of them."""
    choices = [SeedChoice(name, d, *tree_difference(new, d, pristine)) for name, d in sorted(siblings.items())]

    def built_at(c: SeedChoice) -> str:
        try:
            return _build_info(c.directory).get("built_at", "")
        except ValueError:  # DocumentError: a damaged build.json sorts as the oldest
            return ""

    newest_first = sorted(choices, key=built_at, reverse=True)
    ranked = sorted(newest_first, key=lambda c: (c.weight, len(c.differing), c.changed_lines))
    return (ranked[0] if ranked else None), ranked


def _closest_sibling(
    kb: KernelBuild,
    patches: Sequence[Path],
    instrumentation: Sequence[Path],
    pristine: Path | None,
    fragment_text: str,
    gcc: str,
    src_version: str,
    log: Log,
) -> Path | None:
    """The "auto" seed: the closest fit built sibling, said in one progress line."""
    kernels = kb.directory.parent
    siblings = (
        {
            d.name: d
            for d in sorted(kernels.iterdir())
            if d.is_dir() and d.name != kb.name and not _seed_unfit(d, fragment_text, gcc, src_version)
        }
        if kernels.is_dir()
        else {}
    )
    if not siblings or pristine is None:
        return None
    scratch = kb.directory / "seed-scratch"
    try:
        try:
            # the siblings' trees carry vm/instrumentation too: leaving it out
            # would count its files as differing from every one of them
            new = series_contents(pristine, [*patches, *instrumentation], scratch)
        except PatchApplyError:
            if not instrumentation:
                raise
            # _prepare_source builds such a series without the instrumentation
            new = series_contents(pristine, patches, scratch)
    except (VmError, OSError) as exc:
        # the real apply reports a series that does not apply; seed from the control meanwhile
        fallback = next((n for n in ("stock", "patched") if n in siblings), None)
        log(
            f"[vm] {kb.name}: could not compare trees ({str(exc).splitlines()[0]}); "
            + (f"seeding from '{fallback}'" if fallback else "cold build")
        )
        return siblings[fallback] if fallback else None
    best, ranked = closest_seed(new, siblings, pristine)
    if best is None:
        return None
    others = ", ".join(f"{c.name} {len(c.differing)}" for c in ranked[1:4])
    log(
        f"[vm] {kb.name}: seeding from '{best.name}', the closest of {len(ranked)} built kernel(s): "
        f"{len(best.differing)} file(s) differ"
        + (f" ({', '.join(best.differing[:3])}{', ...' if len(best.differing) > 3 else ''})" if best.differing else "")
        + (f"; files differing from the next: {others}" if others else "")
    )
    return best.directory


def _disk_bytes(d: Path) -> int:
    """Bytes of ``d``'s files not hard-linked elsewhere (its src/ is mostly links to the pristine tree)."""
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            if st.st_nlink == 1:
                total += st.st_blocks * 512
    return total


def _keep_limits() -> tuple[int, int | None]:
    """(candidate builds to keep, MB they may take, or None) from the environment."""
    keep = int(os.environ.get(ENV_KEEP_CANDIDATES) or DEFAULT_KEEP_CANDIDATES)
    max_mb = os.environ.get(ENV_CANDIDATES_MAX_MB)
    return max(1, keep), (int(max_mb) if max_mb else None)


def prune_candidates(
    kernels: Path,
    *,
    keep_name: str | None = None,
    keep: int | None = None,
    max_mb: int | None = None,
    log: Log = _eprint,
) -> list[str]:
    """Remove old ``candidate-*`` builds beyond ``keep`` builds or ``max_mb`` MB; returns the names removed.

    Defaults from ``$UFFD_HARNESS_KEEP_CANDIDATES`` (3) and
    ``$UFFD_HARNESS_CANDIDATES_MAX_MB`` (no size limit).  Oldest first by
    build time; never the newest, never ``keep_name`` (the build just made),
    never any kernel not named ``candidate*`` (stock, patched, the tests').
    """
    env_keep, env_max = _keep_limits()
    keep = max(1, keep if keep is not None else env_keep)
    max_mb = max_mb if max_mb is not None else env_max

    def built_at(d: Path) -> str:
        try:
            return _build_info(d).get("built_at", "")
        except ValueError:  # DocumentError: a damaged build.json sorts as the oldest
            return ""

    candidates = (
        sorted(
            (d for d in kernels.iterdir() if d.is_dir() and d.name.startswith(CANDIDATE_PREFIX)),
            key=lambda d: (built_at(d), d.stat().st_mtime),
            reverse=True,
        )
        if kernels.is_dir()
        else []
    )
    protected = {c.name for c in candidates[:1]} | ({keep_name} if keep_name else set())
    doomed = [c for c in candidates[keep:] if c.name not in protected]
    if max_mb is not None:
        kept = [c for c in candidates if c not in doomed]
        sizes = {c: _disk_bytes(c) for c in kept}
        total = sum(sizes.values())
        for c in reversed(kept):  # oldest first
            if total <= max_mb * 2**20:
                break
            if c.name in protected:
                continue
            doomed.append(c)
            total -= sizes[c]
    for c in doomed:
        when = built_at(c)  # before it goes with the rest of the directory
        shutil.rmtree(c, ignore_errors=True)
        log(
            f"[vm] removed the old build '{c.name}' (built {when or 'at an unknown time'}): "
            f"keeping the newest {keep} candidate build(s)"
            + (f" within {max_mb} MB" if max_mb is not None else "")
            + f" (${ENV_KEEP_CANDIDATES}, ${ENV_CANDIDATES_MAX_MB})"
        )
    return [c.name for c in doomed]


def _is_config_input(rel: str) -> bool:
    """A file that configuring reads besides the fragment and the compiler: a Kconfig file, a fragment
    tinyconfig merges (``*.config``), the kconfig tools, the top Makefile (the version)."""
    name = rel.rsplit("/", 1)[-1]
    return (
        name.startswith("Kconfig")
        or name.endswith(".config")
        or rel.startswith("scripts/kconfig/")
        or rel == "Makefile"
    )


def _config_inputs_alike(seed: Path, kdir: Path) -> bool:
    """Whether the seed's configuration is this tree's: its obj/.config was copied, and no file that
    configuring reads differs between the two trees (both are the pristine tree plus the files their
    own series touched; :func:`_seed_unfit` has made sure of the fragment, compiler and source)."""
    if not (kdir / "obj" / ".config").is_file():
        return False
    touched: set[str] = set()
    for tree in (seed, kdir):
        try:
            touched.update(json.loads((tree / "src-state.json").read_text()).get("touched", []))
        except (OSError, ValueError, AttributeError):
            return False
    return all(
        _read_or_none(seed / "src" / rel) == _read_or_none(kdir / "src" / rel)
        for rel in touched
        if _is_config_input(rel)
    )


def _seed_objects(seed: Path, kdir: Path, log: Log) -> None:
    """kdir/obj = a copy of seed/obj with seed's absolute paths made kdir's.

    kbuild records the absolute source path in every ``.cmd`` file (the
    command line it compares, and the dependency list); text files get the
    path rewritten with their mtime kept, symlinks are re-pointed, binary
    files (objects with debug strings) are left as they are.
    """
    t0 = time.monotonic()
    tmp = kdir / "obj.seeding"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        subprocess.run(["cp", "-a", "--reflink=auto", str(seed / "obj"), str(tmp)], check=True, timeout=TIMEOUT_UNPACK)
        old = (str(seed.resolve()) + "/").encode()
        new = (str(kdir.resolve()) + "/").encode()
        rewritten = 0
        for root, dirs, files in os.walk(tmp):  # symlinks to dirs are in dirs
            for fname in dirs + files:
                f = os.path.join(root, fname)
                if os.path.islink(f):
                    target = os.readlink(f).encode()
                    if old in target:
                        os.unlink(f)
                        os.symlink(target.replace(old, new), f)
                    continue
                if not os.path.isfile(f):
                    continue
                with open(f, "rb") as fh:
                    data = fh.read()
                if old not in data or b"\0" in data:
                    continue
                st = os.stat(f)
                with open(f, "wb") as fh:
                    fh.write(data.replace(old, new))
                os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
                rewritten += 1
        os.rename(tmp, kdir / "obj")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(
        f"[vm] {kdir.name}: O= directory seeded from '{seed.name}' "
        f"({rewritten} files re-pathed) in {time.monotonic() - t0:.1f} s"
    )


def _previous_steps(kdir: Path) -> int:
    """Progress-line count of the last full build (for the % estimate):
    this kernel's, else the largest of the other kernels' (same fragment,
    about the same count)."""

    def steps(p: Path) -> int:
        try:
            return int(_build_info(p.parent).get("kbuild_steps", 0))
        except (ValueError, OverflowError):  # DocumentError (absent or damaged), a NaN or infinite count
            return 0

    own = steps(kdir / "build.json")
    if own:
        return own
    return max((steps(p) for p in kdir.parent.glob("*/build.json")), default=0)


def load_kernel(name: str) -> KernelBuild:
    """The kernel ``name`` as last built, without building anything."""
    kdir = BUILD_DIR / "kernels" / name
    info_path = kdir / "build.json"
    if not info_path.exists() or not (kdir / "bzImage").exists():
        from harness.vm.errors import KernelNotBuilt

        raise KernelNotBuilt(
            f"kernel '{name}' is not built ({kdir / 'bzImage'} missing): "
            f"run `python -m harness.vm build --kernel {name}` "
            f"or `make kernel KERNEL={name}`"
        )
    from harness.errors import DocumentError
    from harness.vm.documents import load_build_info

    try:
        info = load_build_info(info_path)
    except DocumentError as exc:
        from harness.vm.errors import KernelNotBuilt

        raise KernelNotBuilt(f"kernel '{name}': {exc}; rebuild it: `uffd-harness vm build --kernel {name}`") from None
    return KernelBuild(
        name=name,
        path=kdir / "bzImage",
        key=info["key"],
        uapi_header=kdir / "uapi/linux/userfaultfd.h",
        patched=bool(info.get("patched")),
        directory=kdir,
        selftests_dir=kdir / "selftests",
        cached=True,
    )
