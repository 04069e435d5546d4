"""What changes for an unprivileged user: checked in a child that drops to nobody."""

from __future__ import annotations

import errno
import os

import pytest

from harness import pte
from harness._native import lib
from harness.errors import UffdError
from harness.memory import MemoryKind, Region
from harness.process import run_in_child
from harness.uffd import Userfaultfd, open_any

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="not root: cannot drop to an unprivileged user")


def _unprivileged_sysctl() -> int:
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        return int(f.read())


def as_nobody(check) -> None:
    """Run ``check`` as uid/gid nobody with no capabilities; fail with its traceback (ChildFailed)."""

    def child():
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        # Changing uid makes the process non-dumpable, which hands /proc/self
        # to root; an ordinary unprivileged process is dumpable.
        lib.prctl(lib.PR_SET_DUMPABLE, 1, 0, 0, 0)
        check()

    run_in_child(child, timeout=20)


def test_syscall_refused_without_user_mode_only():
    if _unprivileged_sysctl() != 0:
        pytest.skip("vm.unprivileged_userfaultfd=1: unprivileged kernel-mode faults are allowed here")

    def check():
        try:
            Userfaultfd.open(via="syscall").close()
        except UffdError as exc:
            assert exc.errno == errno.EPERM, exc
            assert "user_mode_only" in str(exc), str(exc)
        else:
            raise AssertionError("userfaultfd() without UFFD_USER_MODE_ONLY succeeded unprivileged")

    as_nobody(check)


def test_user_mode_only_works_unprivileged():
    def check():
        region = Region.create(MemoryKind.ANON)
        region.write()
        with Userfaultfd.open([], via="syscall", user_mode_only=True) as uffd:
            from harness.abi import RegisterMode

            uffd.register(region.addr, region.length, RegisterMode.MISSING)
        with open_any([]) as uffd:
            assert not uffd.closed
        region.close()

    as_nobody(check)


def test_pfn_and_root_channels_hidden_unprivileged():
    def check():
        assert not pte.pfn_visible(), "pagemap showed a PFN to an unprivileged process"
        assert pte.kpageflags_available() is not None
        region = Region.create(MemoryKind.ANON)
        region.write()
        state = pte.observe(region)  # smaps needs no privilege
        assert state.present and state.pfn is None and (state.young, state.dirty) == (True, True)
        region.close()

    as_nobody(check)


def test_root_sees_pfns(make_region):
    region = make_region(MemoryKind.ANON)
    region.write()
    assert pte.observe(region).pfn, "root should see the PFN in pagemap"
