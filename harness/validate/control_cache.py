"""The control kernel's guest results, kept and given again while nothing that made them has changed.

A developer iterating on a series runs ``validate --patches DIR`` again and
again; the control (``stock``) and the suite that ran in it stay the same, so
booting it again only takes cores from the candidate.  Its guest results
(everything the guest wrote: summary.json, steps.json, bench.json, the
selftest logs, junit.xml, console.log) are kept under
``build/control-results/<key>/`` with ``meta.json``, keyed by everything
that could change them:

- the kernel's build key (build.json ``key``: source, series, config
  fragment, compiler, builder version);
- a hash of the harness code and tests that ran in the guest: the contents
  of ``harness/``, ``tests/`` and ``cbits/`` (bytecode and the compiled
  extension left out: they follow from these), and the Python version;
- ``--quick``;
- the guest's settings: memory, cores, the time limits of the guest and its
  steps, and the ``UFFD_*`` and ``CI`` environment variables it inherits.

Any change gives another key, so stale results are never reused; only
results of a guest run that had no problem (every step exited 0, nothing
timed out) are stored.  ``--fresh-control`` runs the control again and
replaces what was stored.  The newest :data:`KEEP` entries are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness import paths
from harness.validate.outcome import KernelOutcome

#: what the guest ran: every file under these, by content
CODE_DIRS = ("harness", "tests", "cbits")
#: entries kept (newest first); a few MB each
KEEP = 4
SCHEMA = "uffd-harness/control-results/1"
META = "meta.json"


def cache_dir() -> Path:
    return paths.BUILD_DIR / "control-results"


def code_hash(root: Path = paths.REPO_ROOT) -> str:
    """sha256 of the relative path and contents of every file under :data:`CODE_DIRS`."""
    digest = hashlib.sha256()
    for d in CODE_DIRS:
        base = root / d
        files = sorted(
            p
            for p in base.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".so")
        )
        for p in files:
            digest.update(str(p.relative_to(root)).encode() + b"\0")
            digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def guest_env() -> dict[str, str]:
    """The environment variables a guest run inherits that can change its results."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("UFFD_") or k == "CI"}


def inputs(
    build_key: str,
    *,
    quick: bool,
    memory_mb: int,
    cpus: int,
    timeouts: dict[str, float],
    hugepages: int = 0,
    code: Optional[str] = None,
) -> dict:
    """Everything that makes the control's guest results what they are (see the module docstring)."""
    return {
        "build_key": build_key,
        "code": code if code is not None else code_hash(),
        "python": platform.python_version(),
        "quick": bool(quick),
        "guest": {
            "memory_mb": memory_mb,
            "hugepages": hugepages,
            "cpus": cpus,
            "timeouts": dict(sorted(timeouts.items())),
            "env": guest_env(),
        },
    }


def key_of(inp: dict) -> str:
    return hashlib.sha256(json.dumps(inp, sort_keys=True).encode()).hexdigest()


#: readable names of the inputs, for saying which one changed
_INPUT_NAMES = {
    "build_key": "the kernel build",
    "code": "the harness code or tests (harness/, tests/, cbits/)",
    "python": "the Python version",
    "quick": "--quick",
    "guest": "the guest settings (memory, huge pages, cores, time limits, UFFD_*/CI environment)",
}


@dataclass(frozen=True)
class Entry:
    """One stored set of control results."""

    path: Path
    key: str
    inputs: dict
    created: str  #: UTC, ISO 8601
    kernel: str
    seconds: float  #: how long that guest run took
    accel: str
    stored_at: float = 0.0  #: time.time() when stored: orders entries made within one second

    def restore(self, outcome: KernelOutcome) -> None:
        """Put these results where the guest would have written them, and load them into ``outcome``."""
        out = outcome.out
        out.mkdir(parents=True, exist_ok=True)
        for old in out.iterdir():
            if old.is_file() or old.is_symlink():
                old.unlink()
        for f in self.path.iterdir():
            if f.name != META and f.is_file():
                shutil.copy2(f, out / f.name)
        outcome.seconds, outcome.accel = self.seconds, self.accel
        outcome.reused = {"created": self.created, "key": self.key, "path": str(self.path)}
        outcome.load()


def _read(path: Path) -> Optional[Entry]:
    try:
        meta = json.loads((path / META).read_text())
        if meta.get("schema") != SCHEMA:
            return None
        return Entry(
            path,
            meta["key"],
            meta["inputs"],
            meta["created"],
            meta["kernel"],
            float(meta["seconds"]),
            meta.get("accel", ""),
            float(meta.get("stored_at", 0.0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def entries() -> list[Entry]:
    """Every readable entry, newest first."""
    d = cache_dir()
    found = [e for e in (_read(p) for p in d.iterdir() if p.is_dir()) if e] if d.is_dir() else []
    return sorted(found, key=lambda e: (e.created, e.stored_at), reverse=True)


def lookup(inp: dict) -> Optional[Entry]:
    """The stored results made by exactly these inputs, or None."""
    key = key_of(inp)
    entry = _read(cache_dir() / key[:32])
    return entry if entry and entry.key == key and entry.inputs == inp else None


def why_not(inp: dict) -> str:
    """Why no stored results fit ``inp``, against the newest entry for the same kernel: which inputs changed."""
    same_kernel = [e for e in entries() if e.inputs.get("build_key") == inp["build_key"]] or entries()
    if not same_kernel:
        return "no results stored yet"
    newest = same_kernel[0]
    changed = [name for field, name in _INPUT_NAMES.items() if newest.inputs.get(field) != inp.get(field)]
    return (
        f"since the results of {newest.created}, changed: {'; '.join(changed)}"
        if changed
        else "the stored results are unreadable"
    )


def cacheable(outcome: KernelOutcome) -> Optional[str]:
    """None if ``outcome``'s guest run may be stored, else why not (only clean runs are kept)."""
    if outcome.error:
        return f"the guest run failed ({outcome.error.splitlines()[0]})"
    if outcome.summary is None:
        return "no summary.json"
    steps = outcome.steps or {}
    for step in ("pytest", "bench"):
        s = steps.get(step)
        if not s or s.get("error") or s.get("returncode") != 0:
            return f"step {step} did not exit 0"
    for name, run in steps.get("selftests", {}).items():
        if run.get("error") or run.get("returncode") not in (0, 4):  # 4: the kselftest skip code
            return f"selftest {name} did not finish cleanly"
    return None


def store(outcome: KernelOutcome, inp: dict) -> Entry:
    """Keep ``outcome``'s guest results under its inputs' key (replacing an entry of the same key)."""
    key = key_of(inp)
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    final = d / key[:32]
    tmp = d / f".{key[:32]}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for f in outcome.out.iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, tmp / f.name)
    meta = {
        "schema": SCHEMA,
        "key": key,
        "inputs": inp,
        "kernel": outcome.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(outcome.seconds, 1),
        "accel": outcome.accel,
        "stored_at": time.time(),
    }
    (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    _prune()
    entry = _read(final)
    assert entry is not None
    return entry


def _prune(keep: int = KEEP) -> None:
    for old in entries()[keep:]:
        shutil.rmtree(old.path, ignore_errors=True)
