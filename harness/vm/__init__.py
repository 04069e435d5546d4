"""Patched and stock guest kernels, and running commands inside them.

    from harness.vm import build_kernel, run_in_guest
    k = build_kernel("patched")                  # or "stock", or a user series
    r = run_in_guest(k, ["python3", "-m", "pytest", "tests/guest"], timeout=600)
    r.returncode, r.console_tail, r.elapsed

Command line: ``python -m harness.vm build --kernel patched`` and
``python -m harness.vm run --kernel patched -- CMD...``.
"""

from harness.vm.build import KernelBuild, build_kernel, load_kernel
from harness.vm.errors import (
    GuestError,
    GuestPanic,
    GuestTimeout,
    KernelBuildError,
    KernelNotBuilt,
    MissingToolError,
    PatchApplyError,
    VmError,
)
from harness.vm.runner import GuestResult, run_in_guest

__all__ = [
    "KernelBuild",
    "build_kernel",
    "load_kernel",
    "GuestResult",
    "run_in_guest",
    "VmError",
    "MissingToolError",
    "PatchApplyError",
    "KernelBuildError",
    "KernelNotBuilt",
    "GuestError",
    "GuestPanic",
    "GuestTimeout",
]
