"""The Python API given what the kernel would never accept: typed errors with advice, never a wrong answer."""

from __future__ import annotations

import errno
import os

import pytest

from harness import abi
from harness._native import lib
from harness.abi import Feature, RegisterMode
from harness.errors import InvalidArgument, UffdError
from harness.memory import MemoryKind
from harness.process import run_in_child
from harness.uffd import Userfaultfd, open_any

NOBODY = 65534


def test_feature_names_are_accepted_and_unknown_ones_named():
    with Userfaultfd.open(["EVENT_FORK", "uffd_feature_thread_id"]) as uffd:
        assert uffd.features == {Feature.EVENT_FORK, Feature.THREAD_ID}
    with pytest.raises(InvalidArgument, match="'NO_SUCH_FEATURE' is not a feature; known: PAGEFAULT_FLAG_WP"):
        Userfaultfd.open(["NO_SUCH_FEATURE"])
    with pytest.raises(InvalidArgument, match="42 is not a feature"):
        Userfaultfd.open([42])


OUT_OF_RANGE = [-1, 1 << 64, 1 << 80, 1.5, "0x1000", None]
CALLS = {
    "UFFDIO_REGISTER": lambda u, a, n: u.register(a, n, RegisterMode.MISSING),
    "UFFDIO_UNREGISTER": lambda u, a, n: u.unregister(a, n),
    "UFFDIO_WAKE": lambda u, a, n: u.wake(a, n),
    "UFFDIO_WRITEPROTECT": lambda u, a, n: u.writeprotect(a, n, protect=False),
    "UFFDIO_ZEROPAGE": lambda u, a, n: u.zeropage(a, n),
    "UFFDIO_COPY": lambda u, a, n: u.copy(a, a, n),
}


@pytest.mark.parametrize("op", sorted(CALLS))
@pytest.mark.parametrize("value", OUT_OF_RANGE, ids=repr)
def test_values_outside_u64_are_invalid_arguments_naming_the_ioctl(op, value):
    with Userfaultfd.open([]) as uffd:
        for args in ((value, 4096), (4096, value)):
            with pytest.raises(InvalidArgument) as info:
                CALLS[op](uffd, *args)
            assert info.value.op == op and "0..2**64-1" in str(info.value), str(info.value)


def test_register_before_api_says_so(make_region):
    region = make_region(MemoryKind.ANON, 1)
    with Userfaultfd.open(features=None) as uffd:
        with pytest.raises(UffdError) as info:
            uffd.register(region.addr, region.length, RegisterMode.MISSING)
    assert info.value.errno == errno.EINVAL and "UFFDIO_API was not done" in str(info.value)


def test_ebusy_names_the_other_userfaultfd(make_region):
    region = make_region(MemoryKind.ANON, 1)
    with Userfaultfd.open([]) as first, Userfaultfd.open([]) as second:
        first.register(region.addr, region.length, RegisterMode.MISSING)
        with pytest.raises(UffdError) as info:
            second.register(region.addr, region.length, RegisterMode.MISSING)
    assert info.value.errno == errno.EBUSY and "registered with another userfaultfd" in str(info.value)


def _header(tmp_path, access: str, write: str, feature: str = "((__u64)1<<17)"):
    path = tmp_path / "userfaultfd.h"
    path.write_text(
        f"#define UFFD_FEATURE_ACCESS_HINTS {feature}\n"
        f"#define UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY {access}\n"
        f"#define UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY {write}\n"
    )
    return path


@pytest.mark.parametrize(
    "access, write, feature, says",
    [
        ("((__u64)1<<0)", "((__u64)1<<3)", "((__u64)1<<17)", "MODE_WP"),
        ("((__u64)1<<2)", "((__u64)1<<1)", "((__u64)1<<17)", "MODE_DONTWAKE"),
        ("((__u64)1<<2)", "((__u64)1<<2)", "((__u64)1<<17)", "UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY"),
        ("((__u64)3<<2)", "((__u64)1<<4)", "((__u64)1<<17)", "not a single bit"),
        ("0", "((__u64)1<<4)", "((__u64)1<<17)", "not a single bit"),
        ("((__u64)1<<2)", "((__u64)1<<3)", "((__u64)1<<16)", "UFFD_FEATURE_MOVE"),
        ("((__u64)1<<2)", "((__u64)1<<3)", "((__u64)1<<31)", "bit 31 is internal"),
    ],
)
def test_use_uapi_header_rejects_colliding_hint_bits(tmp_path, access, write, feature, says):
    before = abi.hint_abi()
    with pytest.raises(ValueError, match=says):
        abi.use_uapi_header(_header(tmp_path, access, write, feature))
    assert abi.hint_abi() == before, "a rejected header changed the hints in force"


def test_a_hint_on_the_wp_bit_cannot_turn_an_unprotect_into_a_protect(tmp_path, make_region):
    """What the collision used to do: unprotect(access_likely=True) left the page protected."""
    region = make_region(MemoryKind.ANON, 1)
    region.write()
    before = abi.hint_abi()
    try:
        with pytest.raises(ValueError):
            abi.use_uapi_header(_header(tmp_path, "((__u64)1<<0)", "((__u64)1<<3)"))
        with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
            uffd.register(region.addr, region.length, RegisterMode.WP)
            with pytest.raises(UffdError):  # the stock kernel refuses the (real) hint bit
                uffd.unprotect(region.addr, region.length, access_likely=True)
            from harness import pte

            assert not pte.is_uffd_wp(region.addr), "an un-protect with a hint write-protected the page"
    finally:
        abi.set_hint_abi(before)


@pytest.mark.skipif(os.geteuid() != 0, reason="not root: cannot drop to an unprivileged user")
def test_event_fork_unprivileged_names_cap_sys_ptrace():
    def child():
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        lib.prctl(lib.PR_SET_DUMPABLE, 1, 0, 0, 0)
        try:
            open_any([Feature.EVENT_FORK]).close()
        except UffdError as exc:
            assert exc.op == "UFFDIO_API" and exc.errno == errno.EPERM, str(exc)
            assert "CAP_SYS_PTRACE" in str(exc), str(exc)
        else:
            raise AssertionError("EVENT_FORK was granted to an unprivileged user")

    run_in_child(child, timeout=20)
