"""``uffd-harness info`` reports this machine truthfully.

Each answer is checked against a source ``info`` does not use: the kernel's
own files (/proc/sys/kernel/osrelease, /proc/self/status, /proc/self/smaps,
/proc/kallsyms), a raw ``UFFDIO_API`` through ctypes and fcntl decoded with
the uapi headers' text, and the observation files opened as a channel would
open them (``info`` asks ``os.access`` and the harness's own readers).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import paths, pte
from harness.errors import ThpUnavailable
from harness.info import collect
from harness.memory import MemoryKind, Region

#: where the feature bits are defined, as text: the system's uapi header, then the harness's fallbacks for
#: bits newer than it (each under #ifndef, so the system's definition wins)
FEATURE_HEADERS = (Path("/usr/include/linux/userfaultfd.h"), paths.REPO_ROOT / "cbits" / "uffd_compat.h")


def _release() -> str:
    """The running kernel's release, from the kernel (info asks platform.release())."""
    return Path("/proc/sys/kernel/osrelease").read_text().strip()


def _header_feature_bits() -> dict[str, int]:
    """{name: bit} of every ``UFFD_FEATURE_*`` the headers define, but ACCESS_HINTS (its bit is the
    patch's, and may be taken from a kernel tree's header: info reports the one in force)."""
    bits: dict[str, int] = {}
    for header in FEATURE_HEADERS:
        for name, shift in re.findall(r"#define\s+UFFD_FEATURE_(\w+)\s+\(1\s*<<\s*(\d+)\)", header.read_text()):
            bits.setdefault(name, 1 << int(shift))
    bits.pop("ACCESS_HINTS", None)
    return bits


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

    assert os.uname().machine == "x86_64", "the syscall number below is x86-64's"
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


def _effective_uid() -> int:
    """The second field of /proc/self/status's Uid line (real, effective, saved, fs)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])
    raise AssertionError("/proc/self/status has no Uid line")


def _opens_read_write(path: str) -> bool:
    """Whether ``path`` opens for reading and writing here, as the channel that uses it opens it."""
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError:
        return False
    return True


def _kallsyms_has(symbol: str) -> bool | None:
    """Whether /proc/kallsyms names ``symbol`` (None: unreadable)."""
    try:
        text = Path("/proc/kallsyms").read_text()
    except OSError:
        return None
    return re.search(rf" {re.escape(symbol)}$", text, re.MULTILINE) is not None


def test_info_json_matches_what_the_kernel_says(capsys):
    # In-process: a second interpreter costs ~10 s in a TCG guest; test_cli_entry_point starts one.
    from harness.cli import main

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kernel"]["release"] == _release()
    raw = _raw_uffdio_api_features()
    header = _header_feature_bits()
    assert set(info["api"]["features"]) - {"ACCESS_HINTS"} == {n for n, bit in header.items() if raw & bit}, (
        f"info's features differ from a raw UFFDIO_API's {raw:#x}, decoded with the headers' text"
    )
    hints = info["api"]["access_hints"]
    assert hints["offered"] == bool(raw & int(hints["feature_bit"], 16)) == ("ACCESS_HINTS" in info["api"]["features"])
    assert info["open"]["euid"] == _effective_uid()
    assert (info["observation"]["idle-page"] == "ok") == _opens_read_write("/sys/kernel/mm/page_idle/bitmap")
    assert (info["observation"]["pagemap_pfn"] == "ok") == _pagemap_shows_pfns()
    # the pte channel: "ok" exactly where its debugfs file opens, else why not
    assert (info["observation"]["pte"] == "ok") == _opens_read_write(pte.PTE_DEBUGFS)
    if _kallsyms_has("uh_pte_read") is False:
        assert "instrumentation" in info["observation"]["pte"], "info does not say the kernel lacks the pte file"


def test_info_register_table_reflects_the_kernel():
    info = collect()
    anon = info["register"]["anon"]
    assert "UFFDIO_WRITEPROTECT" in anon["WP"], "anon memory supports WP registration on 6.x"
    assert anon["MINOR"] == "EINVAL", "MINOR faults do not exist for anonymous memory"
    assert "UFFDIO_CONTINUE" in info["register"]["shmem"]["MINOR"]


def _a_thp_comes() -> bool:
    """Whether a first write to an anonymous MADV_HUGEPAGE region maps a THP: smaps' AnonHugePages of its
    VMA, read here with plain file I/O, covers it."""
    try:
        region = Region.create(MemoryKind.ANON, 1, thp=True)
    except ThpUnavailable:
        return False
    with region:
        region.write()
        vma, huge_kb = None, 0
        for line in Path("/proc/self/smaps").read_text().splitlines():
            head = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if head:
                vma = range(int(head[1], 16), int(head[2], 16))
            elif line.startswith("AnonHugePages:") and vma is not None and region.addr in vma:
                huge_kb = int(line.split()[1])
        return huge_kb * 1024 >= region.length


def test_info_thp_is_probed(monkeypatch):
    """ "ok" exactly where a THP really comes; otherwise the reason, the same
    one the THP contract cases would skip with."""
    from harness import info, memory

    status = info.thp_status()
    assert (status == "ok") == _a_thp_comes(), status
    assert status == "ok" or "THP" in status, status
    monkeypatch.setattr(memory, "thp_unavailable", lambda: "THP disabled: (pretend) enabled = never")
    assert "(pretend) enabled = never" in info.thp_status()


def test_info_table_output(capsys):
    from harness.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"kernel      {_release()}")
    for heading in ("memory", "observation", "hints", "thp", "guest"):
        assert heading in out


@pytest.mark.host_only
def test_cli_entry_point():
    """`python -m harness info --json` works as a program (the tests above call main() in-process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "info", "--json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["kernel"]["release"] == _release()
