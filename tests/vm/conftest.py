"""Fixtures for the guest-runner tests: a built kernel and a QEMU host.

The tests that boot a guest need qemu-system-x86_64, udev, virtme-ng and a
kernel built by ``make kernel KERNEL=...``; when one is missing they skip and
the reason names it (under CI=true the top-level conftest turns that skip
into a failure).
"""

from __future__ import annotations

import os
import shutil

import pytest

from harness.vm import build as vmbuild
from harness.vm import runner


def _guest_kernel_name() -> str:
    """UFFD_HARNESS_TEST_KERNEL, else the first of patched/stock that is built."""
    name = os.environ.get("UFFD_HARNESS_TEST_KERNEL")
    if name:
        return name
    for name in ("patched", "stock"):
        if (vmbuild.BUILD_DIR / "kernels" / name / "build.json").exists():
            return name
    return "patched"


def missing_for_guest(name: str) -> list[str]:
    """What this host lacks to boot kernel ``name``, as readable items."""
    missing = []
    if not shutil.which("qemu-system-x86_64"):
        missing.append("qemu-system-x86_64 (apt-get install -y qemu-system-x86)")
    if not shutil.which("udevadm"):
        missing.append("udevadm (apt-get install -y udev)")
    try:
        runner.find_vng()
    except Exception:
        missing.append("vng (pip install virtme-ng, the project's [vm] extra)")
    kdir = vmbuild.BUILD_DIR / "kernels" / name
    if not (kdir / "bzImage").exists() or not (kdir / "build.json").exists():
        missing.append(f"kernel '{name}' ({kdir}/bzImage: run `make kernel KERNEL={name}`)")
    return missing


@pytest.fixture(scope="session")
def guest_kernel():
    """The KernelBuild the guest tests boot; skips naming what is missing."""
    name = _guest_kernel_name()
    missing = missing_for_guest(name)
    if missing:
        pytest.skip("cannot boot a guest: missing " + "; ".join(missing))
    return vmbuild.load_kernel(name)


@pytest.fixture
def qemu_procs():
    """qemu_procs(bzimage) -> live QEMU processes booting that kernel."""
    return runner.qemu_processes
