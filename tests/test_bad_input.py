"""Bad input gets a typed error naming the ioctl, the range and the errno; never a crash or hang."""

from __future__ import annotations

import errno

import pytest

from harness import abi
from harness.abi import Feature, RegisterMode
from harness.errors import FeatureUnavailable, UffdClosedError, UffdError
from harness.memory import PAGE_SIZE, MemoryKind
from harness.uffd import Userfaultfd, probe_features


@pytest.fixture
def registered(make_region):
    region = make_region(MemoryKind.ANON, 2)
    region.write()
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
        uffd.register(region.addr, region.length, RegisterMode.WP | RegisterMode.MISSING)
        yield uffd, region


def assert_uffd_error(info, op, code, start=None):
    exc = info.value
    assert isinstance(exc, UffdError) and isinstance(exc, OSError)
    assert exc.op == op and exc.errno == code, f"{exc!r}"
    message = str(exc)
    assert message.startswith(op) and errno.errorcode[code] in message
    if start is not None:
        assert exc.start == start and f"{start:#x}" in message


UNALIGNED_CALLS = {
    "UFFDIO_WRITEPROTECT": lambda u, a, n: u.writeprotect(a, n, protect=True),
    "UFFDIO_ZEROPAGE": lambda u, a, n: u.zeropage(a, n),
    "UFFDIO_WAKE": lambda u, a, n: u.wake(a, n),
    "UFFDIO_UNREGISTER": lambda u, a, n: u.unregister(a, n),
    "UFFDIO_REGISTER": lambda u, a, n: u.register(a, n, RegisterMode.MISSING),
}


@pytest.mark.parametrize("op", sorted(UNALIGNED_CALLS))
def test_unaligned_start_is_einval_naming_the_page_size(registered, op):
    uffd, region = registered
    with pytest.raises(UffdError) as info:
        UNALIGNED_CALLS[op](uffd, region.addr + 8, PAGE_SIZE)
    assert_uffd_error(info, op, errno.EINVAL, region.addr + 8)
    assert f"multiples of the page size ({PAGE_SIZE})" in str(info.value)


@pytest.mark.parametrize("op", sorted(UNALIGNED_CALLS))
def test_unaligned_length_is_einval(registered, op):
    uffd, region = registered
    with pytest.raises(UffdError) as info:
        UNALIGNED_CALLS[op](uffd, region.addr, PAGE_SIZE + 1)
    assert_uffd_error(info, op, errno.EINVAL, region.addr)


@pytest.mark.parametrize("op", sorted(UNALIGNED_CALLS))
def test_zero_length_is_einval(registered, op):
    uffd, region = registered
    with pytest.raises(UffdError) as info:
        UNALIGNED_CALLS[op](uffd, region.addr, 0)
    assert_uffd_error(info, op, errno.EINVAL, region.addr)


def test_copy_unaligned_dst(registered):
    uffd, region = registered
    src = bytearray(PAGE_SIZE)
    from harness._native import ffi

    with pytest.raises(UffdError) as info:
        uffd.copy(region.addr + 1, int(ffi.cast("uintptr_t", ffi.from_buffer(src))), PAGE_SIZE)
    assert_uffd_error(info, "UFFDIO_COPY", errno.EINVAL, region.addr + 1)


def test_writeprotect_on_unregistered_range_is_enoent(make_region):
    region = make_region(MemoryKind.ANON)
    region.write()
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
        with pytest.raises(UffdError) as info:
            uffd.writeprotect(region.addr, region.length, protect=True)
    assert_uffd_error(info, "UFFDIO_WRITEPROTECT", errno.ENOENT, region.addr)
    assert "not (fully) registered" in str(info.value)


def test_zeropage_on_unregistered_range_is_enoent(make_region):
    region = make_region(MemoryKind.ANON)
    with Userfaultfd.open() as uffd:
        with pytest.raises(UffdError) as info:
            uffd.zeropage(region.addr, region.length)
    assert_uffd_error(info, "UFFDIO_ZEROPAGE", errno.ENOENT, region.addr)


def test_register_wp_on_missing_only_then_writeprotect(make_region):
    """WP on a range registered for MISSING only: the kernel refuses (ENOENT)."""
    region = make_region(MemoryKind.ANON)
    region.write()
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
        ioctls = uffd.register(region.addr, region.length, RegisterMode.MISSING)
        from harness.abi import Ioctl

        assert Ioctl.COPY in ioctls
        with pytest.raises(UffdError) as info:
            uffd.writeprotect(region.addr, region.length, protect=True)
    assert info.value.errno in (errno.ENOENT, errno.EINVAL)


def test_second_api_is_einval():
    with Userfaultfd.open([]) as uffd:
        with pytest.raises(UffdError) as info:
            uffd.api([])
    assert_uffd_error(info, "UFFDIO_API", errno.EINVAL)
    assert "already done" in str(info.value)


def test_feature_the_kernel_lacks_is_named(tmp_path):
    """A feature the kernel does not offer raises FeatureUnavailable naming it.

    ACCESS_HINTS is put on a bit no kernel offers (through a uapi header, as
    for a tree whose proposal claims another bit), so this runs on stock and
    patched kernels alike.
    """
    from harness import abi

    header = tmp_path / "userfaultfd.h"
    header.write_text(
        "#define UFFD_FEATURE_ACCESS_HINTS (1<<30)\n"
        "#define UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY ((__u64)1<<2)\n"
        "#define UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY ((__u64)1<<3)\n"
    )
    saved = abi.hint_abi()
    try:
        assert abi.use_uapi_header(header).feature == 1 << 30
        with pytest.raises(FeatureUnavailable) as info:
            Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP, Feature.ACCESS_HINTS])
    finally:
        abi.set_hint_abi(saved)
    assert info.value.errno == errno.EINVAL
    assert info.value.missing == {Feature.ACCESS_HINTS}
    assert "UFFD_FEATURE_ACCESS_HINTS" in str(info.value) and "UFFDIO_API" in str(info.value)


def test_use_after_close_raises_closed_error(make_region):
    region = make_region(MemoryKind.ANON)
    uffd = Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP])
    uffd.close()
    assert uffd.closed
    calls = [
        lambda: uffd.register(region.addr, region.length, RegisterMode.WP),
        lambda: uffd.writeprotect(region.addr, region.length, protect=True),
        lambda: uffd.zeropage(region.addr, region.length),
        lambda: uffd.read_events(),
        lambda: uffd.api([]),
        uffd.fileno,
    ]
    for call in calls:
        with pytest.raises(UffdClosedError) as info:
            call()
        assert info.value.errno == errno.EBADF and "closed" in str(info.value)
    uffd.close()  # closing twice is harmless


def test_invalid_writeprotect_mode_bits_are_einval(registered):
    uffd, region = registered
    with pytest.raises(UffdError) as info:
        uffd.writeprotect_mode(region.addr, region.length, 1 << 40)
    assert_uffd_error(info, "UFFDIO_WRITEPROTECT", errno.EINVAL, region.addr)


def test_invalid_register_mode_is_einval(make_region):
    region = make_region(MemoryKind.ANON)
    with Userfaultfd.open() as uffd:
        with pytest.raises(UffdError) as info:
            uffd.register(region.addr, region.length, RegisterMode(0))
    assert_uffd_error(info, "UFFDIO_REGISTER", errno.EINVAL, region.addr)


def test_hints_with_mode_wp_named(registered, make_region):
    """A hint with MODE_WP is EINVAL, and the error says why: without ACCESS_HINTS negotiated, that it was
    not (clause 1's EINVAL); where the kernel offers it and it was negotiated, that hints only un-protect."""
    uffd, region = registered
    with pytest.raises(UffdError) as info:
        uffd.writeprotect_mode(region.addr, region.length, abi.writeprotect_mode(True, access_likely=True))
    assert_uffd_error(info, "UFFDIO_WRITEPROTECT", errno.EINVAL, region.addr)
    assert "ACCESS_HINTS feature was not negotiated" in str(info.value), str(info.value)
    if Feature.ACCESS_HINTS not in probe_features().offered:
        return  # the negotiated half needs a kernel with the hints (the guests)
    hinted = make_region(MemoryKind.ANON, 1)
    hinted.write()
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP, Feature.ACCESS_HINTS]) as u:
        u.register(hinted.addr, hinted.length, RegisterMode.WP)
        with pytest.raises(UffdError) as info:
            u.writeprotect_mode(hinted.addr, hinted.length, abi.writeprotect_mode(True, write_likely=True))
    assert_uffd_error(info, "UFFDIO_WRITEPROTECT", errno.EINVAL, hinted.addr)
    assert "access hints apply only when un-protecting" in str(info.value), str(info.value)


def test_bad_open_method_is_named():
    with pytest.raises(ValueError, match="via must be"):
        Userfaultfd.open(via="carrier-pigeon")


def test_region_rejects_bad_page_ranges(make_region):
    region = make_region(MemoryKind.ANON, 2)
    with pytest.raises(IndexError):
        region.page_addr(2)
    with pytest.raises(IndexError):
        region.span(1, 2)
    with pytest.raises(ValueError):
        make_region(MemoryKind.ANON, 0)
