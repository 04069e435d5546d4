"""The pte channel's text format: harness/pte.py reads what mm/uffd_harness_pte.c writes.

The lines are made from the C format string inside vm/instrumentation's
patch, so a change on either side that the other does not follow fails
here, on the host, without booting anything.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import pte
from harness.errors import HarnessError, ObservationUnavailable

INSTRUMENTATION = Path(__file__).resolve().parents[1] / "vm" / "instrumentation"


def _c_format() -> str:
    """The kernel's scnprintf() format of one line, as a Python %-format."""
    text = "".join(p.read_text() for p in sorted(INSTRUMENTATION.glob("*.patch")))
    match = re.search(r'^\+\s*"(0x%lx %s present=[^"]*)\\n",$', text, re.M)
    assert match, f"no line format found in {INSTRUMENTATION}/*.patch"
    return match.group(1).replace("%llx", "%x").replace("%lx", "%x")


def _line(
    addr=0x7F0000200000,
    level="pmd",
    present=1,
    writable=1,
    young=1,
    dirty=0,
    uffd_wp=0,
    soft_dirty=1,
    swap="-",
    pfn="0x1234",
    entry=0x80000001234008E7,
) -> str:
    return _c_format() % (addr, level, present, writable, young, dirty, uffd_wp, soft_dirty, swap, pfn, entry)


def test_the_c_format_names_every_field_the_parser_reads():
    fields = re.findall(r"(\w+)=", _c_format())
    assert fields == ["present", "writable", "young", "dirty", "uffd_wp", "soft_dirty", "swap", "pfn", "entry"]


def test_a_present_pmd_line_parses():
    entry = pte.parse_pte_line(_line())
    assert entry == pte.PteEntry(
        addr=0x7F0000200000,
        level="pmd",
        present=True,
        writable=True,
        young=True,
        dirty=False,
        uffd_wp=False,
        soft_dirty=True,
        swap=None,
        pfn=0x1234,
        entry=0x80000001234008E7,
    )
    assert not entry.empty


def test_a_marker_line_parses():
    entry = pte.parse_pte_line(
        _line(level="pte", present=0, writable=0, young=0, soft_dirty=0, uffd_wp=1, swap="marker", pfn="-", entry=0x402)
    )
    assert (entry.present, entry.uffd_wp, entry.swap, entry.pfn, entry.empty) == (False, True, "marker", None, False)


def test_an_empty_entry_is_empty():
    entry = pte.parse_pte_line(_line(level="none", present=0, writable=0, young=0, soft_dirty=0, pfn="-", entry=0))
    assert entry.empty and entry.level == "none"


@pytest.mark.parametrize(
    "line",
    [
        "0x1000 pte present=1",  # fields missing
        "zzz pte present=1 writable=1 young=1 dirty=1 uffd_wp=0 soft_dirty=0 swap=- pfn=- entry=0x0",
    ],
)
def test_a_malformed_line_names_the_instrumentation(line):
    with pytest.raises(HarnessError, match="vm/instrumentation"):
        pte.parse_pte_line(line)


def test_an_unknown_level_or_swap_kind_is_refused():
    with pytest.raises(HarnessError, match="unknown level"):
        pte.parse_pte_line(_line(level="p4d"))
    with pytest.raises(HarnessError, match="unknown level or swap kind"):
        pte.parse_pte_line(_line(present=0, swap="zswap"))


def test_without_the_instrumentation_the_reason_names_the_patch(monkeypatch, tmp_path):
    monkeypatch.setattr(pte, "PTE_DEBUGFS", str(tmp_path / "no-such-file"))
    monkeypatch.setattr(pte, "kernel_instrumented", lambda: False)
    reason = pte.pte_channel_available()
    assert reason == "kernel lacks the uffd-harness instrumentation patch (vm/instrumentation)"
    with pytest.raises(ObservationUnavailable, match="vm/instrumentation"):
        pte.read_ptes(0x10000, 1)


@pytest.mark.guest_kernel
def test_the_reader_refuses_an_unaligned_address():
    if pte.pte_channel_available():
        pytest.skip(f"pte channel: {pte.pte_channel_available()}")
    with pytest.raises(ValueError, match="page-aligned"):
        pte.read_ptes(0x10001, 1)
