"""The ABI by name: values from the compiler, hint values from a kernel tree's header."""

from __future__ import annotations

import pytest

from harness import abi
from harness.abi import Feature, Ioctl


def test_feature_bits_round_trip():
    every = abi.feature_bits(Feature)
    assert abi.features_from_bits(every) == frozenset(Feature)
    assert abi.unknown_feature_bits(every) == 0
    assert abi.unknown_feature_bits(1 << 40) == 1 << 40
    assert len({f.bit for f in Feature}) == len(Feature), "two features share a bit"


def test_ioctl_mask_decoding():
    mask = (1 << Ioctl.WRITEPROTECT) | (1 << Ioctl.COPY)
    assert abi.ioctls_from_mask(mask) == {Ioctl.WRITEPROTECT, Ioctl.COPY}
    assert Ioctl.WRITEPROTECT.ioctl_name == "UFFDIO_WRITEPROTECT"


def test_values_match_the_6_12_uapi():
    # Spot checks against include/uapi/linux/userfaultfd.h of Linux 6.12: a
    # fallback in cbits/uffd_compat.h with a wrong number would fail here.
    assert Feature.MOVE.bit == 1 << 16 and Feature.POISON.bit == 1 << 14
    assert Ioctl.MOVE == 0x05 and Ioctl.POISON == 0x08 and Ioctl.API == 0x3F
    assert abi.WRITEPROTECT_MODE_WP == 1 and abi.WRITEPROTECT_MODE_DONTWAKE == 2


def test_hint_values_come_from_a_header(tmp_path):
    header = tmp_path / "userfaultfd.h"
    header.write_text(
        "#define UFFD_FEATURE_MOVE\t\t\t(1<<16)\n"
        "#define UFFD_FEATURE_ACCESS_HINTS\t\t(1<<19) /* another proposal took 17 */\n"
        "#define UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY\t((__u64)1<<4)\n"
        "#define UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY\t((__u64)1<<5)\n"
    )
    hints = abi.parse_uapi_header(header)
    assert (hints.feature, hints.access_likely, hints.write_likely) == (1 << 19, 1 << 4, 1 << 5)
    assert hints.defined and hints.source == str(header)


def test_a_stock_header_has_no_hints(tmp_path):
    header = tmp_path / "userfaultfd.h"
    header.write_text("#define UFFD_FEATURE_MOVE (1<<16)\n")
    hints = abi.parse_uapi_header(header)
    assert not hints.defined, "a header without the hints must say so"
    assert hints.feature == abi._DEFAULT_HINT_ABI.feature, "the defaults are sent, to show the kernel refuses them"


def test_a_header_with_half_the_hints_is_an_error(tmp_path):
    header = tmp_path / "userfaultfd.h"
    header.write_text("#define UFFD_FEATURE_ACCESS_HINTS (1<<17)\n")
    with pytest.raises(ValueError, match="UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY"):
        abi.parse_uapi_header(header)


def test_header_expressions_are_evaluated_safely(tmp_path):
    header = tmp_path / "userfaultfd.h"
    header.write_text("#define UFFD_FEATURE_ACCESS_HINTS __import__('os').system('true')\n")
    with pytest.raises((ValueError, SyntaxError)):
        abi.parse_uapi_header(header)


def test_environment_variable_selects_the_header(tmp_path, monkeypatch):
    header = tmp_path / "userfaultfd.h"
    header.write_text(
        "#define UFFD_FEATURE_ACCESS_HINTS (1<<20)\n"
        "#define UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY ((__u64)1<<2)\n"
        "#define UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY ((__u64)1<<3)\n"
    )
    monkeypatch.setenv(abi.UAPI_HEADER_ENV, str(header))
    monkeypatch.setattr(abi, "_active_hint_abi", None)  # as in a fresh process
    assert abi.hint_abi().feature == 1 << 20
    assert Feature.ACCESS_HINTS.bit == 1 << 20, "Feature.ACCESS_HINTS follows the header in force"
