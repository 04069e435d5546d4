"""``uffd-harness info``: what this kernel and machine can do, told truthfully.

Every answer is probed, not assumed: features come from UFFDIO_API, ioctls
per memory type from UFFDIO_REGISTER, observation channels from trying them.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
from typing import Any, Optional

from tabulate import tabulate

from harness import abi, pte
from harness.abi import Feature, RegisterMode
from harness.errors import HarnessError, ThpUnavailable, UffdError
from harness.memory import MemoryKind, Region, free_hugepages, thp_pmd_size
from harness.uffd import Userfaultfd, open_any, probe_features

_SYSCTL = "/proc/sys/vm/unprivileged_userfaultfd"


def _try_open(via: str, user_mode_only: bool = False) -> str:
    try:
        Userfaultfd.open(features=None, via=via, user_mode_only=user_mode_only).close()
        return "ok"
    except UffdError as exc:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.advice}" if exc.advice else exc.strerror


def open_methods() -> dict[str, Any]:
    sysctl: Optional[int] = None
    if os.path.exists(_SYSCTL):
        with open(_SYSCTL) as f:
            sysctl = int(f.read())
    return {
        "euid": os.geteuid(),
        "syscall": _try_open("syscall"),
        "syscall_user_mode_only": _try_open("syscall", user_mode_only=True),
        "dev_userfaultfd": _try_open("dev") if os.path.exists("/dev/userfaultfd") else "absent",
        "vm.unprivileged_userfaultfd": sysctl,
    }


def _register_modes_for(kind: MemoryKind) -> dict[str, Any]:
    """The ioctls UFFDIO_REGISTER grants per mode on one region of ``kind``, or why it refused."""
    if kind.hugetlb and free_hugepages() < 1:
        return {"skipped": "no free huge pages (vm.nr_hugepages=0)"}
    out: dict[str, Any] = {}
    with Region.create(kind, 1) as region:
        for mode in RegisterMode:
            assert mode.name is not None, "iterating a Flag yields its named members only"
            with open_any(features=[]) as uffd:
                try:
                    ioctls = uffd.register(region.addr, region.length, mode)
                    out[mode.name] = sorted(i.ioctl_name for i in ioctls)
                    uffd.unregister(region.addr, region.length)
                except UffdError as exc:
                    out[mode.name] = errno.errorcode.get(exc.errno, str(exc.errno))
    return out


def observation_channels() -> dict[str, str]:
    """Each channel: "ok" or why it cannot answer here."""
    channels = {pte.SMAPS: "ok", "pagemap": "ok"}
    channels["pagemap_pfn"] = "ok" if pte.pfn_visible() else "hidden (needs CAP_SYS_ADMIN)"
    channels[pte.IDLE_PAGE] = pte.idle_page_tracking_available() or "ok"
    channels[pte.KPAGEFLAGS] = pte.kpageflags_available() or "ok"
    channels[pte.PTE] = pte.pte_channel_available() or "ok"
    with Region.create(MemoryKind.ANON, 1) as region:
        region.write()
        try:
            pte.pagemap_scan(region.addr, region.length)
            channels["PAGEMAP_SCAN"] = "ok"
        except UffdError as exc:
            channels["PAGEMAP_SCAN"] = exc.strerror
        try:
            pte.clear_soft_dirty()
            channels["soft-dirty"] = (
                "ok" if _soft_dirty_works(region) else "kernel lacks CONFIG_MEM_SOFT_DIRTY (pagemap bit 55 never set)"
            )
        except OSError as exc:
            channels["soft-dirty"] = f"clear_refs: {exc.strerror}"
    return channels


def thp_status() -> str:
    """ "ok" when an anonymous MADV_HUGEPAGE region gets a PMD-mapped THP
    at its first write here (the contract's THP cases need one), else why not."""
    try:
        with Region.create(MemoryKind.ANON, 1, thp=True) as region:
            region.write()
            pte.check_thp(region, "after its first write")
    except ThpUnavailable as exc:
        return str(exc)
    return "ok"


def _soft_dirty_works(region: Region) -> bool:
    region.write()
    return pte.is_soft_dirty(region.addr)


def tsc_facts() -> dict[str, Any]:
    flags: set[str] = set()
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = set(value.split())
            elif key == "model name" and not model:
                model = value.strip()
    return {
        "cpu": model,
        "rdtscp": "rdtscp" in flags,
        "constant_tsc": "constant_tsc" in flags,
        "nonstop_tsc": "nonstop_tsc" in flags,
        "hypervisor": "hypervisor" in flags,
    }


def guest_acceleration() -> dict[str, Any]:
    """How a QEMU guest would run here: KVM if a bounded boot probe succeeds, else TCG."""
    import shutil

    try:
        from harness.vm import runner
        from harness.vm.build import BUILD_DIR
    except ImportError as exc:
        return {"accel": "unknown", "probe": f"the vm room cannot load: {exc}"}
    out: dict[str, Any] = {"kvm_device": os.path.exists("/dev/kvm")}
    if not shutil.which("qemu-system-x86_64"):
        out.update(accel="none", probe="qemu-system-x86_64 not installed (apt-get install -y qemu-system-x86)")
        return out
    kernels = sorted((BUILD_DIR / "kernels").glob("*/bzImage"))
    if not kernels:
        out.update(accel="unknown", probe="no kernel built to probe with (make kernel KERNEL=stock)")
        return out
    ok, reason = runner.probe_kvm(kernels[0])  # bounded, and cached per host kernel and QEMU
    out.update(accel="kvm" if ok else "tcg", probe=reason)
    return out


def collect() -> dict[str, Any]:
    offered = probe_features()
    hints = abi.hint_abi()
    return {
        "kernel": {"release": platform.release(), "version": platform.version(), "machine": platform.machine()},
        "open": open_methods(),
        "api": {
            "features": sorted(f.name for f in offered.offered),
            "unknown_feature_bits": hex(abi.unknown_feature_bits(offered.offered_bits)),
            "ioctls": sorted(i.ioctl_name for i in offered.ioctls),
            "access_hints": {
                "offered": Feature.ACCESS_HINTS in offered.offered,
                "feature_bit": hex(hints.feature),
                "mode_access_likely": hex(hints.access_likely),
                "mode_write_likely": hex(hints.write_likely),
                "abi_source": hints.source,
            },
        },
        "register": {kind.value: _register_modes_for(kind) for kind in MemoryKind},
        "thp": {"pmd_size": thp_pmd_size(), "anon": thp_status()},
        "observation": observation_channels(),
        "tsc": tsc_facts(),
        "guest": guest_acceleration(),
    }


def render(info: dict[str, Any]) -> str:
    k, api = info["kernel"], info["api"]
    lines = [
        f"kernel      {k['release']} ({k['machine']})",
        "open        " + ", ".join(f"{key}={value}" for key, value in info["open"].items()),
        f"features    {' '.join(api['features'])}",
        f"ioctls      {' '.join(api['ioctls'])}",
    ]
    hints = api["access_hints"]
    lines.append(
        f"hints       ACCESS_HINTS {'offered' if hints['offered'] else 'absent'} "
        f"(bit {hints['feature_bit']}, modes {hints['mode_access_likely']}/{hints['mode_write_likely']}, "
        f"from {hints['abi_source']})"
    )
    rows = []
    for kind, modes in info["register"].items():
        if "skipped" in modes:
            rows.append([kind, modes["skipped"], "", ""])
            continue
        rows.append(
            [kind]
            + [
                " ".join(x.removeprefix("UFFDIO_") for x in v) if isinstance(v, list) else v
                for v in (modes[m.name] for m in RegisterMode)
            ]
        )
    lines += ["", tabulate(rows, headers=["memory", "MISSING", "WP", "MINOR"]), ""]
    lines += [f"thp         anon {info['thp']['pmd_size'] // 1024} KiB PMD: {info['thp']['anon']}", ""]
    lines.append(tabulate(sorted(info["observation"].items()), headers=["observation", "status"]))
    tsc = info["tsc"]
    lines += [
        "",
        f"cpu         {tsc['cpu']}",
        f"tsc         rdtscp={tsc['rdtscp']} constant={tsc['constant_tsc']} nonstop={tsc['nonstop_tsc']} "
        f"hypervisor={tsc['hypervisor']}",
        "guest       " + ", ".join(f"{key}={value}" for key, value in info["guest"].items()),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        info = collect()
    except HarnessError as exc:
        print(f"uffd-harness info: {exc}")
        return 1
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="what userfaultfd and PTE observation can do here")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)
