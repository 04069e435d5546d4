"""``uffd-harness info`` reports this machine truthfully."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from harness import pte
from harness.abi import Feature
from harness.info import collect


def _raw_uffdio_api_features() -> int:
    """UFFDIO_API done without the harness: the syscall through ctypes, the ioctl through fcntl.

    An oracle independent of the CFFI binding that ``info`` uses.  The ioctl
    number is _IOWR(0xAA, 0x3F, struct uffdio_api) with the struct's three u64
    (api, features, ioctls) = 24 bytes, as include/uapi/linux/userfaultfd.h
    defines it; UFFD_API is 0xAA; __NR_userfaultfd is 323 on x86-64.
    """
    import ctypes
    import fcntl
    import struct

    assert platform.machine() == "x86_64", "the syscall number below is x86-64's"
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(323, os.O_CLOEXEC)
    if fd < 0:
        pytest.skip(f"userfaultfd(2) failed here: {os.strerror(ctypes.get_errno())}")
    try:
        iowr = (3 << 30) | (24 << 16) | (0xAA << 8) | 0x3F
        out = fcntl.ioctl(fd, iowr, struct.pack("QQQ", 0xAA, 0, 0))
        return struct.unpack("QQQ", out)[1]
    finally:
        os.close(fd)


def _pagemap_shows_pfns() -> bool:
    """Read this process's pagemap for a page it just wrote, with plain file I/O."""
    import ctypes
    import struct

    page = ctypes.create_string_buffer(2 * 4096)
    addr = (ctypes.addressof(page) + 4095) // 4096 * 4096  # a whole page inside the buffer
    ctypes.memset(addr, 1, 1)  # written: present
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // 4096 * 8)
        entry = struct.unpack("Q", f.read(8))[0]
    return bool(entry & ((1 << 55) - 1))  # bits 0-54: the PFN, zero without CAP_SYS_ADMIN


def test_info_json_matches_what_the_kernel_says(capsys):
    # In-process: a second interpreter costs ~10 s in a TCG guest; test_cli_entry_point starts one.
    from harness.cli import main

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kernel"]["release"] == platform.release()
    raw = _raw_uffdio_api_features()
    named = {f.name for f in Feature if f.bit & raw}
    assert set(info["api"]["features"]) == named, "info's features differ from a raw UFFDIO_API's"
    assert info["api"]["access_hints"]["offered"] == bool(raw & Feature.ACCESS_HINTS.bit)
    assert info["open"]["euid"] == os.geteuid()
    idle = info["observation"]["idle-page"]
    assert (idle == "ok") == os.path.exists("/sys/kernel/mm/page_idle/bitmap")
    assert (info["observation"]["pagemap_pfn"] == "ok") == _pagemap_shows_pfns()
    # the pte channel: "ok" exactly where its debugfs file answers, else why not
    assert (info["observation"]["pte"] == "ok") == os.access(pte.PTE_DEBUGFS, os.R_OK | os.W_OK)
    if pte.kernel_instrumented() is False:
        assert info["observation"]["pte"] == "kernel lacks the uffd-harness instrumentation patch (vm/instrumentation)"


def test_info_register_table_reflects_the_kernel():
    info = collect()
    anon = info["register"]["anon"]
    assert "UFFDIO_WRITEPROTECT" in anon["WP"], "anon memory supports WP registration on 6.x"
    assert anon["MINOR"] == "EINVAL", "MINOR faults do not exist for anonymous memory"
    assert "UFFDIO_CONTINUE" in info["register"]["shmem"]["MINOR"]


def test_info_thp_is_probed(monkeypatch):
    """ "ok" only where a THP really came; otherwise the reason, the same
    one the THP contract cases would skip with."""
    from harness import info, memory

    status = info.thp_status()
    assert status == "ok" or "THP" in status, status
    if status == "ok":
        with memory.Region.create(memory.MemoryKind.ANON, 1, thp=True) as region:
            region.write()
            assert pte.thp_mapping(region).pmd_mapped
    monkeypatch.setattr(memory, "thp_unavailable", lambda: "THP disabled: (pretend) enabled = never")
    assert "(pretend) enabled = never" in info.thp_status()


def test_info_table_output(capsys):
    from harness.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"kernel      {platform.release()}")
    for heading in ("memory", "observation", "hints", "thp", "guest"):
        assert heading in out


@pytest.mark.host_only
def test_cli_entry_point():
    """`python -m harness info --json` works as a program (the tests above call main() in-process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "info", "--json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["kernel"]["release"] == platform.release()
